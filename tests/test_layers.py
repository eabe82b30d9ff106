"""plugin/abiguard's top-level packages in one-way layers (issue 21).

:data:`LAYERS` names every top-level package and root module of plugin/abiguard, lowest
first. A module may import its own package and anything in a lower layer; an import of a
higher layer fails this test with its place (``module:line -> target``), and so does an
import circle between top-level packages (one always contains such an import; it is
listed to show which packages it joins).

Imports are read from the source (``ast``), wherever they sit: at module level and inside
functions and methods, since a lazy import is still a run-time dependency. Imports under
``if TYPE_CHECKING:`` are skipped: they never run (several modules set ``TYPE_CHECKING =
False`` themselves so that the hook need not import typing), and annotations that name a
higher layer are not dependencies. A module loaded by name (``__import__``,
``importlib``) would be a dependency this scan cannot see, so outside the arch registry,
which loads the plugins that way, none may be.

The data path reads one way: the models at the bottom (with the small vocabulary they
share with the arch plugins: problems, pins, XML names, the table of plugins), the arch
plugins over them, the engine over those, then what reads and writes domains and hosts
(xml, probe), the fleet, the hook (its daemon hook publishes to the fleet), the
installer, the commands, the command line. The models reach the arch plugins through
``abiguard.model.arches``, which :mod:`abiguard.arch` fills when it is imported;
``abiguard/__init__.py`` imports it, so it sits on top of every layer.
"""
from __future__ import annotations

import ast
from pathlib import Path

PLUGIN = Path(__file__).resolve().parents[1] / "plugin" / "abiguard"

#: lowest first; a root module is named by its file name without ``.py``
LAYERS = (
    "version",      # root module: __version__
    "errors",       # root module: the error tree and the exit codes
    "state",        # root module: where abiguard keeps things on a host, the hook's log and markers
    "preload",      # the preload library's paths, limits and build
    "builtin",      # root module: the bundled host profiles
    "connection",   # root module: libvirt connections
    "uapi",         # Linux's KVM user API: the ioctls, the arm64 register id layout
    "model",        # what crosses the boundary, and the vocabulary the layers above share
    "arch",         # the arch plugins and their registry (arch.get)
    "engine",       # verdicts, baselines, reports
    "xml",          # domain XML: the hook's reader, the contract's XML form, pin's edits
    "probe",        # the generic probe
    "fleet",        # the fleet directory and the answers over it
    "hook",         # the libvirt hooks
    "install",      # abiguard install: the hook shims
    "commands",     # one module per subcommand
    "cli",          # the command line
    "__main__",     # python -m abiguard
    "__init__",     # the package's front door, which wires the arch plugins into the models
)
#: the modules that may load a module by name: the arch registry, which loads its plugins
DYNAMIC_IMPORTS = {"abiguard.arch"}


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _absolute(package: str, level: int, module: str | None) -> str:
    """``from <level dots><module> import ...`` read in ``package``, as an absolute name."""
    parts = package.split(".")
    if level:
        parts = parts[:len(parts) - level + 1]
    else:
        parts = []
    return ".".join(parts + ([module] if module else []))


