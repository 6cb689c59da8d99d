"""docs/ARCHITECTURE.md's layer rule, checked on the source (its "Layers" table is read here).

Every import edge between msreid's modules goes to the same layer or a lower one, Ray and
MLflow are imported only in the layers that table allows, and the imports that run when a
module is imported form no cycle. Edges are read with ``ast``: module-level and function-local
imports, ``importlib.import_module("literal")``, and strings naming a module (``"msreid.x.y"``,
``"msreid.x.y:name"``: what the CLI's command table and the test hooks load by name).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SOURCE = ROOT / "platform"  # the source root: holds the package msreid/
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"
THIRD_PARTIES = {"Ray": "ray", "MLflow": "mlflow"}  # the table's names -> top-level modules
MODULE_STRING = re.compile(r"([A-Za-z_]\w*(?:\.\w+)+)(?::\w+)?")


@dataclass(frozen=True)
class Layers:
    """The table: layer of each file or directory (``msreid/train/``), third parties per layer."""

    of_path: dict[str, int]
    allowed: dict[int, frozenset[str]]  # layer -> top-level modules it may import ("ray", ...)

    def layer(self, path: str) -> int | None:
        """The layer of a file (``msreid/train/fit.py``): its own entry, else its nearest directory's."""
        if path in self.of_path:
            return self.of_path[path]
        parts = path.split("/")
        for n in range(len(parts) - 1, 0, -1):
            directory = "/".join(parts[:n]) + "/"
            if directory in self.of_path:
                return self.of_path[directory]
        return None


@dataclass(frozen=True)
class Edge:
    source: str  # the importing module
    target: str  # a module of the package, or a third party's top-level module
    file: str  # the importing file, relative to the source root
    line: int
    at_import: bool  # runs when the source is imported (module level, not under TYPE_CHECKING)
    how: str  # "import", "importlib" (a literal name) or "named" (a string naming a module)


def read_layers(markdown: str) -> Layers:
    """The rows under the ``## Layers`` heading: ``| layer | `files`, ... | Ray, MLflow |``."""
    section = markdown.split("\n## Layers", 1)
    if len(section) < 2:
        raise AssertionError("docs/ARCHITECTURE.md has no '## Layers' section to check against")
    of_path: dict[str, int] = {}
    allowed: dict[int, frozenset[str]] = {}
    for line in section[1].split("\n## ", 1)[0].splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].isdigit():
            continue  # prose, the header and the |---| row
        layer = int(cells[0])
        for path in re.findall(r"`([^`]+)`", cells[1]):
            if path in of_path:
                raise AssertionError(f"docs/ARCHITECTURE.md's layer table lists {path} twice")
            of_path[path] = layer
        allowed[layer] = frozenset(module for name, module in THIRD_PARTIES.items()
                                   if name in cells[2])
    if not of_path:
        raise AssertionError("docs/ARCHITECTURE.md's '## Layers' section has no table rows "
                             "'| layer | `msreid/...` | Ray, MLflow |'")
    return Layers(of_path, allowed)


def module_files(source: Path, package: str) -> dict[str, str]:
    """Module name -> its file relative to ``source`` (a package is its ``__init__.py``)."""
    out = {}
    for path in sorted((source / package).rglob("*.py")):
        rel = path.relative_to(source)
        parts = rel.with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = rel.as_posix()
    return out


