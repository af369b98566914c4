"""The model as JSON-ready dicts, and back: the platform-neutral serialised form of a snapshot.

`to_dict` walks any model record (pss_cli.record) or dataclass; `from_dict` is its strict inverse, driven by their
type hints, and
is meant for untrusted input (a snapshot read from another process): every value is type-checked, unknown and
missing keys are refused, sizes are bounded, and the only exception it raises is `errors.BadSnapshot`, whose
one-line message names the path of the offending field. The schema is documented in docs/snapshot-format.md.
"""

from __future__ import annotations

import enum
import json
import math
import re
import sys
import types
import typing
from typing import Any, TypeVar

from pss_cli import record
from pss_cli.errors import BadSnapshot
from pss_cli.model import SCHEMA_VERSION

__all__ = [
    "MAX_DEPTH",
    "MAX_INT",
    "MAX_ITEMS",
    "MAX_STRING",
    "MIN_INT",
    "SCHEMA_VERSION",
    "from_dict",
    "to_dict",
    "upgrade_snapshot",
]

T = TypeVar("T")

#: Most items in one JSON array or object.
MAX_ITEMS = 1_000_000
#: Longest string, in characters (a hex string for bytes counts two per byte).
MAX_STRING = 1 << 20
#: Deepest nesting accepted; the model itself is about six levels deep.
MAX_DEPTH = 32
#: Integers outside [MIN_INT, MAX_INT] cannot come from any field (registers are u64, offsets i64).
MIN_INT = -(1 << 63)
MAX_INT = (1 << 64) - 1

_HEX = re.compile(r"(?:[0-9a-f]{2})*")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


# --------------------------------------------------------------------------------------------------------- encode


def to_dict(obj: object) -> dict[str, Any]:
    """A model dataclass as a JSON-ready dict, keys in field order.

    IntFlag -> {"value": int, "names": [single-bit members set]}, other enums (IntEnum too) -> member name,
    bytes -> lowercase hex, tuples -> lists, and pair tuples (`environ`, `type_specific`, `registers`) -> objects.
    A pair tuple whose keys repeat (an environment may hold a name twice) stays a list of [key, value] lists, so
    nothing is lost. A non-finite float raises ValueError: JSON cannot carry it.
    """
    if not _is_dataclass_instance(obj):
        raise TypeError(f"to_dict takes a model dataclass, not {type(obj).__name__}")
    return _encode_dataclass(obj)


def to_json(value: object) -> Any:
    """Any model value (a dataclass, an enum or flag, a tuple, bytes) as JSON-ready data, by to_dict's rules."""
    return _encode(value)


def _is_model_class(cls: object) -> bool:
    """A record or a dataclass. No class is a dataclass where the dataclasses module was never imported, so a run
    that uses records only (a capture as JSON) does not import it here."""
    if record.is_record(cls):
        return True
    dataclasses = sys.modules.get("dataclasses")
    return dataclasses is not None and dataclasses.is_dataclass(cls)


def _is_dataclass_instance(obj: object) -> bool:
    return not isinstance(obj, type) and _is_model_class(type(obj))


def _declared_fields(cls: type) -> list[tuple[str, bool]]:
    """(name, required) of each field of a record or a dataclass, in order."""
    if record.is_record(cls):
        optional = record.defaults(cls)
        return [(name, name not in optional) for name in record.fields(cls)]
    import dataclasses

    return [
        (f.name, f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
        for f in dataclasses.fields(cls)
    ]


def _encode_dataclass(obj: Any) -> dict[str, Any]:
    pairs = _pair_fields(type(obj))
    out: dict[str, Any] = {}
    for name, _ in _declared_fields(type(obj)):
        value = getattr(obj, name)
        if name in pairs and isinstance(value, tuple):
            out[name] = _encode_pairs(value)
        else:
            out[name] = _encode(value)
    return out


def _encode_pairs(pairs: tuple[Any, ...]) -> dict[str, Any] | list[list[Any]]:
    keys = [key for key, _ in pairs]
    if len(set(keys)) == len(keys):
        return {key: _encode(value) for key, value in pairs}
    return [[key, _encode(value)] for key, value in pairs]


def _encode(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, enum.IntFlag):
        return {"value": int(value), "names": _flag_names(value)}
    if isinstance(value, enum.Enum):
        return value.name
    if isinstance(value, bool):
        return value
    if isinstance(value, str):
        return str(value)
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"cannot serialise the non-finite float {value!r}")
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    if isinstance(value, (tuple, list)):
        return [_encode(item) for item in value]
    if _is_dataclass_instance(value):
        return _encode_dataclass(value)
    raise TypeError(f"cannot serialise a {type(value).__name__}")


