"""The import rules of the four wings, read from the source with ``ast`` (nothing is imported).

core imports no other wing; study imports only core and never gradio; research imports only core;
gradio is imported only by demo/app and app.py; no two modules import each other, even through
others (imports inside functions count too).
"""
from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
WINGS = ("core", "app", "study", "research")
UI_LIBRARIES = {"gradio", "gradio_client", "spaces"}
ALLOWED = {"core": {"core"}, "study": {"core", "study"}, "research": {"core", "research"},
           "app": set(WINGS)}


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def sources() -> dict[str, tuple[str, bool]]:
    """module name -> (source text, is a package)."""
    files = sorted((ROOT / "demo").rglob("*.py")) + [ROOT / "app.py"]
    return {module_name(f): (f.read_text(encoding="utf-8"), f.name == "__init__.py") for f in files}


def imports(name: str, source: str, is_package: bool, known: set[str]) -> set[str]:
    """Every absolute module name that ``source`` imports (top level and inside functions).

    ``from X import y`` counts as importing ``X.y`` when that is one of the ``known`` modules.
    """
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names if f"{target}.{alias.name}" in known)
    return found


def wing(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "demo" and parts[1] in WINGS else None


def violations(modules: dict[str, tuple[str, bool]]) -> list[str]:
    """Every broken rule, as a sentence; [] when the layout is kept."""
    known = set(modules)
    graph = {name: imports(name, src, pkg, known) for name, (src, pkg) in modules.items()}
    problems = []
    for name, targets in graph.items():
        own = wing(name)
        for target in sorted(targets):
            top = target.split(".")[0]
            if top in UI_LIBRARIES and own != "app" and name != "app":
                problems.append(f"{name} imports {target}: gradio code belongs in demo/app")
            other = wing(target)
            if own and other and other not in ALLOWED[own]:
                problems.append(f"{name} ({own}) imports {target} ({other})")
    local = {name: {t for t in targets if t in known and t != name} for name, targets in graph.items()}
    try:
        TopologicalSorter(local).prepare()
    except CycleError as err:
        problems.append("import loop: " + " -> ".join(err.args[1]))
    return problems


def test_every_module_of_demo_is_in_a_wing():
    outside = [m for m in sources() if m.startswith("demo.") and not wing(m)]
    assert outside == []


def test_the_import_rules_hold():
    assert violations(sources()) == []


@pytest.mark.parametrize("module, source, broken", [
    ("demo.core.plug", "from ..app import ui\n", "demo.core.plug (core) imports demo.app.ui (app)"),
    ("demo.study.flow", "import gradio as gr\n", "demo.study.flow imports gradio: gradio code belongs in demo/app"),
    ("demo.research.train", "def f():\n    from ..study.flow import StudyService\n",
     "demo.research.train (research) imports demo.study.flow (study)"),
])
def test_a_broken_rule_is_reported(module, source, broken):
    modules = sources()
    modules[module] = (modules[module][0] + source, False)
    assert broken in violations(modules)


def test_an_import_loop_is_reported():
    modules = sources()
    modules["demo.core.settings"] = (modules["demo.core.settings"][0] + "from .studio import Studio\n", False)
    assert any(p.startswith("import loop:") and "demo.core.settings" in p for p in violations(modules))
