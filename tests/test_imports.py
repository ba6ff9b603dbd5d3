"""The package's modules import each other without a circle, and moved modules keep their old import paths.

The cycle check reads the source with :mod:`ast` and imports nothing: an edge ``A -> B`` means that executing module
``A``'s top-level statements imports ``B``. Imports inside functions and ``if TYPE_CHECKING:`` blocks run later or
never, so they are not edges. Importing ``pkg.sub`` runs ``pkg/__init__`` first, so an import of a module also counts
as an edge to each enclosing package's ``__init__``, except the packages that enclose the importer itself (their
``__init__`` has already started by the time the importer runs). ``from pkg import name`` is an edge to the submodule
``pkg.name`` when there is one, and to ``pkg/__init__`` otherwise (the name is then one of its attributes).
"""

from __future__ import annotations

import ast
import importlib
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch as th

import sb3_carla_td3
from sb3_carla_td3._aliases import ALIASES

PACKAGE_DIR = Path(sb3_carla_td3.__file__).resolve().parent
PACKAGE = PACKAGE_DIR.name

#: Known circles, each as the sorted names of the modules on it; none at present. Add one only with a comment that
#: says why it cannot be broken yet.
KNOWN_CYCLES: set[tuple[str, ...]] = set()


def package_modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name, for its ``__init__``)."""
    modules = {}
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        parts = (PACKAGE, *path.relative_to(PACKAGE_DIR).with_suffix("").parts)
        modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _import_time_statements(body: list[ast.stmt]) -> Iterator[ast.Import | ast.ImportFrom]:
    """The import statements that run when the module is imported (not in functions, classes or TYPE_CHECKING)."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        elif isinstance(node, ast.If):
            if not _is_type_checking(node.test):
                yield from _import_time_statements(node.body)
            yield from _import_time_statements(node.orelse)
        elif isinstance(node, ast.Try):
            for block in (node.body, *(handler.body for handler in node.handlers), node.orelse, node.finalbody):
                yield from _import_time_statements(block)
        elif isinstance(node, ast.With):
            yield from _import_time_statements(node.body)


