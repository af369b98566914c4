"""A record (pss_cli.record) is, at run time, the frozen slotted dataclass it replaces: every model record is held
against a real dataclass made from the same annotations and defaults."""

from __future__ import annotations

import dataclasses
import pickle
from collections.abc import Callable
from typing import Any

import pytest

from pss_cli import model, record

MODEL_RECORDS = sorted(
    (cls for cls in vars(model).values() if isinstance(cls, type) and record.is_record(cls)), key=lambda c: c.__name__
)


def twin(cls: type, *, frozen: bool = True) -> type:
    """The dataclass `cls` would have been: same name, fields, annotations and defaults."""
    defaults = record.defaults(cls)
    spec = [
        (name, cls.__annotations__[name], dataclasses.field(default=defaults[name]))
        if name in defaults
        else (name, cls.__annotations__[name])
        for name in record.fields(cls)
    ]
    made: type = dataclasses.make_dataclass(cls.__name__, spec, frozen=frozen, slots=True)
    return made


def sample(cls: type, seed: int) -> dict[str, Any]:
    return {name: (seed, i, name) for i, name in enumerate(record.fields(cls))}


def test_every_model_class_with_fields_is_a_record() -> None:
    assert {c.__name__ for c in MODEL_RECORDS} >= {"Snapshot", "ProcessInfo", "ThreadEntry", "HandleEntry", "VaRegion"}


@pytest.mark.parametrize("cls", MODEL_RECORDS, ids=lambda c: c.__name__)
def test_a_record_behaves_as_the_frozen_dataclass_it_stands_for(cls: type) -> None:
    other = twin(cls)
    values = sample(cls, 1)
    mine: Any = cls(**values)
    theirs: Any = other(**values)
    assert repr(mine) == repr(theirs)
    assert hash(mine) == hash(theirs)
    assert mine == cls(*values.values()) and mine != cls(**sample(cls, 2)) and mine != theirs
    assert (mine == theirs) is False and mine.__eq__(theirs) is NotImplemented
    assert dataclasses.is_dataclass(type(mine)) and dataclasses.asdict(mine) == dataclasses.asdict(theirs)
    assert [f.name for f in dataclasses.fields(mine)] == [f.name for f in dataclasses.fields(theirs)]
    first = record.fields(cls)[0]
    assert dataclasses.replace(mine, **{first: 0}) == record.replace(mine, **{first: 0}) == cls(**{**values, first: 0})
    assert cls.__match_args__ == other.__match_args__  # type: ignore[attr-defined]
    assert pickle.loads(pickle.dumps(mine)) == mine
    assert not hasattr(mine, "__dict__")
    changes: list[Callable[[], None]] = [
        lambda: setattr(mine, first, 0),
        lambda: delattr(mine, first),
        lambda: setattr(mine, "new", 0),
    ]
    for change in changes:
        with pytest.raises(dataclasses.FrozenInstanceError):
            change()
    required = {name: values[name] for name in record.fields(cls) if name not in record.defaults(cls)}
    assert repr(cls(**required)) == repr(other(**required))


@pytest.mark.parametrize("call", [(), ("x",) * 50, {"no_such_field": 1}], ids=["none", "too many", "unknown"])
def test_a_wrong_call_is_the_dataclass_s_type_error(call: tuple[str, ...] | dict[str, int]) -> None:
    errors = []
    for cls in (model.Performance, twin(model.Performance)):
        with pytest.raises(TypeError) as caught:
            cls(**call) if isinstance(call, dict) else cls(*call)
        errors.append(str(caught.value).split("__init__()")[1])
    assert errors[0] == errors[1]


def test_a_mutable_record_runs_its_post_init_and_is_unhashable() -> None:
    @record.record(frozen=False)
    class Counter:
        start: int
        doubled: int = 0

        def __post_init__(self) -> None:
            self.doubled = self.start * 2

    counter = Counter(3)
    assert (
        counter.doubled == 6
        and repr(counter)
        == "test_a_mutable_record_runs_its_post_init_and_is_unhashable.<locals>.Counter(start=3, doubled=6)"
    )
    counter.start = 4
    assert counter.start == 4 and counter != Counter(4)
    with pytest.raises(TypeError):
        hash(counter)


def test_a_record_refuses_what_a_dataclass_refuses() -> None:
    with pytest.raises(TypeError, match="non-default argument 'b' follows default argument"):

        @record.record
        class Bad:
            a: int = 0
            b: int  # type: ignore[misc]

    with pytest.raises(ValueError, match="mutable default"):

        @record.record
        class Mutable:
            a: list[int] = []  # noqa: RUF012
