"""The workflow core stays pure: it imports nothing of ours but core and errors, nothing that
does I/O, and it answers any JSON with a workflow or an OJS error, never a crash."""

from __future__ import annotations

import ast
from pathlib import Path
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from ojs_amqp.core.ids import UUIDv7Generator
from ojs_amqp.core.workflow.definition import parse_workflow
from ojs_amqp.errors import OjsError

PACKAGE = Path(__file__).parents[2] / "ojs_amqp" / "core" / "workflow"
ALLOWED_OURS = ("ojs_amqp.core", "ojs_amqp.errors")
ALLOWED_STDLIB = {"__future__", "collections", "dataclasses", "enum", "typing"}


def imports(path: Path) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_the_core_imports_only_core_errors_and_pure_stdlib() -> None:
    files = sorted(PACKAGE.glob("*.py"))
    assert len(files) >= 6
    for path in files:
        for name in imports(path):
            ours = name.startswith("ojs_amqp")
            ok = name.startswith(ALLOWED_OURS) if ours else name.split(".")[0] in ALLOWED_STDLIB
            assert ok, f"{path.name} imports {name}"
        assert len(path.read_text().splitlines()) <= 400, path.name


SCALARS = st.none() | st.booleans() | st.integers() | st.text(max_size=8)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)
KEYS = st.sampled_from(["type", "steps", "jobs", "callbacks", "name", "id", "options",
                        "depends_on", "args", "on_success", "callback_type", "queue"])  # fmt: skip
SHAPED = st.recursive(
    st.sampled_from(["chain", "group", "batch", "dag", "a.b", "on_complete", "x"]) | JSON,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=5),
    max_leaves=16,
)


STEP = st.dictionaries(KEYS, SHAPED, max_size=5) | st.fixed_dictionaries(
    {"type": SHAPED, "args": SHAPED},
    optional={"id": SHAPED, "depends_on": SHAPED, "options": SHAPED, "jobs": SHAPED},
)
WORKFLOWS = st.fixed_dictionaries(
    {"type": st.sampled_from(["chain", "group", "batch"]) | SHAPED},
    optional={
        "steps": st.lists(STEP, max_size=4),
        "jobs": st.lists(STEP, max_size=4),
        "callbacks": st.dictionaries(st.sampled_from(["on_success", "on_failure", "x"]), STEP),
        "options": SHAPED,
        "name": SHAPED,
    },
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(JSON, SHAPED, WORKFLOWS, WORKFLOWS.map(lambda b: {**b, "type": None})))
def test_any_json_gets_a_workflow_or_an_ojs_error(body: Any) -> None:
    ids = UUIDv7Generator()
    try:
        parse_workflow(body, now_ms=1_700_000_000_000, new_id=lambda: ids.new(1_700_000_000_000))
    except OjsError as exc:
        assert exc.message and exc.http_status in (400, 422)
