"""The package's modules depend downward only: no import cycle, counting the imports made
inside functions, and no module reaches for another's private name; and no call in it
passes more than five arguments by position."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mnist_ray"


def _imports() -> dict[str, list[tuple[str, str]]]:
    """Each module's (imported module, imported name) pairs within the package, at any depth."""
    found: dict[str, list[tuple[str, str]]] = {}
    for path in sorted(PACKAGE.glob("*.py")):
        pairs = []
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and node.module == "mnist_ray":
                pairs += [(a.name, "") for a in node.names if (PACKAGE / f"{a.name}.py").exists()]
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("mnist_ray."):
                pairs += [(node.module.split(".")[1], a.name) for a in node.names]
            elif isinstance(node, ast.Import):
                pairs += [
                    (a.name.split(".")[1], "")
                    for a in node.names
                    if a.name.startswith("mnist_ray.")
                ]
        found[path.stem] = [(m, n) for m, n in pairs if m != path.stem]
    return found


def test_no_module_imports_itself_back():
    graph = {m: {d for d, _ in pairs} for m, pairs in _imports().items()}
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> None:
        for dep in sorted(graph.get(module, ())):
            assert dep not in path, " -> ".join([*path[path.index(dep) :], dep])
            if dep not in done:
                visit(dep, [*path, dep])
        done.add(module)

    for module in sorted(graph):
        visit(module, [module])
    assert {"store", "query", "compact"} <= done


def test_no_module_imports_a_private_name_of_another():
    private = [
        f"{module} imports {dep}.{name}"
        for module, pairs in _imports().items()
        for dep, name in pairs
        if name.startswith("_")
    ]
    assert private == []


MOST_POSITIONAL = 5  # past this, a call names its arguments: one swapped pair is a silent bug


def test_no_call_in_the_package_passes_more_than_five_arguments_by_position():
    found = []
    for path in sorted(PACKAGE.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call) and len(node.args) > MOST_POSITIONAL:
                found.append(f"{path.name}:{node.lineno}: {ast.unparse(node.func)}")
    assert found == [], "name the arguments (keyword-only past the fifth):\n" + "\n".join(found)
