"""Property: whatever bytes it is given, the snapshot parser raises BadSnapshot or returns a Snapshot, fast and small.

Inputs are real serialised snapshots, mutated: bit flips, truncations, splices, boundary and huge values written
over the size and offset fields of the ELF header, the program headers and the note headers, and structural or
textual changes to the JSON model in the PSSDUP note. Any other exception, a slow parse or a large allocation
fails the test.
"""

from __future__ import annotations

import functools
import json
import struct
import sys
import time
import tracemalloc
from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pss_cli.errors import BadSnapshot
from pss_cli.model import Snapshot
from pss_cli.platform.linux import elfcore
from pss_cli.platform.linux.elfcore import NT_PSSDUP_MODEL, PSSDUP_OWNER, LoadSegment
from tests.linux import core_samples as cs

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="Linux core files")

#: Per input: no parse may take longer, or allocate more than this beyond a small multiple of the input.
MAX_SECONDS = 2.0
MAX_EXTRA_BYTES = 32 << 20


@functools.cache
def corpus() -> tuple[bytes, ...]:
    with_memory = elfcore.plan_core(
        cs.snapshot(2), cs.auxv(), [LoadSegment(0x10000, 0x2000, 6, 0x2000), LoadSegment(0x20000, 0x1000, 4, 0)]
    )
    buf = bytearray(with_memory.size)
    elfcore.write_core(buf, with_memory, lambda seg, view: view.__setitem__(slice(None), b"\xa5" * len(view)))
    return (
        elfcore.render_core(cs.snapshot(3), cs.auxv()),
        elfcore.render_core(cs.snapshot(2, without_context=(1,))),
        elfcore.render_core(cs.snapshot(1, with_threads=False), cs.auxv()),
        bytes(buf),
    )


def field_offsets(core: bytes) -> list[tuple[int, str]]:
    """Where the sizes and offsets that a parser trusts live: ELF header, first program headers, note headers."""
    fields = [(32, "<Q"), (40, "<Q"), (52, "<H"), (54, "<H"), (56, "<H"), (58, "<H"), (60, "<H")]
    for i in range(3):
        base = 64 + 56 * i
        fields += [(base, "<I"), (base + 4, "<I"), (base + 8, "<Q"), (base + 16, "<Q"), (base + 32, "<Q"),
                   (base + 40, "<Q")]  # fmt: skip
    for at in cs.note_offsets(core):
        fields += [(at, "<I"), (at + 4, "<I"), (at + 8, "<I")]
    return fields


def boundary_values(size: int) -> st.SearchStrategy[int]:
    return st.sampled_from(
        [
            0,
            1,
            3,
            4,
            7,
            8,
            12,
            55,
            56,
            64,
            0xFF,
            0xFFFF,
            0xFFFE,
            2**31 - 1,
            2**31,
            2**32 - 1,
            2**63,
            2**64 - 1,
            size - 1,
            size,
            size + 1,
            size // 2,
        ]
    ) | st.integers(0, 2**64 - 1)


def fit(value: int, fmt: str) -> int:
    return value & ((1 << (8 * struct.calcsize(fmt))) - 1)


@st.composite
def byte_mutations(draw: st.DrawFn) -> bytes:
    base = bytearray(draw(st.sampled_from(corpus())))
    how = draw(st.sampled_from(["flip", "truncate", "splice", "field", "fields"]))
    if how == "flip":
        for _ in range(draw(st.integers(1, 16))):
            pos = draw(st.integers(0, len(base) - 1))
            base[pos] ^= 1 << draw(st.integers(0, 7))
    elif how == "truncate":
        del base[draw(st.integers(0, len(base))) :]
    elif how == "splice":
        donor = draw(st.sampled_from(corpus()))
        start = draw(st.integers(0, len(donor)))
        piece = donor[start : start + draw(st.integers(0, 4096))]
        at = draw(st.integers(0, len(base)))
        if draw(st.booleans()):
            base[at : at + len(piece)] = piece
        else:
            base[at:at] = piece
    else:
        fields = field_offsets(bytes(base))
        for _ in range(1 if how == "field" else draw(st.integers(2, 6))):
            offset, fmt = draw(st.sampled_from(fields))
            struct.pack_into(fmt, base, offset, fit(draw(boundary_values(len(base))), fmt))
    return bytes(base)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**65), 2**65) | st.floats() | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=10,
)