def _absolute(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = importer.split(".")[: None if is_package else -1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imported_modules(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that importing ``name`` imports directly (see the module docstring for the rules)."""
    targets: set[str] = set()
    is_package = path.name == "__init__.py"
    for node in _import_time_statements(ast.parse(path.read_text(encoding="utf-8")).body):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
            continue
        module = _absolute(node, name, is_package)
        submodules = {f"{module}.{alias.name}" for alias in node.names} & modules.keys()
        targets.update(submodules or {module})
        if len(submodules) < len(node.names):
            targets.add(module)  # some names are attributes of the module itself
    edges = set()
    for target in targets:
        parts = target.split(".")
        for end in range(1, len(parts) + 1):
            enclosing = ".".join(parts[:end])
            if enclosing in modules and enclosing != name and not name.startswith(f"{enclosing}."):
                edges.add(enclosing)
    return edges


def import_graph() -> dict[str, set[str]]:
    """The package-internal import graph: module -> the package modules its import runs."""
    modules = package_modules()
    return {name: imported_modules(name, path, modules) for name, path in modules.items()}


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One circle per strongly connected component with more than one module (or a module importing itself).

    :return: each circle as a path of module names that starts and ends with the same module
    """
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm; the package is small enough for recursion
        index[node] = low[node] = len(index)
        stack.append(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                component.add(member)
                if member == node:
                    break
            if len(component) > 1 or node in graph[node]:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_circle_in(component, graph) for component in components]


def _circle_in(component: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest circle through the component's first module (breadth-first, inside the component)."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        next_frontier = []
        for node in frontier:
            for successor in sorted(graph[node] & component):
                if successor == start:
                    return [*paths[node], start]
                if successor not in paths:
                    paths[successor] = [*paths[node], successor]
                    next_frontier.append(successor)
        frontier = next_frontier
    raise AssertionError(f"no circle through {start} in {sorted(component)}")


def test_graph_sees_package_internal_imports():
    graph = import_graph()
    assert "sb3_carla_td3.callbacks.verdicts" in graph["sb3_carla_td3.callbacks.reward_trend"]
    assert "sb3_carla_td3.callbacks" in graph["sb3_carla_td3.health"]  # runs callbacks/__init__ first
    assert "sb3_carla_td3.td3_cnn" in graph[PACKAGE]  # ``from sb3_carla_td3.td3_cnn import TD3CNN``
    assert PACKAGE not in graph["sb3_carla_td3.td3_cnn"]  # its own package's __init__ has already started


def test_graph_ignores_imports_in_functions_and_type_checking_blocks(tmp_path):
    module = tmp_path / "module.py"
    module.write_text(
        "from typing import TYPE_CHECKING\n"
        "import sb3_carla_td3.errors\n"
        "if TYPE_CHECKING:\n"
        "    from sb3_carla_td3.td3_cnn import TD3CNN\n"
        "def later():\n"
        "    from sb3_carla_td3 import health\n",
        encoding="utf-8",
    )
    modules = package_modules()
    assert imported_modules("sb3_carla_td3.module", module, modules) == {"sb3_carla_td3.errors"}


def test_cycle_finder_reports_a_circle_through_a_package_init():
    graph = {"p": {"p.a"}, "p.a": {"q.b"}, "q": {"q.b"}, "q.b": {"p"}}
    assert find_cycles(graph) == [["p", "p.a", "q.b", "p"]]


def test_no_import_cycle_inside_the_package():
    cycles = [cycle for cycle in find_cycles(import_graph()) if tuple(sorted(set(cycle))) not in KNOWN_CYCLES]
    assert not cycles, "import circles:\n" + "\n".join(" -> ".join(cycle) for cycle in cycles)


def test_health_does_not_come_back_from_the_callbacks():
    """health.py only re-exports; no callback (nor anything else in the package) imports it."""
    graph = import_graph()
    assert [name for name, targets in graph.items() if "sb3_carla_td3.health" in targets] == []


def test_saturation_old_path_is_the_moved_module():
    import sb3_carla_td3.saturation

    import sb3_carla_td3.callbacks.saturation

    assert sb3_carla_td3.saturation is sb3_carla_td3.callbacks.saturation
    assert sys.modules["sb3_carla_td3.saturation"] is sb3_carla_td3.callbacks.saturation


def test_saturation_names_import_from_the_old_path():
    from sb3_carla_td3.saturation import SATURATED, ActionSaturationCallback, saturation_fraction

    from sb3_carla_td3.callbacks import ActionSaturationCallback as exported

    assert ActionSaturationCallback is exported
    assert SATURATED == 0.99 and callable(saturation_fraction)


def test_monkeypatch_on_the_old_saturation_path_reaches_the_new_one(monkeypatch):
    import sb3_carla_td3.saturation

    import sb3_carla_td3.callbacks.saturation

    monkeypatch.setattr(sb3_carla_td3.saturation, "saturation_share", lambda actions: th.tensor(0.25))
    assert sb3_carla_td3.callbacks.saturation.saturation_fraction(th.tensor([0.6, 0.4])) == pytest.approx(0.25)


@pytest.mark.parametrize(
    ("name", "home"),
    [
        ("RewardTrendCallback", "sb3_carla_td3.callbacks.reward_trend"),
        ("reward_trend", "sb3_carla_td3.callbacks.reward_trend"),
        ("HealthVerdict", "sb3_carla_td3.callbacks.verdicts"),
        ("TrainingHealthWarning", "sb3_carla_td3.callbacks.verdicts"),
        ("format_verdicts", "sb3_carla_td3.callbacks.verdicts"),
        ("keep_training", "sb3_carla_td3.callbacks.verdicts"),
        ("warn_health", "sb3_carla_td3.callbacks.verdicts"),
        ("require", "sb3_carla_td3.callbacks.utils"),
        ("is_number", "sb3_carla_td3.callbacks.utils"),
        ("is_count", "sb3_carla_td3.callbacks.utils"),
        ("episode_infos", "sb3_carla_td3.callbacks.utils"),
        ("ROLES", "sb3_carla_td3.callbacks.gradient_norm"),
        ("StepNormRecorder", "sb3_carla_td3.callbacks.gradient_norm"),
        ("find_optimizers", "sb3_carla_td3.callbacks.gradient_norm"),
        ("clip_verdict", "sb3_carla_td3.callbacks.gradient_norm"),
        ("score_critic", "sb3_carla_td3.q_scoring"),
        ("QSample", "sb3_carla_td3.q_scoring"),
    ],
)
def test_health_still_exports_what_moved_out(name, home):
    import sb3_carla_td3.health

    assert getattr(sb3_carla_td3.health, name) is getattr(importlib.import_module(home), name)


@pytest.mark.parametrize("old", sorted(ALIASES))
def test_every_alias_is_the_same_module_object(old):
    """Each old import path (kept in one place, sb3_carla_td3/_aliases.py) is the moved module itself, not a copy."""
    assert importlib.import_module(old) is importlib.import_module(ALIASES[old])
    assert sys.modules[old] is sys.modules[ALIASES[old]]


def test_aliases_are_made_in_one_place_only():
    sources = {name: path.read_text(encoding="utf-8") for name, path in package_modules().items()}
    assert [name for name, text in sources.items() if "sys.modules[" in text] == ["sb3_carla_td3._aliases"]


def test_no_two_functions_share_a_name_with_different_meanings():
    """save_checkpoint (a run's checkpoint directory) and the image-space checks of buffers and extractors each have one
    name; the health checks' single-file save is save_before_stop."""
    definitions: dict[str, list[str]] = {}
    for name, path in package_modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.FunctionDef) and node.col_offset == 0:  # module-level functions
                definitions.setdefault(node.name, []).append(name)
    watched = ("save_checkpoint", "save_before_stop", "_frame_stack_shape", "_encoder_input_shape", "_check_image_space")
    assert {name: definitions.get(name, []) for name in watched} == {
        "save_checkpoint": ["sb3_carla_td3.validation.checkpoints"],
        "save_before_stop": ["sb3_carla_td3.callbacks.verdicts"],
        "_frame_stack_shape": ["sb3_carla_td3.buffers"],
        "_encoder_input_shape": ["sb3_carla_td3.extractors"],
        "_check_image_space": [],
    }
