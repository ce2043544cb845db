"""The package's import graph, integrations included, has no cycles: none between files
(counting imports inside functions too: a cycle there is a knot in the design even when
Python tolerates it), none between units (each sub-package of flashtensors/ counts as one
unit, each top-level module as one), and no chain of units longer than MAX_CHAIN. A name
taken from a package's ``__init__`` counts as taken from the module that defines it.
Every module opens with a docstring saying its one job."""

import ast
from functools import lru_cache
from pathlib import Path

import flashtensors

PACKAGE = Path(flashtensors.__file__).parent
MAX_CHAIN = 12


@lru_cache(maxsize=None)
def _modules() -> dict:
    """Module name -> file, for flashtensors/ and its integrations (wherever installed)."""
    out = {}
    roots = [(PACKAGE, "flashtensors")]
    from flashtensors import integrations

    roots.append((Path(integrations.__file__).parent, "flashtensors.integrations"))
    for root, prefix in roots:
        for path in root.rglob("*.py"):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts and parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([prefix, *parts])] = path
    return out


def _is_package(name: str) -> bool:
    return _modules()[name].name == "__init__.py"


def _absolute(name: str, node: ast.ImportFrom) -> str:
    base = node.module or ""
    if not node.level:
        return base
    package = name if _is_package(name) else name.rsplit(".", 1)[0]
    parts = package.split(".")
    return ".".join(parts[: len(parts) - node.level + 1] + ([base] if base else []))


@lru_cache(maxsize=None)
def _reexports(package: str) -> dict:
    """Names a package's ``__init__`` takes from its own modules: name -> defining module."""
    out = {}
    for node in ast.walk(ast.parse(_modules()[package].read_text())):
        if isinstance(node, ast.ImportFrom):
            source = _absolute(package, node)
            for alias in node.names:
                out[alias.asname or alias.name] = _defined_in(source, alias.name)
    return out


def _defined_in(module: str, name: str) -> str:
    """The module that ``from module import name`` really takes ``name`` from."""
    modules = _modules()
    if f"{module}.{name}" in modules:
        return f"{module}.{name}"
    if module in modules and _is_package(module):
        return _reexports(module).get(name, module)
    return module


def _imports(name: str) -> set:
    """The modules ``name`` imports, anywhere in its code."""
    modules = _modules()
    found = set()
    for node in ast.walk(ast.parse(modules[name].read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            source = _absolute(name, node)
            targets = [_defined_in(source, a.name) for a in node.names]
        else:
            continue
        found.update(t for t in targets if t in modules and t != name)
    return found


def _file_graph() -> dict:
    # A package's __init__ importing its own submodules is how packages work, not a knot.
    return {name: {t for t in _imports(name) if not t.startswith(name + ".")} for name in _modules()}


def unit_of(module: str) -> str:
    """``flashtensors.stores.http`` -> ``flashtensors.stores``; a top-level module is its own
    unit; each integration (vllm, sglang, transformers) is one."""
    parts = module.split(".")
    if parts[1:2] == ["integrations"]:
        return ".".join(parts[:3])
    if len(parts) > 2 or (len(parts) == 2 and _is_package(module)):
        return ".".join(parts[:2])
    return module


def _unit_graph() -> dict:
    graph = {}
    for name, targets in _file_graph().items():
        edges = graph.setdefault(unit_of(name), set())
        edges.update(unit_of(t) for t in targets if unit_of(t) != unit_of(name))
    for targets in list(graph.values()):
        for t in targets:
            graph.setdefault(t, set())
    graph.pop("flashtensors", None)  # the root package only re-exports what its modules define
    return {k: {t for t in v if t != "flashtensors"} for k, v in graph.items()}


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


def _longest_chain(graph: dict) -> list:
    @lru_cache(maxsize=None)
    def longest(node):
        best = [node]
        for nxt in graph[node]:
            chain = [node, *longest(nxt)]
            if len(chain) > len(best):
                best = chain
        return tuple(best)

    return max((list(longest(n)) for n in graph), key=len)


def test_no_import_cycles_between_files():
    graph = _file_graph()
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_no_loops_between_units():
    graph = _unit_graph()
    assert _cycle(graph) is None, " -> ".join(_cycle(graph))


def test_chains_of_units_are_short():
    chain = _longest_chain(_unit_graph())
    assert len(chain) <= MAX_CHAIN, " -> ".join(chain)


def test_the_graph_is_read_right():
    # The reader above must see lazy imports, integrations and re-exports, or the tests
    # above could not fail.
    assert "flashtensors.stores.tier" in _imports("flashtensors.stores")  # inside a function
    assert "flashtensors.group" in _imports("flashtensors.reading")
    assert "flashtensors.integrations.vllm.per_rank" in _imports("flashtensors.integrations.vllm.loader")
    assert _defined_in("flashtensors", "FlashError") == "flashtensors.errors"  # a re-export
    assert _defined_in("flashtensors.formats", "FLASH") == "flashtensors.formats"  # defined there
    assert unit_of("flashtensors.stores.http") == "flashtensors.stores"
    assert unit_of("flashtensors.loader") == "flashtensors.loader"
    assert _cycle({"a": {"b"}, "b": {"a"}}) == ["a", "b", "a"]
    assert _longest_chain({"a": {"b"}, "b": {"c"}, "c": set()}) == ["a", "b", "c"]


def test_every_module_says_its_job():
    missing = [name for name, path in _modules().items()
               if path.stat().st_size and not ast.get_docstring(ast.parse(path.read_text()))]
    assert not missing, missing