def _resolve(name: str, modules: dict[str, str]) -> str | None:
    """The module ``name`` is or lies in (``pkg.mod.attr`` -> ``pkg.mod``); None: not ours."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


class _Imports(ast.NodeVisitor):
    """The edges of one module, each marked whether it runs when the module is imported."""

    def __init__(self, module: str, file: str, modules: dict[str, str], is_package: bool):
        self.module, self.file, self.modules = module, file, modules
        self.package = module if is_package else module.rpartition(".")[0]
        self.edges: list[Edge] = []
        self.at_import = True

    def _add(self, name: str, node: ast.AST, how: str) -> None:
        top = name.split(".")[0]
        if top in THIRD_PARTIES.values():
            target = top
        else:
            target = _resolve(name, self.modules)
            if target is None:
                return
        self.edges.append(Edge(self.module, target, self.file, node.lineno,
                               self.at_import and how != "named", how))

    def _nested(self, node: ast.AST, at_import: bool) -> None:
        saved, self.at_import = self.at_import, self.at_import and at_import
        self.generic_visit(node)
        self.at_import = saved

    def visit_FunctionDef(self, node):  # its imports run when it is called, not at import
        self._nested(node, False)

    visit_AsyncFunctionDef = visit_Lambda = visit_FunctionDef

    def visit_If(self, node):  # `if TYPE_CHECKING:` never runs
        test = node.test
        checking = (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
            isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")
        self._nested(node, not checking)

    def visit_Import(self, node):
        for alias in node.names:
            self._add(alias.name, node, "import")

    def visit_ImportFrom(self, node):
        base = node.module or ""
        if node.level:  # relative: from the package upwards
            anchor = self.package.split(".")
            anchor = anchor[:len(anchor) - (node.level - 1)]
            base = ".".join([*anchor, *([base] if base else [])])
        for alias in node.names:  # `from pkg import mod` imports the module pkg.mod
            full = f"{base}.{alias.name}"
            self._add(full if full in self.modules else base, node, "import")

    def visit_Call(self, node):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        if (name == "import_module" and node.args and isinstance(node.args[0], ast.Constant)
                and isinstance(node.args[0].value, str)):
            self._add(node.args[0].value, node, "importlib")
            for child in [func, *node.args[1:], *node.keywords]:  # the name: counted once
                self.visit(child)
            return
        self.generic_visit(node)

    def visit_Constant(self, node):
        if isinstance(node.value, str):
            match = MODULE_STRING.fullmatch(node.value)
            if match and match.group(1) in self.modules:
                self._add(match.group(1), node, "named")


def import_edges(source: Path, package: str) -> list[Edge]:
    """Every edge from a module of ``package`` to another of its modules, Ray or MLflow."""
    modules = module_files(source, package)
    edges = []
    for module, file in modules.items():
        visitor = _Imports(module, file, modules, file.endswith("__init__.py"))
        visitor.visit(ast.parse((source / file).read_text(), file))
        edges += [e for e in visitor.edges if e.target != module]
    return list(dict.fromkeys(edges))  # `from m import a, b`: one edge


def unplaced(source: Path, package: str, layers: Layers) -> list[str]:
    return [f"{file} has no layer in docs/ARCHITECTURE.md's '## Layers' table: add it (or its "
            "directory) to the row of the layer it belongs to"
            for file in module_files(source, package).values() if layers.layer(file) is None]


def upward_edges(edges: list[Edge], layers: Layers, source: Path, package: str) -> list[str]:
    """One line per edge into a higher layer: file, line, both modules and their layers."""
    files = module_files(source, package)
    out = []
    for e in edges:
        if e.target not in files:
            continue
        low, high = layers.layer(e.file), layers.layer(files[e.target])
        if low is not None and high is not None and high > low:
            out.append(f"{e.file}:{e.line}: {e.source} (layer {low}) imports {e.target} "
                       f"(layer {high}){'' if e.how == 'import' else f' [{e.how}]'}")
    return out


def forbidden_third_parties(edges: list[Edge], layers: Layers) -> list[str]:
    out = []
    for e in edges:
        layer = layers.layer(e.file)
        if e.target in THIRD_PARTIES.values() and layer is not None \
                and e.target not in layers.allowed.get(layer, frozenset()):
            out.append(f"{e.file}:{e.line}: {e.source} (layer {layer}) imports {e.target}, "
                       "which docs/ARCHITECTURE.md's layer table does not allow there")
    return out


def import_cycles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected groups of >1 module (or a module importing itself) over the edges
    that run at import time (Tarjan's algorithm), each sorted."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        if e.at_import and e.target not in THIRD_PARTIES.values():
            graph.setdefault(e.source, set()).add(e.target)
            graph.setdefault(e.target, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1 or node in graph[node]:
                cycles.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(cycles)


def _cycle_report(cycles: list[list[str]], edges: list[Edge]) -> str:
    lines = []
    for group in cycles:
        lines.append(" <-> ".join(group) + ":")
        lines += [f"  {e.file}:{e.line}: {e.source} imports {e.target}" for e in edges
                  if e.at_import and e.source in group and e.target in group]
    return "\n".join(lines)


# --- the repository ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def layers() -> Layers:
    return read_layers(ARCHITECTURE.read_text())


@pytest.fixture(scope="module")
def edges() -> list[Edge]:
    return import_edges(SOURCE, "msreid")


def test_every_module_has_a_layer(layers):
    missing = unplaced(SOURCE, "msreid", layers)
    assert not missing, "\n".join(missing)


def test_no_import_goes_to_a_higher_layer(layers, edges):
    found = upward_edges(edges, layers, SOURCE, "msreid")
    assert not found, ("upward imports (docs/ARCHITECTURE.md: a file imports only from its own "
                       "layer or lower ones; move the code down or the import up):\n"
                       + "\n".join(found))


def test_ray_and_mlflow_only_in_their_layers(layers, edges):
    found = forbidden_third_parties(edges, layers)
    assert not found, "\n".join(found)


def test_no_import_time_cycle(edges):
    cycles = import_cycles(edges)
    assert not cycles, "import-time cycles (module-level imports):\n" + _cycle_report(cycles, edges)


def test_the_reader_sees_the_edges_it_must(edges):
    """A few edges known by reading the source: the checks above are not vacuous."""
    seen = {(e.source, e.target, e.how, e.at_import) for e in edges}
    assert ("msreid.train.loop", "msreid.train.session", "import", True) in seen
    assert ("msreid.cli", "msreid.train.cli", "named", False) in seen  # the command table
    assert ("msreid.train.pipeline", "ray", "import", True) in seen


# --- the checker itself, on small made-up packages --------------------------------------------

FAKE_TABLE = """# Architecture

