"""The layering the architecture relies on (docs/architecture.md, ADR 0003), read from the
source with `ast`: every import statement, at any depth (inside functions and
`if TYPE_CHECKING:` blocks too), so a lazy import cannot slip past."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[2] / "ojs_amqp"

#: What the engine must never import: the adapters and the edges, and broker libraries.
ENGINE_FORBIDDEN = (
    "ojs_amqp.amqp",
    "ojs_amqp.store",
    "ojs_amqp.http",
    "ojs_amqp.native",
    "ojs_amqp.sdk",
    "ojs_amqp.runtime",
    "aiormq",
    "pamqp",
    "aio_pika",
)


def _modules(layer: str) -> list[Path]:
    return sorted((PACKAGE / layer).rglob("*.py"))


def imports_of(path: Path, root: Path = PACKAGE.parent) -> set[str]:
    """Every module `path` imports, absolute (relative imports resolved against `root`)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    package = ".".join(path.relative_to(root).parent.parts)
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                module = f"{base}.{node.module}" if node.module else base
            else:
                module = node.module or ""
            found.add(module)
            found.update(f"{module}.{alias.name}" for alias in node.names)
    return found


def _within(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_the_checker_sees_relative_lazy_and_type_checking_imports(tmp_path: Path) -> None:
    # Given a module that imports in each of the ways that are easy to miss
    layer = tmp_path / "ojs_amqp" / "engine"
    layer.mkdir(parents=True)
    probe = layer / "probe.py"
    probe.write_text(
        "from typing import TYPE_CHECKING\n"
        "from . import ports\n"
        "from ..amqp import broker\n"
        "if TYPE_CHECKING:\n    import ojs_amqp.store.base\n"
        "def later():\n    from ojs_amqp.http import app\n"
    )
    # When its imports are read
    found = imports_of(probe, root=tmp_path)
    # Then every one of them is found, resolved to its absolute name
    for module in ("ojs_amqp.engine.ports", "ojs_amqp.amqp.broker", "ojs_amqp.store.base",
                   "ojs_amqp.http.app"):  # fmt: skip
        assert any(_within(name, module) for name in found), (module, found)


@pytest.mark.parametrize("path", _modules("core"), ids=lambda p: p.name)
def test_the_core_imports_nothing_of_ours_but_errors(path: Path) -> None:
    ours = {m for m in imports_of(path) if _within(m, "ojs_amqp")}
    allowed = ("ojs_amqp.core", "ojs_amqp.errors")
    stray = sorted(m for m in ours if not any(_within(m, a) for a in allowed) and m != "ojs_amqp")
    assert not stray, f"{path.name} imports {stray}"


#: All the engine may import of ours: the core, the error tree, itself, and five I/O-free
#: modules (the typed settings, the metrics registry, tracing's optional spans, the clock,
#: the task supervisor).
ENGINE_ALLOWED = ("ojs_amqp.core", "ojs_amqp.errors", "ojs_amqp.engine", "ojs_amqp.settings",
                  "ojs_amqp.metrics", "ojs_amqp.tracing", "ojs_amqp.clock",
                  "ojs_amqp.supervisor")  # fmt: skip


@pytest.mark.parametrize("path", _modules("engine"), ids=lambda p: p.name)
def test_the_engine_imports_no_adapter_edge_or_broker_library(path: Path) -> None:
    found = imports_of(path)
    stray = sorted(m for m in found if any(_within(m, f) for f in ENGINE_FORBIDDEN))
    assert not stray, f"{path.name} imports {stray}"
    ours = {m for m in found if _within(m, "ojs_amqp") and m != "ojs_amqp"}
    unlisted = sorted(m for m in ours if not any(_within(m, a) for a in ENGINE_ALLOWED))
    assert not unlisted, f"{path.name} imports {unlisted}, outside what the engine may use"


def test_the_fakes_implement_the_ports_without_the_adapters() -> None:
    """ojs_amqp.testing is what unit tests build an engine from: no broker, no store."""
    for path in sorted((PACKAGE / "testing").glob("*.py")):
        if path.name == "store.py":  # the in-memory store may build on store/ (store-pg's)
            continue
        found = imports_of(path)
        stray = sorted(m for m in found if any(_within(m, f) for f in ENGINE_FORBIDDEN))
        assert not stray, f"{path.name} imports {stray}"
