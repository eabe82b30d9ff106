"""Writing the hook's bundle (its layout: :mod:`abiguard._hookpath`, which the bundle also
carries, as its loader): the static import closure of :data:`ROOTS`, each module compiled
lean (no docstrings, annotations or type-checking blocks), behind an index of offsets,
sizes and source stamps. Runs at install, upgrade and daemon-hook time; never on the
hook's path.
"""
from __future__ import annotations

import marshal

from ._hookpath import RELPATH, header, open_index

PACKAGE = "abiguard"

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

#: what the qemu hook imports first; the bundle holds everything these can import
ROOTS = ("abiguard.hook.protocol",)
#: names whose behaviour depends on annotations, which the bundle's lean code lacks
_READS_ANNOTATIONS = frozenset({"dataclass", "dataclasses", "NamedTuple", "TypedDict", "__annotations__",
                                "get_type_hints", "get_annotations"})
__all__ = ["RELPATH", "ROOTS", "current", "write"]


def current(path: str, package_dir: str | None = None) -> bool:
    """Whether the bundle at ``path`` is whole, this interpreter's, carries this package's
    loader, and was made from the sources now on disk."""
    import os

    from ._hookpath import _part

    try:
        opened = open_index(path)
    except Exception:
        return False
    if opened is None:
        return False
    fd, index = opened
    try:
        loader, _at = _part(fd, len(header()))
        if loader != _loader(package_dir or os.path.dirname(os.path.abspath(__file__))):
            return False
        for origin, _p, _o, _l, size, mtime in index.values():
            st = os.stat(origin)
            if st.st_size != size or st.st_mtime_ns != mtime:
                return False
        return True
    except Exception:
        return False
    finally:
        os.close(fd)


def _loader(package_dir: str) -> bytes:
    """The loader the bundle carries: abiguard/_hookpath.py, compiled lean."""
    import ast
    import os

    path = os.path.join(package_dir, "_hookpath.py")
    with open(path, "rb") as f:
        return marshal.dumps(compile(_lean(ast.parse(f.read(), path)), path, "exec", dont_inherit=True))


def _module_name(package_dir: str, source: str) -> str:
    import os

    rel = os.path.relpath(source, package_dir)[:-3].split(os.sep)
    if rel[-1] == "__init__":
        rel = rel[:-1]
    return ".".join([PACKAGE, *rel])


def _lean(tree: Any) -> Any:
    """The module as the hook runs it: minus docstrings, annotations, ``if TYPE_CHECKING:``
    blocks and the ``from __future__`` line. Under that line every annotation is a string
    nothing on the hook's path reads, so dropping them changes no behaviour, only how
    much there is to unmarshal and execute."""
    import ast

    def strip_docstring(body: list[Any]) -> list[Any]:
        first = body[0] if body else None
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            return body[1:]
        return body

    class Lean(ast.NodeTransformer):
        scope = "module"

        def _scoped(self, node: Any, scope: str) -> Any:
            node.body = strip_docstring(node.body)
            outer, self.scope = self.scope, scope
            self.generic_visit(node)
            self.scope = outer
            return node

        def visit_Module(self, node: Any) -> Any:
            return self._scoped(node, "module")

        def visit_ClassDef(self, node: Any) -> Any:
            return self._scoped(node, "class")

        def visit_FunctionDef(self, node: Any) -> Any:
            node.returns = None
            a = node.args
            for arg in [*a.posonlyargs, *a.args, *a.kwonlyargs, a.vararg, a.kwarg]:
                if arg is not None:
                    arg.annotation = None
            return self._scoped(node, "function")

        visit_AsyncFunctionDef = visit_FunctionDef

        def visit_AnnAssign(self, node: Any) -> Any:
            if node.value is not None:
                return ast.copy_location(ast.Assign(targets=[node.target], value=node.value), node)
            # a bare declaration does nothing at runtime, except make a name local to a function
            return node if self.scope == "function" else None

        def visit_If(self, node: Any) -> Any:
            if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING" and not node.orelse:
                return None
            return self.generic_visit(node)

        def visit_ImportFrom(self, node: Any) -> Any:
            return None if node.module == "__future__" else node

    tree = Lean().visit(tree)
    for node in ast.walk(tree):         # a block left empty still needs a statement
        body = getattr(node, "body", None)
        if isinstance(body, list) and not body:
            body.append(ast.Pass())
    return ast.fix_missing_locations(tree)


