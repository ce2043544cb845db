"""The package's import graph has no cycles, counting imports inside functions too (a
cycle there is a knot in the design even when Python tolerates it), and every module
opens with a docstring saying its one job."""

import ast
from pathlib import Path

import flashtensors

PACKAGE = Path(flashtensors.__file__).parent


def _modules() -> dict:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        if "integrations" in path.relative_to(PACKAGE).parts:
            continue
        parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(["flashtensors", *parts])] = path
    return out


def _imports(name: str, path: Path, modules: dict) -> set:
    """The flashtensors modules ``name`` imports, anywhere in its code."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                base = ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))
            targets = [base] + [f"{base}.{a.name}" for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def _cycle(graph: dict):
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = "done"
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycles():
    modules = _modules()
    # A package's __init__ importing its own submodules is how packages work, not a knot.
    graph = {name: {t for t in _imports(name, path, modules) if not name.startswith(t + ".")}
             for name, path in modules.items()}
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_the_graph_is_read_right():
    # The reader above must see lazy imports, or the test above could not fail.
    modules = _modules()

    def imports(name):
        return _imports(name, modules[name], modules)

    assert "flashtensors.remote.tiered" in imports("flashtensors.locations")
    assert "flashtensors.group" in imports("flashtensors.reading")


def test_every_module_says_its_job():
    missing = [name for name, path in _modules().items()
               if path.stat().st_size and not ast.get_docstring(ast.parse(path.read_text()))]
    assert not missing, missing