def json_paths(node: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield path
    if isinstance(node, dict):
        for key, child in node.items():
            yield from json_paths(child, (*path, key))
    elif isinstance(node, list):
        for i, child in enumerate(node):
            yield from json_paths(child, (*path, i))


@st.composite
def model_mutations(draw: st.DrawFn) -> bytes:
    base = draw(st.sampled_from(corpus()))
    notes = cs.notes_of(base)
    text = next(d for o, t, d in notes if (o, t) == (PSSDUP_OWNER, NT_PSSDUP_MODEL))
    how = draw(st.sampled_from(["replace", "delete", "duplicate", "add", "text"]))
    if how == "text":
        raw = bytearray(text)
        for _ in range(draw(st.integers(1, 8))):
            pos = draw(st.integers(0, len(raw) - 1))
            raw[pos] = draw(st.sampled_from(b'{}[]",:0123456789-.eEntrufalse \\\x00\xff'))
        desc = bytes(raw)
    else:
        model = json.loads(text)
        paths = [p for p in json_paths(model) if p]
        path = draw(st.sampled_from(paths))
        parent: Any = model
        for key in path[:-1]:
            parent = parent[key]
        last = path[-1]
        if how == "replace":
            parent[last] = draw(json_values)
        elif how == "delete":
            del parent[last]
        elif how == "duplicate" and isinstance(parent, list):
            parent.append(parent[last])
        elif isinstance(parent, dict):
            parent[draw(st.text(max_size=6))] = draw(json_values)
        desc = json.dumps(model).encode("ascii")
    return cs.build_core(cs.replace_note(notes, PSSDUP_OWNER, NT_PSSDUP_MODEL, desc))


@pytest.fixture(scope="module", autouse=True)
def traced_memory() -> Iterator[None]:
    tracemalloc.start()
    try:
        yield
    finally:
        tracemalloc.stop()


def parse_like_a_receiver(data: bytes) -> None:
    """Every public entry point (bytes, and a memoryview as an mmap gives); only BadSnapshot may escape, on one line."""
    entry_points = ((elfcore.read_version, data), (elfcore.read_snapshot, memoryview(data)), (elfcore.read_core, data))
    for parse, view in entry_points:
        tracemalloc.reset_peak()
        before = tracemalloc.get_traced_memory()[0]
        started = time.perf_counter()
        try:
            result = parse(view)
        except BadSnapshot as exc:
            assert "\n" not in str(exc)
            assert str(exc)
        else:
            assert result is not None
            if parse is elfcore.read_snapshot:
                assert isinstance(result, Snapshot)
        assert time.perf_counter() - started < MAX_SECONDS
        assert tracemalloc.get_traced_memory()[1] - before < MAX_EXTRA_BYTES + 20 * len(data)


#: As many examples as the hypothesis profile (tests/conftest.py) gives: 300 in CI, 30 locally.
FUZZ = settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@FUZZ
@given(byte_mutations())
def test_mutated_bytes_raise_only_bad_snapshot(data: bytes) -> None:
    parse_like_a_receiver(data)


@FUZZ
@given(model_mutations())
def test_mutated_model_note_raises_only_bad_snapshot(data: bytes) -> None:
    parse_like_a_receiver(data)


@settings(deadline=None)
@given(st.binary(max_size=512))
def test_arbitrary_bytes_raise_only_bad_snapshot(data: bytes) -> None:
    parse_like_a_receiver(data)


def test_unmutated_corpus_parses() -> None:
    """The mutations start from snapshots that do parse, so a refusal is the mutation's doing."""
    for core in corpus():
        assert isinstance(elfcore.read_snapshot(core), Snapshot)