def _flag_names(value: enum.IntFlag) -> list[str]:
    """Names of the single-bit members set in `value`, in definition order (aliases and composites left out)."""
    names: list[str] = []
    for member in type(value).__members__.values():
        bit = int(member)
        if bit and bit & (bit - 1) == 0 and int(value) & bit and member.name is not None:
            names.append(member.name)
    return names


# --------------------------------------------------------------------------------------------------------- decode


@record.record
class _FieldSpec:
    name: str
    type: Any
    required: bool
    pairs: bool


_FIELDS: dict[type, tuple[_FieldSpec, ...]] = {}


def _fields_of(cls: type) -> tuple[_FieldSpec, ...]:
    """The fields of a model record or dataclass with their resolved type hints, computed once per class."""
    cached = _FIELDS.get(cls)
    if cached is not None:
        return cached
    hints = typing.get_type_hints(cls)
    specs = [
        _FieldSpec(name, hints[name], required, _is_pairs_type(hints[name])) for name, required in _declared_fields(cls)
    ]
    _FIELDS[cls] = tuple(specs)
    return _FIELDS[cls]


def _pair_fields(cls: type) -> frozenset[str]:
    return frozenset(spec.name for spec in _fields_of(cls) if spec.pairs)


def _is_pairs_type(tp: Any) -> bool:
    """tuple[tuple[str, X], ...], optionally `| None`: a name/value list that JSON carries as an object."""
    args = [a for a in typing.get_args(tp) if a is not type(None)] if _is_union(tp) else [tp]
    if len(args) != 1 or typing.get_origin(args[0]) is not tuple:
        return False
    inner = typing.get_args(args[0])
    if len(inner) != 2 or inner[1] is not Ellipsis or typing.get_origin(inner[0]) is not tuple:
        return False
    item = typing.get_args(inner[0])
    return len(item) == 2 and item[0] is str


def _is_union(tp: Any) -> bool:
    return typing.get_origin(tp) in (typing.Union, types.UnionType)


def upgrade_snapshot(data: object, schema_version: int) -> object:
    """A snapshot's JSON written under an older model schema, in today's terms (docs/snapshot-format.md, section 4).

    Schema 1 to 2: a Linux thread's `base_priority` held its nice value, which moves to `nice`; its base priority is
    the kernel priority that `priority` holds. Its notes were rendered before the memory was copied, so their
    `failed_pages` (always 0) was never measured: null. Anything not shaped as expected is left for from_dict to
    refuse.
    """
    if schema_version != 1 or not isinstance(data, dict):
        return data
    out = dict(data)
    threads = out.get("threads")
    if out.get("platform") == "linux" and isinstance(threads, list):
        out["threads"] = [_thread_from_schema_1(t) for t in threads]
    memory = out.get("memory")
    if isinstance(memory, dict) and "failed_pages" in memory:
        out["memory"] = {**memory, "failed_pages": None}
    return out


def _thread_from_schema_1(thread: object) -> object:
    if not isinstance(thread, dict) or "nice" in thread:
        return thread
    return {**thread, "base_priority": thread.get("priority"), "nice": thread.get("base_priority")}


def from_dict(cls: type[T], data: object, *, what: str = "snapshot") -> T:
    """Rebuild a model dataclass from what `to_dict` made, treating `data` as hostile.

    Raises only BadSnapshot, e.g. "snapshot field threads[3].context.registers.rip: expected an integer".
    `what` names the document in that message.
    """
    if not _is_model_class(cls):
        raise TypeError(f"from_dict takes a model dataclass, not {cls!r}")
    decoder = _Decoder(what)
    try:
        return typing.cast(T, decoder.dataclass(cls, data, "", 0))
    except RecursionError:
        raise BadSnapshot(f"{what}: nested too deeply") from None