def _absolute(package: str, module: str | None, level: int) -> str:
    """The absolute name an ``ImportFrom`` in ``package`` refers to."""
    base = module or ""
    if level:
        parts = package.split(".")
        up = parts[:len(parts) - (level - 1)]
        base = ".".join(up + ([base] if base else []))
    return base


def _imports(tree: Any, name: str, is_package: bool) -> set[str]:
    """Every module of the package this module can import, wherever the import statement
    sits (the hook imports lazily, inside functions)."""
    import ast

    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _absolute(package, node.module, node.level)
            found.add(base)
            found.update(f"{base}.{a.name}" for a in node.names)   # from pkg import module
    return {m for m in found if m == PACKAGE or m.startswith(PACKAGE + ".")}


def write(path: str, package_dir: str | None = None) -> str:
    """Compile the hook's import closure into one bundle at ``path`` (atomically)."""
    import __future__

    import ast
    import os

    from .model.profile import atomic_write

    package_dir = package_dir or os.path.dirname(os.path.abspath(__file__))
    sources: dict[str, tuple[str, bool]] = {}
    for dirpath, dirnames, filenames in os.walk(package_dir):
        dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
        for fname in sorted(filenames):
            if fname.endswith(".py"):
                source = os.path.join(dirpath, fname)
                sources[_module_name(package_dir, source)] = (source, fname == "__init__.py")
    # the loader is in the index too, so a changed loader makes the bundle stale
    wanted = [r for r in (*ROOTS, "abiguard._hookpath") if r in sources]
    trees: dict[str, tuple[Any, bytes, os.stat_result]] = {}
    while wanted:
        name = wanted.pop()
        if name in trees or name not in sources:
            continue
        source, is_package = sources[name]
        with open(source, "rb") as f:
            st = os.fstat(f.fileno())
            text = f.read()
        tree = ast.parse(text, source)
        trees[name] = (tree, text, st)
        parents = [".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1)]
        wanted += parents + sorted(_imports(tree, name, is_package))
    for name, (tree, _text, _st) in trees.items():
        used: set[str] = set()
        for n in ast.walk(tree):
            if isinstance(n, ast.Name):
                used.add(n.id)
            elif isinstance(n, ast.Attribute):
                used.add(n.attr)
            elif isinstance(n, (ast.Import, ast.ImportFrom)):
                used.update(part for a in n.names for part in a.name.split("."))
                used.update((getattr(n, "module", None) or "").split("."))
        if used & _READS_ANNOTATIONS:
            # _lean drops annotations: a module that reads them would change behaviour
            raise RuntimeError(f"{name} uses {', '.join(sorted(used & _READS_ANNOTATIONS))}, which read "
                               "annotations the hook's bundle drops; keep it off the hook's path")
    flags = __future__.annotations.compiler_flag
    index: dict[str, tuple[str, bool, int, int, int, int]] = {}
    blobs: list[bytes] = []
    offset = 0
    for name in sorted(trees):
        tree, _text, st = trees[name]
        source, is_package = sources[name]
        code = compile(_lean(tree), source, "exec", flags=flags, dont_inherit=True)
        blob = marshal.dumps(code)
        index[name] = (source, is_package, offset, len(blob), st.st_size, st.st_mtime_ns)
        blobs.append(blob)
        offset += len(blob)
    loader = _loader(package_dir)
    head = header() + len(loader).to_bytes(4, "little") + loader
    # offsets so far count from the first blob; marshal writes every int below 2**31 in
    # five bytes, so shifting them past the index does not change the index's size
    start = len(head) + 4 + len(marshal.dumps((0, index)))
    index = {n: (s, p, o + start, size, sz, mt) for n, (s, p, o, size, sz, mt) in index.items()}
    raw = marshal.dumps((start + offset, index))
    if len(head) + 4 + len(raw) != start:
        raise RuntimeError("the bundle's index changed size when its offsets were shifted")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    atomic_write(path, head + len(raw).to_bytes(4, "little") + raw + b"".join(blobs), 0o644)
    return path
