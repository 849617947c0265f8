"""The layout's dependency rules, read from the import statements of every
module under ``pipeline/`` (static: nothing is imported to check them).

    services/  the outside world; knows nothing of qa, store or outputs
    store/     the ledgers and the resume plan; knows nothing of services, qa or outputs
    qa/        the question stage; its pure transforms do no I/O and call no service
    outputs/   what a user reads; built from the store
The pretraining stage (``pipeline.corpus``) needs none of the QA machinery.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "pipeline"

# Modules that must stay pure transforms: no file, network or event-loop I/O.
PURE = (
    "pipeline.qa.questions",
    "pipeline.qa.dedup",
    "pipeline.qa.gate",
    "pipeline.qa.terms",
    "pipeline.qa.identity",
    "pipeline.services.hxd_protocol",
    "pipeline.services.replies",
)
IO_MODULES = ("os", "io", "pathlib", "shutil", "socket", "asyncio", "aiohttp", "aiofiles", "openai",
              "httpx", "subprocess", "tempfile", "pipeline.jsonl", "pipeline.services.llm",
              "pipeline.services.huixiangdou", "pipeline.services.local_rag", "pipeline.store")


def _module_name(path: Path) -> str:
    rel = path.relative_to(ROOT).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


@cache
def modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PACKAGE.rglob("*.py")}


@cache
def imports_of(name: str) -> frozenset[str]:
    """Every module ``name`` imports, at any depth of its code (a function-level
    import counts: it runs too)."""
    tree = ast.parse(modules()[name].read_text(encoding="utf-8"))
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            # `from pipeline.qa import gate` imports pipeline.qa.gate
            found.update(f"{node.module}.{a.name}" for a in node.names
                         if f"{node.module}.{a.name}" in modules())
    return frozenset(found)


def _under(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def closure(name: str, *, through_settings: bool = True) -> set[str]:
    """The project modules ``name`` needs, directly or through others.
    Without ``through_settings``, ``pipeline.settings`` (which reads the
    settings file) is not followed: a transform that takes a settings
    dataclass as a value does no I/O by that."""
    seen: set[str] = set()
    todo = [name]
    while todo:
        mod = todo.pop()
        if mod in seen or mod not in modules():
            continue
        if mod == "pipeline.settings" and not through_settings:
            continue
        seen.add(mod)
        todo.extend(i for i in imports_of(mod) if _under(i, "pipeline"))
    return seen


def _in_folder(folder: str) -> list[str]:
    return sorted(m for m in modules() if _under(m, f"pipeline.{folder}"))


def test_every_folder_has_modules() -> None:
    for folder in ("services", "qa", "store", "outputs"):
        assert len(_in_folder(folder)) > 1, folder


@pytest.mark.parametrize(("folder", "forbidden"), [
    ("services", ("pipeline.qa", "pipeline.store", "pipeline.outputs")),
    ("store", ("pipeline.services", "pipeline.qa", "pipeline.outputs")),
])
def test_lower_layers_know_nothing_of_higher_ones(folder: str, forbidden: tuple[str, ...]) -> None:
    bad = {m: sorted(i for i in imports_of(m) if any(_under(i, f) for f in forbidden))
           for m in _in_folder(folder)}
    assert {m: b for m, b in bad.items() if b} == {}


@pytest.mark.parametrize("module", PURE)
def test_transforms_stay_pure(module: str) -> None:
    reached = set().union(*(imports_of(m) for m in closure(module, through_settings=False)))
    assert sorted(i for i in reached if any(_under(i, io) for io in IO_MODULES)) == []


def test_pretraining_needs_no_qa_machinery() -> None:
    needed = closure("pipeline.corpus")
    qa_side = ("pipeline.qa", "pipeline.services", "pipeline.store", "pipeline.outputs")
    assert sorted(m for m in needed if any(_under(m, f) for f in qa_side)) == []
    reached = set().union(*(imports_of(m) for m in needed))
    assert not {"openai", "aiohttp"} & reached


def test_the_rule_checker_sees_a_forbidden_import(tmp_path: Path) -> None:
    # The checker itself: a services module importing the graph is caught.
    assert any(_under(i, "pipeline.qa") for i in imports_of("pipeline.qa.stage"))
    assert "pipeline.services.answerer" in closure("pipeline.services.huixiangdou")