class _Decoder:
    def __init__(self, what: str) -> None:
        self.what = what

    def fail(self, path: str, problem: str) -> BadSnapshot:
        where = f"{self.what} field {path}" if path else self.what
        return BadSnapshot(f"{where}: {problem}")

    def value(self, tp: Any, data: object, path: str, depth: int, *, pairs: bool = False) -> Any:
        if depth > MAX_DEPTH:
            raise self.fail(path, f"nested deeper than {MAX_DEPTH} levels")
        if tp is type(None):
            if data is not None:
                raise self.fail(path, f"expected null, got {_kind(data)}")
            return None
        if _is_union(tp):
            return self.union(tp, data, path, depth, pairs=pairs)
        if tp is bool:
            if type(data) is not bool:
                raise self.fail(path, f"expected true or false, got {_kind(data)}")
            return data
        if tp is int:
            return self.integer(data, path)
        if tp is float:
            if type(data) not in (int, float):
                raise self.fail(path, f"expected a number, got {_kind(data)}")
            try:
                number = float(typing.cast(float, data))
            except OverflowError:
                raise self.fail(path, "number out of range") from None
            if not math.isfinite(number):
                raise self.fail(path, "expected a finite number")
            return number
        if tp is str:
            return self.string(data, path)
        if tp is bytes:
            text = self.string(data, path, expected="a hex string")
            if not _HEX.fullmatch(text):
                raise self.fail(path, "expected an even-length lowercase hex string")
            return bytes.fromhex(text)
        if isinstance(tp, type) and issubclass(tp, enum.IntFlag):
            return self.int_flag(tp, data, path)
        if isinstance(tp, type) and issubclass(tp, enum.Enum):
            name = self.string(data, path, expected=f"a {tp.__name__} name")
            member = tp.__members__.get(name)
            if member is None:
                raise self.fail(path, f"unknown {tp.__name__} {_quote(name)}")
            return member
        if typing.get_origin(tp) is tuple:
            if pairs:
                return self.pairs(tp, data, path, depth)
            return self.sequence(tp, data, path, depth)
        if isinstance(tp, type) and _is_model_class(tp):
            return self.dataclass(tp, data, path, depth)
        raise TypeError(f"from_dict cannot decode type {tp!r}")

    def union(self, tp: Any, data: object, path: str, depth: int, *, pairs: bool) -> Any:
        options = typing.get_args(tp)
        if data is None:
            if type(None) in options:
                return None
            raise self.fail(path, "expected a value, got null")
        concrete = [o for o in options if o is not type(None)]
        if len(concrete) == 1:
            return self.value(concrete[0], data, path, depth, pairs=pairs)
        for option in concrete:
            if _shallow_match(option, data):
                return self.value(option, data, path, depth, pairs=pairs)
        names = " or ".join(_type_word(o) for o in concrete)
        raise self.fail(path, f"expected {names}, got {_kind(data)}")

    def integer(self, data: object, path: str) -> int:
        if type(data) is not int:
            raise self.fail(path, f"expected an integer, got {_kind(data)}")
        if not MIN_INT <= data <= MAX_INT:
            raise self.fail(path, "integer out of range")
        return data

    def string(self, data: object, path: str, *, expected: str = "a string") -> str:
        if type(data) is not str:
            raise self.fail(path, f"expected {expected}, got {_kind(data)}")
        if len(data) > MAX_STRING:
            raise self.fail(path, f"string longer than {MAX_STRING} characters")
        return data

    def int_flag(self, tp: type[enum.IntFlag], data: object, path: str) -> enum.IntFlag:
        if type(data) is not dict:
            raise self.fail(path, f"expected an object {{value, names}}, got {_kind(data)}")
        if set(data) != {"value", "names"}:
            raise self.fail(path, "expected exactly the keys value and names")
        value = self.integer(data["value"], _join(path, "value"))
        known = 0
        for member in tp.__members__.values():
            known |= int(member)
        if value < 0 or value & ~known:
            raise self.fail(_join(path, "value"), f"bits {value & ~known:#x} are not {tp.__name__} members")
        flag = tp(value)
        names = data["names"]
        if type(names) is not list or any(type(n) is not str for n in names) or names != _flag_names(flag):
            raise self.fail(_join(path, "names"), f"does not match value {value:#x}")
        return flag

    def sequence(self, tp: Any, data: object, path: str, depth: int) -> tuple[Any, ...]:
        items = self.array(data, path)
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(self.value(args[0], item, f"{path}[{i}]", depth + 1) for i, item in enumerate(items))
        if len(items) != len(args):
            raise self.fail(path, f"expected {len(args)} items, got {len(items)}")
        return tuple(
            self.value(a, item, f"{path}[{i}]", depth + 1) for i, (a, item) in enumerate(zip(args, items, strict=True))
        )

    def pairs(self, tp: Any, data: object, path: str, depth: int) -> tuple[tuple[str, Any], ...]:
        value_type = typing.get_args(typing.get_args(tp)[0])[1]
        if type(data) is dict:
            if len(data) > MAX_ITEMS:
                raise self.fail(path, f"more than {MAX_ITEMS} entries")
            return tuple(
                (self.string(key, path), self.value(value_type, value, _join(path, key), depth + 1))
                for key, value in data.items()
            )
        # The list form is what to_dict writes when a key repeats.
        items = self.array(data, path, expected="an object")
        out = []
        for i, item in enumerate(items):
            where = f"{path}[{i}]"
            if type(item) is not list or len(item) != 2:
                raise self.fail(where, "expected a [name, value] pair")
            key = self.string(item[0], where)
            out.append((key, self.value(value_type, item[1], _join(path, key), depth + 1)))
        return tuple(out)

    def array(self, data: object, path: str, *, expected: str = "an array") -> list[Any]:
        if type(data) is not list:
            raise self.fail(path, f"expected {expected}, got {_kind(data)}")
        if len(data) > MAX_ITEMS:
            raise self.fail(path, f"more than {MAX_ITEMS} items")
        return data

    def dataclass(self, cls: type, data: object, path: str, depth: int) -> object:
        if type(data) is not dict:
            raise self.fail(path, f"expected an object, got {_kind(data)}")
        specs = _fields_of(cls)
        known = {spec.name for spec in specs}
        for key in data:
            if key not in known:
                raise self.fail(_join(path, str(key)), "unknown field (written by a newer pss-dup?)")
        kwargs: dict[str, Any] = {}
        for spec in specs:
            where = _join(path, spec.name)
            if spec.name not in data:
                if spec.required:
                    raise self.fail(where, "missing")
                continue
            kwargs[spec.name] = self.value(spec.type, data[spec.name], where, depth + 1, pairs=spec.pairs)
        return cls(**kwargs)


