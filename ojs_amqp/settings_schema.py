"""How a setting is declared: its default, the rule its value must keep, and how operators set
it (flag, environment variable, help, README text), all in one `setting(...)` call.

`Settings` (settings.py) declares its fields with it and checks every value when it is built;
the CLI (cli.py) builds `ojs-amqp serve`'s options from the same declarations, and the
README's configuration table is generated from them (settings_table.py). So a new option is
one edit, and the three cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ojs_amqp.core.durations import parse_duration_ms

#: The concerns settings are grouped by, in the README's order.
BROKER = "Broker"
HTTP = "HTTP API"
SECURITY = "Security"
STORE = "Store"
DELIVERY = "Job delivery"
RETENTION = "Retention"
LOGS = "Logs and events"
SECTIONS = (BROKER, HTTP, SECURITY, STORE, DELIVERY, RETENTION, LOGS)
METADATA_KEY = "ojs_option"


class SettingsError(ValueError):
    """A setting's value breaks its rule; names the field (and the flag that sets it)."""

    def __init__(self, name: str, problem: str, option: Option | None = None) -> None:
        self.name = name
        self.problem = problem
        self.option = option
        where = f" (set by {option.flag}, env {option.env})" if option and option.flag else ""
        super().__init__(f"Settings.{name} {problem}{where}")


@dataclass(frozen=True, slots=True)
class Option:
    """One setting's rule and the way operators set it."""

    section: str
    #: One line for `--help`; the README's text too unless `readme` says more.
    help: str
    #: `--name`; None: set in code only (no flag, no environment variable).
    flag: str | None = None
    env: str | None = None
    #: README text, when it says more than `help`.
    readme: str = ""
    #: How the default reads in `--help` and the README ("" = the default itself).
    default_text: str = ""
    #: Flag or environment text -> value (default: the type of the default, e.g. int()).
    parse: Callable[[str], Any] | None = None
    minimum: int | None = None
    maximum: int | None = None
    #: How `minimum` reads in an error ("" = the number).
    minimum_text: str = ""
    choices: tuple[str, ...] = ()
    #: Any further rule: the value -> a problem ("must ...") or None.
    check: Callable[[Any], str | None] | None = None
    #: A flag that takes no value; its variable is on with 1, true, yes or on.
    switch: bool = False
    #: The flag and `env` name a file whose content is the text to parse (secrets: flags
    #: show in `ps`); `value_env` may hold the text itself instead.
    from_file: bool = False
    value_env: str | None = None
    #: The fields the parsed value fills, when one flag sets several (HOST:PORT).
    fills: tuple[str, ...] = ()

    @property
    def text(self) -> str:
        return self.readme or self.help


def setting(default: Any, section: str, help: str, **rule: Any) -> Any:
    """A `Settings` field: `setting(1000, DELIVERY, "what it does", flag="--x-ms",
    env="OJS_X_MS", minimum=0)`. Keyword arguments are `Option`'s."""
    return dataclasses.field(
        default=default, metadata={METADATA_KEY: Option(section, help, **rule)}
    )


def option_of(field: dataclasses.Field[Any]) -> Option | None:
    found = field.metadata.get(METADATA_KEY)
    return found if isinstance(found, Option) else None


def problem_with(option: Option, default: Any, value: Any) -> str | None:
    """What is wrong with `value` for a setting declared with `option` and `default`, if
    anything."""
    kind = type(default)
    if kind is bool and not isinstance(value, bool):
        return f"must be true or false, got {value!r}"
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        return f"must be an integer, got {value!r}"
    if kind in (str, tuple) and not isinstance(value, kind):
        return f"must be a {kind.__name__}, got {value!r}"
    if option.minimum is not None and value < option.minimum:
        return f"must be at least {option.minimum_text or option.minimum}, got {value!r}"
    if option.maximum is not None and value > option.maximum:
        return f"must be at most {option.maximum}, got {value!r}"
    if option.choices and value not in option.choices:
        return f"must be one of {', '.join(option.choices)}, got {value!r}"
    return option.check(value) if option.check is not None else None


def check_fields(instance: Any) -> None:
    """Raise SettingsError for the first field of the dataclass `instance` that breaks its
    rule (what `Settings.__post_init__` calls)."""
    for field in dataclasses.fields(instance):
        option = option_of(field)
        if option is None:
            continue
        problem = problem_with(option, field.default, getattr(instance, field.name))
        if problem is not None:
            raise SettingsError(field.name, problem, option)


def declared(settings_class: type) -> Mapping[str, tuple[dataclasses.Field[Any], Option]]:
    """Field name -> (field, option) of every declared setting, in the class's order."""
    out: dict[str, tuple[dataclasses.Field[Any], Option]] = {}
    for field in dataclasses.fields(settings_class):
        option = option_of(field)
        if option is not None:
            out[field.name] = (field, option)
    return out


def parse_text(field: dataclasses.Field[Any], option: Option, text: str) -> Any:
    """Flag or environment text -> the setting's value; a ValueError says what is wrong."""
    if option.parse is not None:
        return option.parse(text)
    if isinstance(field.default, int):
        try:
            return int(text)
        except ValueError:
            raise ValueError(f"must be an integer, got {text!r}") from None
    return text


def shown_default(field: dataclasses.Field[Any], option: Option) -> str:
    if option.default_text:
        return option.default_text
    if option.switch:
        return "off"
    return str(field.default) if field.default not in ("", ()) else "none"


# --- parsers and rules several settings share -------------------------------------------------


def duration_ms(text: str) -> int:
    """'P7D', 'PT12H', '90m' or plain milliseconds."""
    try:
        return int(text) if text.strip().isdigit() else parse_duration_ms(text)
    except ValueError:
        raise ValueError(
            f"wants an ISO 8601 duration (P7D, PT12H) or milliseconds, got {text!r}"
        ) from None


def host_port(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"must be HOST:PORT, got {text!r}")
    return host, int(port)


def max_depth(spec: str) -> tuple[tuple[str, int], ...]:
    """'1000,email=50' -> (("*", 1000), ("email", 50))."""
    bounds: list[tuple[str, int]] = []
    for part in filter(None, (p.strip() for p in spec.split(","))):
        queue, _, number = part.rpartition("=")
        if not number.isdigit():
            raise ValueError(f"wants N or QUEUE=N items, got {part!r}")
        bounds.append((queue or "*", int(number)))
    return tuple(bounds)


def check_max_depth(value: tuple[Any, ...]) -> str | None:
    for item in value:
        if not (
            isinstance(item, tuple)
            and len(item) == 2
            and isinstance(item[0], str)
            and isinstance(item[1], int)
            and item[1] >= 0
        ):
            return f"must hold (queue, bound >= 0) pairs, got {item!r}"
    return None


def check_log_level(value: str) -> str | None:
    if value.upper() in logging.getLevelNamesMapping():
        return None
    return f"must be DEBUG, INFO, WARNING, ERROR or CRITICAL, got {value!r}"
