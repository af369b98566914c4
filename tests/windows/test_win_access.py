"""Access masks: least privilege per operation and flag, and the hex/name formatter and parser."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pss_cli import errors
from pss_cli.model import CaptureFlags
from pss_cli.platform.windows.access import (
    DUPLICATE_SOURCE_ACCESS,
    DUPLICATE_TARGET_ACCESS,
    PROCESS_RIGHTS,
    REMOTE_FREE_ACCESS,
    access_names,
    capture_access,
    format_access,
    parse_access,
)


def test_operation_masks_are_the_documented_ones() -> None:
    assert DUPLICATE_SOURCE_ACCESS == 0x50
    assert DUPLICATE_TARGET_ACCESS == 0x68
    assert REMOTE_FREE_ACCESS == 0x58


@pytest.mark.parametrize(
    ("flag", "right"),
    [
        (CaptureFlags.VA_CLONE, 0x80),
        (CaptureFlags.HANDLES, 0x440),
        (CaptureFlags.HANDLE_NAME_INFORMATION, 0x40),
        (CaptureFlags.HANDLE_BASIC_INFORMATION, 0x40),
        (CaptureFlags.HANDLE_TYPE_SPECIFIC_INFORMATION, 0x40),
        (CaptureFlags.HANDLE_TRACE, 0x400),
        (CaptureFlags.THREADS, 0x400),
        (CaptureFlags.VA_SPACE, 0x400),
    ],
)
def test_each_capture_flag_adds_only_its_own_right_to_query_limited(flag: CaptureFlags, right: int) -> None:
    assert capture_access(flag).mask == 0x1000 | right


def test_section_information_needs_vm_read_and_va_space() -> None:
    assert capture_access(CaptureFlags.VA_SPACE | CaptureFlags.VA_SPACE_SECTION_INFORMATION).mask == 0x1410
    with pytest.raises(errors.UsageError):
        capture_access(CaptureFlags.VA_SPACE_SECTION_INFORMATION)


def test_create_flags_need_no_right() -> None:
    flags = CaptureFlags.CREATE_USE_VM_ALLOCATIONS | CaptureFlags.CREATE_MEASURE_PERFORMANCE
    assert capture_access(flags).mask == 0x1000


def test_reasons_name_the_flags_behind_a_right() -> None:
    request = capture_access(CaptureFlags.HANDLES | CaptureFlags.HANDLE_NAME_INFORMATION | CaptureFlags.VA_CLONE)
    assert request.reasons(0x40) == (
        "HANDLES: PSS duplicates each handle to learn its type [NTDLL]",
        "HANDLE_NAME_INFORMATION [INF]",
    )
    assert any(r.startswith("VA_CLONE") for r in request.reasons(0x80))


def test_format_shows_hex_and_names_in_bit_order() -> None:
    assert format_access(0x50) == "0x00000050 (PROCESS_VM_READ|PROCESS_DUP_HANDLE)"
    assert format_access(0x100050) == "0x00100050 (PROCESS_VM_READ|PROCESS_DUP_HANDLE|SYNCHRONIZE)"
    assert format_access(0) == "0x00000000 (0)"
    assert format_access(0x80000040) == "0x80000040 (PROCESS_DUP_HANDLE|0x80000000)"
    assert access_names(0x68) == ("PROCESS_VM_OPERATION", "PROCESS_VM_WRITE", "PROCESS_DUP_HANDLE")


@pytest.mark.parametrize(
    ("text", "mask"),
    [
        ("0x50", 0x50),
        ("80", 80),
        ("PROCESS_VM_READ|PROCESS_DUP_HANDLE", 0x50),
        ("vm_read | dup_handle", 0x50),
        ("0x10|PROCESS_DUP_HANDLE", 0x50),
        ("SYNCHRONIZE", 0x100000),
    ],
)
def test_parse_accepts_hex_decimal_names_and_mixtures(text: str, mask: int) -> None:
    assert parse_access(text) == mask


@pytest.mark.parametrize("text", ["", "|", "PROCESS_NOPE", "0x1|", "0x100000000", "12abc", "0x50 (PROCESS_VM_READ)"])
def test_parse_rejects_garbage_with_a_usage_error(text: str) -> None:
    with pytest.raises(errors.UsageError):
        parse_access(text)


@given(st.integers(min_value=0, max_value=0xFFFFFFFF))
def test_format_then_parse_round_trips_every_32_bit_mask(mask: int) -> None:
    assert parse_access(format_access(mask)) == mask


@given(st.lists(st.sampled_from(sorted(PROCESS_RIGHTS)), min_size=1, unique=True))
def test_names_joined_with_bars_parse_to_their_union(names: list[str]) -> None:
    expected = 0
    for name in names:
        expected |= PROCESS_RIGHTS[name]
    assert parse_access("|".join(names)) == expected
    assert set(access_names(expected)) == set(names)