def imports(source: str, module: str, is_package: bool) -> list[tuple[int, str]]:
    """(line, absolute name) of every run-time import in a module's source: for
    ``from X import a`` the name ``X.a`` (a submodule or an attribute of ``X``), for
    ``import X`` the name ``X``; ``if TYPE_CHECKING:`` blocks are skipped (their ``else:``
    is not). ``__import__(...)`` and ``importlib.import_module(...)`` calls are reported
    as the name ``<dynamic>``."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[tuple[int, str]] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for other in child.orelse:
                    visit_one(other)
                continue
            visit_one(child)

    def visit_one(node: ast.AST) -> None:
        if isinstance(node, ast.Import):
            found.extend((node.lineno, a.name) for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(package, node.level, node.module)
            found.extend((node.lineno, base if a.name == "*" else f"{base}.{a.name}") for a in node.names)
        elif isinstance(node, ast.Call) and (
                (isinstance(node.func, ast.Name) and node.func.id == "__import__")
                or (isinstance(node.func, ast.Attribute) and node.func.attr == "import_module")):
            found.append((node.lineno, "<dynamic>"))
        visit(node)

    visit(ast.parse(source))
    return found


def top_level(name: str, tops: set[str]) -> str | None:
    """The top-level package or root module of plugin/abiguard a dotted name is in (an
    attribute of the package itself: ``__init__``); None outside abiguard."""
    parts = name.split(".")
    if parts[0] != "abiguard":
        return None
    if len(parts) == 1 or parts[1] not in tops:
        return "__init__"
    return parts[1]


def _modules() -> list[tuple[str, Path, bool]]:
    out = []
    for path in sorted(PLUGIN.rglob("*.py")):
        rel = path.relative_to(PLUGIN.parent).with_suffix("")
        parts = list(rel.parts)
        is_package = parts[-1] == "__init__"
        if is_package:
            parts.pop()
        out.append((".".join(parts), path, is_package))
    return out


def _tops() -> set[str]:
    return {p.stem if p.is_file() else p.name for p in PLUGIN.iterdir()
            if (p.is_file() and p.suffix == ".py") or (p / "__init__.py").is_file()}


def _edges() -> list[tuple[str, str, str]]:
    """(from top-level, to top-level, ``module:line -> target``) of every import that
    crosses a top-level boundary; dynamic imports as (top-level, ``<dynamic>``, where)."""
    tops = _tops()
    out = []
    for module, path, is_package in _modules():
        src = top_level(module, tops)
        assert src is not None
        for line, target in imports(path.read_text(), module, is_package):
            if target == "<dynamic>":
                out.append((src, target, f"{module}:{line} loads a module by name"))
                continue
            dst = top_level(target, tops)
            if dst is not None and dst != src:
                out.append((src, dst, f"{module}:{line} -> {target}"))
    return out


def _cycles(edges: set[tuple[str, str]]) -> list[list[str]]:
    """The strongly connected groups of more than one package (Tarjan)."""
    graph: dict[str, set[str]] = {}
    for a, b in edges:
        graph.setdefault(a, set()).add(b)
        graph.setdefault(b, set())
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def connect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                connect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            connect(v)
    return groups


def test_the_table_names_every_top_level_package_once() -> None:
    tops = _tops() | {"__init__"}
    assert len(set(LAYERS)) == len(LAYERS), "a name appears twice in LAYERS"
    assert not tops - set(LAYERS), f"place these in LAYERS: {sorted(tops - set(LAYERS))}"
    assert not set(LAYERS) - tops, f"LAYERS names what plugin/abiguard lacks: {sorted(set(LAYERS) - tops)}"


def test_packages_import_only_lower_layers() -> None:
    rank = {name: i for i, name in enumerate(LAYERS)}
    edges = _edges()
    upward = [f"{where}  ({src} imports {dst}, a higher layer)" for src, dst, where in edges
              if dst != "<dynamic>" and rank.get(dst, -1) > rank.get(src, len(LAYERS))]
    dynamic = [where for src, dst, where in edges
               if dst == "<dynamic>" and not any(where.startswith(m + ":") for m in DYNAMIC_IMPORTS)]
    cycles = _cycles({(src, dst) for src, dst, _ in edges if dst != "<dynamic>"})
    problems = upward + [f"{where} (only {', '.join(sorted(DYNAMIC_IMPORTS))} may)" for where in dynamic]
    problems += ["import circle: " + " <-> ".join(group) for group in cycles]
    assert not problems, ("imports against the layers (lowest first: " + ", ".join(LAYERS) + "):\n"
                          + "\n".join(problems))


def test_the_walker_on_synthetic_sources() -> None:
    """the scan itself: each shape of import it must see, and what it must skip"""
    source = (
        "from __future__ import annotations\n"                            # 1
        "import os\n"                                                      # 2
        "from . import fields\n"                                           # 3
        "from ..arch import get as g, NAMES\n"                             # 4
        "from .. import __version__\n"                                     # 5
        "TYPE_CHECKING = False\n"                                          # 6
        "if TYPE_CHECKING:\n"                                              # 7
        "    from ..engine.verdict import check\n"                         # 8
        "else:\n"                                                          # 9
        "    from ...outside import x\n"                                   # 10
        "def f():\n"                                                       # 11
        "    import abiguard.fleet.store\n"                                # 12
        "    class C:\n"                                                   # 13
        "        def m(self):\n"                                           # 14
        "            from ..hook import state\n"                           # 15
        "    return __import__('abiguard.arch.x86', fromlist=['ARCH'])\n"  # 16
        "if typing.TYPE_CHECKING:\n"                                       # 17
        "    import abiguard.commands\n"                                   # 18
    )
    found = imports(source, "abiguard.model.profile", is_package=False)
    assert found == [
        (1, "__future__.annotations"), (2, "os"), (3, "abiguard.model.fields"), (4, "abiguard.arch.get"),
        (4, "abiguard.arch.NAMES"), (5, "abiguard.__version__"), (10, "outside.x"),
        (12, "abiguard.fleet.store"), (15, "abiguard.hook.state"), (16, "<dynamic>"),
    ]
    # a package's own __init__ is its package: one dot is itself
    assert imports("from . import base\nfrom .. import errors\n", "abiguard.arch", is_package=True) == [
        (1, "abiguard.arch.base"), (2, "abiguard.errors")]
    assert imports("from ...uapi import kvm\n", "abiguard.arch.arm64.probe", is_package=False) == [
        (1, "abiguard.uapi.kvm")]
    tops = {"arch", "model", "errors", "uapi"}
    assert [top_level(n, tops) for n in ("abiguard.arch.get", "abiguard.errors", "abiguard.__version__",
                                         "abiguard", "os.path")] == ["arch", "errors", "__init__", "__init__", None]


def test_the_cycle_finder() -> None:
    assert _cycles({("a", "b"), ("b", "c"), ("c", "a"), ("c", "d"), ("d", "e")}) == [["a", "b", "c"]]
    assert _cycles({("a", "b"), ("b", "c")}) == []