def _shallow_match(tp: Any, data: object) -> bool:
    """Whether `data` has the JSON kind that type `tp` is written as; picks the branch of a union."""
    if tp is int:
        return type(data) is int
    if tp is float:
        return type(data) in (int, float)
    if tp is bool:
        return type(data) is bool
    if tp in (str, bytes) or (isinstance(tp, type) and issubclass(tp, enum.Enum) and not issubclass(tp, enum.IntFlag)):
        return type(data) is str
    if typing.get_origin(tp) is tuple:
        return type(data) is list
    return type(data) is dict


def _type_word(tp: Any) -> str:
    return {int: "an integer", float: "a number", str: "a string", bool: "true or false"}.get(tp, "an object")


def _kind(data: object) -> str:
    return {
        type(None): "null",
        bool: "a boolean",
        int: "an integer",
        float: "a number",
        str: "a string",
        list: "an array",
        dict: "an object",
    }.get(type(data), type(data).__name__)


def _quote(text: str) -> str:
    """A name from untrusted input, fit for a one-line message: JSON-escaped and cut short."""
    if len(text) > 40:
        text = text[:40] + "..."
    return json.dumps(text)


def _join(path: str, key: str) -> str:
    if _IDENT.fullmatch(key) and len(key) <= 40:
        return f"{path}.{key}" if path else key
    return f"{path}[{_quote(key)}]"
