"""The README's configuration tables, made from the settings' declarations (settings.py), so
that the README cannot say other than the code: tests/unit/test_settings.py compares them.

    python -m ojs_amqp.settings_table --write    # regenerate README.md's tables
    python -m ojs_amqp.settings_table --check    # exit 1 if README.md differs
    python -m ojs_amqp.settings_table            # print them
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ojs_amqp.settings import Settings
from ojs_amqp.settings_schema import SECTIONS, declared, shown_default

BEGIN = (
    "<!-- settings table: made by `python -m ojs_amqp.settings_table --write` from "
    "ojs_amqp/settings.py; edit the settings there, not here -->"
)
END = "<!-- end of settings table -->"
README = Path(__file__).resolve().parent.parent / "README.md"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _env_cell(env: str | None, value_env: str | None, switch: bool) -> str:
    if env is None:
        return ""
    cell = f"`{env}=1`" if switch else f"`{env}`"
    return f"{cell} (or `{value_env}`)" if value_env else cell


def render() -> str:
    """The tables, one per section, between the BEGIN and END markers."""
    settings = declared(Settings)
    filled = {name for _, option in settings.values() for name in option.fills[1:]}
    lines = [BEGIN]
    code_only: list[str] = []
    for section in SECTIONS:
        rows = []
        for name, (field, option) in settings.items():
            if option.section != section or name in filled:
                continue
            default = shown_default(field, option)
            if default not in ("none", "off", "unbounded"):
                default = f"`{default}`"
            if option.flag is None:
                code_only.append(f"`{name}` ({default}): {_cell(option.text)}")
                continue
            env = _env_cell(option.env, option.value_env, option.switch)
            rows.append(f"| `{option.flag}` | {env} | {default} | {_cell(option.text)} |")
        if rows:
            lines += ["", f"### {section}", "", "| flag | env | default | meaning |"]
            lines += ["|---|---|---|---|", *rows]
    if code_only:
        intro = "Settings without a flag, for code that builds `Settings` itself: "
        lines += ["", intro + "; ".join(code_only) + "."]
    lines.append(END)
    return "\n".join(lines) + "\n"


def replaced(readme: str) -> str:
    """`readme` with its tables replaced by freshly rendered ones."""
    start, end = readme.find(BEGIN), readme.find(END)
    if start < 0 or end < start:
        raise ValueError(f"README has no settings table markers ({BEGIN!r} ... {END!r})")
    return readme[:start] + render() + readme[end + len(END) + 1 :]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ojs_amqp.settings_table")
    parser.add_argument("--write", action="store_true", help="rewrite README.md's tables")
    parser.add_argument("--check", action="store_true", help="exit 1 if README.md differs")
    parser.add_argument("--readme", type=Path, default=README)
    args = parser.parse_args(argv)
    if not (args.write or args.check):
        sys.stdout.write(render())
        return 0
    text = args.readme.read_text(encoding="utf-8")
    fresh = replaced(text)
    if args.check:
        if fresh != text:
            print(f"{args.readme}: the settings table is out of date; run "
                  "`python -m ojs_amqp.settings_table --write`", file=sys.stderr)  # fmt: skip
            return 1
        return 0
    args.readme.write_text(fresh, encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
