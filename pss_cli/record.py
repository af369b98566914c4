"""`@record`: a dataclass(frozen=True, slots=True) that costs next to nothing to define.

Scripts call pss-dup in loops. On Python 3.11 each `@dataclass(frozen=True, slots=True)` compiles six methods when
its module is imported (about 1 ms a class on a busy 2-core host) and the dataclasses module brings `inspect` with
it: together more than a `capture PID -o json` spends on its own work. A record is the same thing at run time:
slots; an __init__ taking the fields by position or keyword, with their defaults, then __post_init__; the
dataclass's __repr__, __eq__ and __hash__; immutability (dataclasses.FrozenInstanceError); __match_args__; pickling.
The methods are shared, not compiled per class, except __init__, which a class compiles (the one a dataclass would
have) when it makes its first instance: a capture makes thousands of some records, and only the classes a run uses
pay for it. `dataclasses.fields`, `replace`, `asdict` and `is_dataclass` take records too; the first of them to look
at a record class builds its dataclass fields then. Type checkers see a dataclass (dataclass_transform).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar, dataclass_transform, overload

T = TypeVar("T")

#: The attributes of a record class: its field names in order, the defaults of those that have one, frozen or not.
FIELDS = "__record_fields__"
DEFAULTS = "__record_defaults__"
FROZEN = "__record_frozen__"
#: Where the dataclasses module looks for a class's fields.
DATACLASS_FIELDS = "__dataclass_fields__"


def is_record(obj: object) -> bool:
    """Whether `obj` is a record class or a record."""
    return hasattr(obj, FIELDS)


def fields(obj: object) -> tuple[str, ...]:
    """The field names of a record class or record, in definition order."""
    names: tuple[str, ...] = getattr(obj, FIELDS)
    return names


def defaults(obj: object) -> dict[str, Any]:
    """The default value of each field of a record class or record that has one."""
    found: dict[str, Any] = getattr(obj, DEFAULTS)
    return dict(found)


def replace(obj: T, /, **changes: Any) -> T:
    """A copy of the record `obj` with `changes` (as dataclasses.replace)."""
    values = {name: getattr(obj, name) for name in fields(obj)}
    values.update(changes)
    return type(obj)(**values)


class _DataclassFields:
    """A record class's `__dataclass_fields__`, built on first use from a plain dataclass with the record's
    annotations and defaults, so that the dataclasses module's functions take records."""

    def __get__(self, obj: object, owner: type) -> dict[str, Any]:
        import dataclasses

        annotations = owner.__annotations__
        body = {"__module__": owner.__module__, "__annotations__": {n: annotations[n] for n in fields(owner)}}
        shadow: type = dataclasses.dataclass(frozen=getattr(owner, FROZEN))(
            type(owner.__name__, (), {**body, **defaults(owner)})
        )
        built = {f.name: f for f in dataclasses.fields(shadow)}
        setattr(owner, DATACLASS_FIELDS, built)  # from now on a plain class attribute
        return built


def _init(self: Any, *args: Any, **kwargs: Any) -> None:
    """The first instance of a record class compiles the class's own __init__, and is made by it."""
    cls = type(self)
    init = _compiled_init(cls)
    cls.__init__ = init
    init(self, *args, **kwargs)


def _compiled_init(cls: type) -> Callable[..., None]:
    """The __init__ a frozen dataclass has: a parameter per field with its default, object.__setattr__ for each."""
    names = fields(cls)
    given = defaults(cls)
    params = "".join(f", {name}=_defaults[{name!r}]" if name in given else f", {name}" for name in names)
    body = "".join(f"\n    _set(self, {name!r}, {name})" for name in names)
    body += "\n    self.__post_init__()" if hasattr(cls, "__post_init__") else "\n    pass"
    namespace: dict[str, Any] = {}
    exec(f"def __init__(self{params}):{body}\n", {"_set": object.__setattr__, "_defaults": given}, namespace)
    init: Callable[..., None] = namespace["__init__"]
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    return init


def _values(self: object) -> tuple[Any, ...]:
    return tuple(getattr(self, name) for name in fields(self))


def _repr(self: object) -> str:
    shown = ", ".join(f"{name}={getattr(self, name)!r}" for name in fields(self))
    return f"{type(self).__qualname__}({shown})"


def _eq(self: object, other: object) -> Any:
    if other.__class__ is self.__class__:
        return _values(self) == _values(other)
    return NotImplemented


def _hash(self: object) -> int:
    return hash(_values(self))


def _frozen_setattr(self: object, name: str, value: object) -> None:
    import dataclasses

    raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")


def _frozen_delattr(self: object, name: str) -> None:
    import dataclasses

    raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")


def _getstate(self: object) -> list[Any]:
    return list(_values(self))


def _setstate(self: object, state: list[Any]) -> None:
    for name, value in zip(fields(self), state, strict=True):
        object.__setattr__(self, name, value)


def _make(cls: type, frozen: bool) -> type:
    """The class again, with slots and the record's methods (a class's slots are fixed when it is made)."""
    if any(is_record(base) for base in cls.__mro__[1:]):
        raise TypeError(f"{cls.__qualname__}: a record does not inherit from a record")
    # The class's own annotations, as strings (from __future__ import annotations): inspect.get_annotations would
    # import inspect, which records exist to spare.
    annotations: dict[str, Any] = cls.__dict__.get("__annotations__", {})  # noqa: RUF063
    names = tuple(name for name, kind in annotations.items() if not str(kind).startswith(("ClassVar", "typing.")))
    found = {name: cls.__dict__[name] for name in names if name in cls.__dict__}
    for i, name in enumerate(names):
        if name not in found and any(earlier in found for earlier in names[:i]):
            raise TypeError(f"non-default argument {name!r} follows default argument")
        if name in found and type(found[name]).__hash__ is None:
            raise ValueError(f"mutable default {type(found[name])} for field {name} is not allowed")
    namespace = {key: value for key, value in cls.__dict__.items() if key not in (*names, "__dict__", "__weakref__")}
    namespace.update(
        {
            "__slots__": names,
            FIELDS: names,
            DEFAULTS: found,
            FROZEN: frozen,
            DATACLASS_FIELDS: _DataclassFields(),
            "__match_args__": names,
            "__init__": _init,
            "__repr__": _repr,
            "__eq__": _eq,
            "__getstate__": _getstate,
            "__setstate__": _setstate,
        }
    )
    if frozen:
        namespace.update(__hash__=_hash, __setattr__=_frozen_setattr, __delattr__=_frozen_delattr)
    else:
        namespace["__hash__"] = None  # as a dataclass with eq and without frozen: unhashable
    made: type = type(cls)(cls.__name__, cls.__bases__, namespace)
    made.__qualname__ = cls.__qualname__
    return made


@overload
def record(cls: type[T], /) -> type[T]: ...
@overload
def record(*, frozen: bool = True) -> Callable[[type[T]], type[T]]: ...
@dataclass_transform(frozen_default=True)
def record(cls: type[T] | None = None, /, *, frozen: bool = True) -> type[T] | Callable[[type[T]], type[T]]:
    """Make `cls` a record: `@record` (frozen) or `@record(frozen=False)` (fields may be assigned)."""
    if cls is None:
        return lambda inner: _make(inner, frozen)
    return _make(cls, frozen)
