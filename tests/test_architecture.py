"""The structure ARCHITECTURE.md promises: one run layout, imports that run one way, no cycles."""

import ast
import inspect
import os
import re
from pathlib import Path

from prefscale.layout import TOP_LEVEL, RunLayout

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "prefscale"


def layout_paths(layout: RunLayout) -> list[str]:
    """Every path the layout names, each method called with a sample argument."""
    paths = []
    for name, member in inspect.getmembers(RunLayout):
        if name.startswith("_"):
            continue
        if isinstance(member, property):
            paths.append(getattr(layout, name))
        elif inspect.isfunction(member) and name != "fold_adapters":
            samples = {"str": "x", "int": 0}
            args = [samples[p.annotation] for p in inspect.signature(member).parameters.values()
                    if p.name != "self" and p.kind is p.POSITIONAL_OR_KEYWORD]
            paths.append(getattr(layout, name)(*args))
    return paths


def test_every_run_directory_path_is_a_listed_top_level_entry():
    layout = RunLayout("run-root")
    paths = layout_paths(layout)
    assert len(paths) >= 20
    for path in paths:
        top = os.path.relpath(path, os.path.abspath("run-root") if os.path.isabs(path) else "run-root").split(os.sep)[0]
        assert top in TOP_LEVEL, f"{path} is outside layout.TOP_LEVEL"


def test_the_guides_run_directory_table_matches_the_layout():
    page = (REPO / "docs" / "recipe.md").read_text()
    section = page.split("<!-- run-layout -->")[1]
    listed = re.findall(r"^\| `([^`]+)` \|", section, flags=re.M)
    assert listed == list(TOP_LEVEL)


def test_no_module_but_the_layout_names_run_directory_files():
    names = [n for n in TOP_LEVEL if "." in n or n in ("validated", "ray_train")]
    for path in PACKAGE.rglob("*.py"):
        if path.name == "layout.py":
            continue
        text = path.read_text()
        for name in names:
            assert f'"{name}"' not in text, f"{path.relative_to(REPO)} names {name}; use prefscale.layout.RunLayout"


def imports(path: Path) -> set[str]:
    """prefscale modules a file imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("prefscale"):
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("prefscale"))
    return found


def module_graph() -> dict[str, set[str]]:
    modules = {".".join(p.relative_to(REPO).with_suffix("").parts).removesuffix(".__init__"): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_imports_have_no_cycle():
    graph = module_graph()
    state: dict[str, str] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = "open"
        for child in sorted(graph[node]):
            assert state.get(child) != "open", "import cycle: " + " -> ".join([*trail[trail.index(child):], child]) if child in trail else child
            if child not in state:
                visit(child, [*trail, child])
        state[node] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_stage_modules_never_import_the_pipeline_or_the_cli():
    for module, imported in module_graph().items():
        if module not in ("prefscale.cli", "prefscale.pipeline"):
            assert not imported & {"prefscale.cli", "prefscale.pipeline"}, f"{module} imports {imported & {'prefscale.cli', 'prefscale.pipeline'}}"