## Layers

| layer | files | Ray, MLflow |
|---|---|---|
| 0 | `pkg/__init__.py`, `pkg/base.py` | neither |
| 1 | `pkg/low/` | neither |
| 2 | `pkg/high.py`, `pkg/ring_a.py`, `pkg/ring_b.py`, `pkg/lazy.py` | Ray |

## Next section
| 9 | `pkg/ignored.py` | Ray |
"""


def _tree(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    return root


def test_the_table_is_read_by_file_and_directory():
    layers = read_layers(FAKE_TABLE)
    assert layers.layer("pkg/base.py") == 0 and layers.layer("pkg/low/deep/x.py") == 1
    assert layers.layer("pkg/high.py") == 2 and layers.layer("pkg/ignored.py") is None
    assert layers.allowed == {0: frozenset(), 1: frozenset(), 2: frozenset({"ray"})}
    with pytest.raises(AssertionError, match="no '## Layers' section"):
        read_layers("# Architecture\n")


def test_the_checker_finds_upward_edges_forbidden_imports_and_cycles(tmp_path):
    src = _tree(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/base.py": "import os\n",
        "pkg/low/__init__.py": "",
        "pkg/low/mod.py": ("from pkg import base\n"
                           "import ray\n"  # layer 1 may not import Ray
                           "def later():\n"
                           "    from pkg.high import thing\n"  # upward, even inside a function
                           "    import importlib\n"
                           "    return importlib.import_module('pkg.high')\n"),
        "pkg/low/table.py": "HOOK = 'pkg.high:thing'\n",  # a module loaded by its name
        "pkg/high.py": "from pkg.low import mod\nthing = 1\n",
        "pkg/ring_a.py": "from pkg import ring_b\n",
        "pkg/ring_b.py": "from . import ring_a\n",  # relative: pkg.ring_a -> a cycle
        "pkg/lazy.py": "import pkg.high\n",
        "pkg/unlisted.py": "def f():\n    import pkg.lazy\n",
    })
    layers = read_layers(FAKE_TABLE)
    edges = import_edges(src, "pkg")
    assert upward_edges(edges, layers, src, "pkg") == [
        "pkg/low/mod.py:4: pkg.low.mod (layer 1) imports pkg.high (layer 2)",
        "pkg/low/mod.py:6: pkg.low.mod (layer 1) imports pkg.high (layer 2) [importlib]",
        "pkg/low/table.py:1: pkg.low.table (layer 1) imports pkg.high (layer 2) [named]"]
    assert forbidden_third_parties(edges, layers) == [
        "pkg/low/mod.py:2: pkg.low.mod (layer 1) imports ray, which docs/ARCHITECTURE.md's "
        "layer table does not allow there"]
    assert unplaced(src, "pkg", layers) == [
        "pkg/unlisted.py has no layer in docs/ARCHITECTURE.md's '## Layers' table: add it (or "
        "its directory) to the row of the layer it belongs to"]
    # high -> low.mod at import, low.mod -> high only when later() runs: no cycle there
    assert import_cycles(edges) == [["pkg.ring_a", "pkg.ring_b"]]
    assert "pkg/ring_b.py:1: pkg.ring_b imports pkg.ring_a" in _cycle_report(import_cycles(edges),
                                                                           edges)


def test_a_module_level_import_back_closes_a_cycle(tmp_path):
    src = _tree(tmp_path, {"pkg/__init__.py": "", "pkg/base.py": "",
                           "pkg/low/__init__.py": "", "pkg/low/mod.py": "import pkg.high\n",
                           "pkg/high.py": "from pkg.low.mod import x\n",
                           "pkg/ring_a.py": "import pkg.ring_a\n"})  # a module importing itself
    edges = import_edges(src, "pkg")
    assert import_cycles(edges) == [["pkg.high", "pkg.low.mod"]]  # self-import: no edge kept
