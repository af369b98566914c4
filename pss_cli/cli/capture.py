"""`pss-dup capture TARGET`: PssCaptureSnapshot and a report.

Declared without click (pss_cli.cli.declare): a script's `capture PID -o json` runs on the quick path.
"""

from __future__ import annotations

from typing import Any

from pss_cli.cli.declare import TARGET, Param, argument, command, declared, option, output_options
from pss_cli.errors import ExitCode, PssError, UsageError
from pss_cli.model import DEFAULT_CAPTURE, EVERYTHING, CaptureFlags
from pss_cli.render.console import Ui

#: One option per PSS capture flag: (option, flag, help).
FLAG_OPTIONS: tuple[tuple[str, CaptureFlags, str], ...] = (
    ("--threads", CaptureFlags.THREADS, "threads (PSS_CAPTURE_THREADS)"),
    ("--thread-context", CaptureFlags.THREAD_CONTEXT, "register contexts (PSS_CAPTURE_THREAD_CONTEXT)"),
    (
        "--thread-context-extended",
        CaptureFlags.THREAD_CONTEXT_EXTENDED,
        "extended register state: AVX, AVX-512, PKRU (PSS_CAPTURE_THREAD_CONTEXT_EXTENDED)",
    ),
    ("--handles", CaptureFlags.HANDLES, "the handle (fd) table (PSS_CAPTURE_HANDLES)"),
    ("--handle-names", CaptureFlags.HANDLE_NAME_INFORMATION, "handle names (PSS_CAPTURE_HANDLE_NAME_INFORMATION)"),
    (
        "--handle-basic",
        CaptureFlags.HANDLE_BASIC_INFORMATION,
        "open flags, position, mount (PSS_CAPTURE_HANDLE_BASIC_INFORMATION)",
    ),
    (
        "--handle-type-info",
        CaptureFlags.HANDLE_TYPE_SPECIFIC_INFORMATION,
        "socket endpoints, eventfd count, memfd seals… (PSS_CAPTURE_HANDLE_TYPE_SPECIFIC_INFORMATION)",
    ),
    ("--va-space", CaptureFlags.VA_SPACE, "the memory map (PSS_CAPTURE_VA_SPACE)"),
    (
        "--va-section-info",
        CaptureFlags.VA_SPACE_SECTION_INFORMATION,
        "Rss, Anonymous, Swap, VmFlags per region (PSS_CAPTURE_VA_SPACE_SECTION_INFORMATION)",
    ),
    ("--va-clone", CaptureFlags.VA_CLONE, "the memory content (PSS_CAPTURE_VA_CLONE)"),
)

#: A flag that is meaningless without another one brings it along, as PSS requires.
IMPLIED: tuple[tuple[CaptureFlags, CaptureFlags], ...] = (
    (CaptureFlags.THREAD_CONTEXT_EXTENDED, CaptureFlags.THREAD_CONTEXT),
    (CaptureFlags.THREAD_CONTEXT, CaptureFlags.THREADS),
    (
        CaptureFlags.HANDLE_NAME_INFORMATION
        | CaptureFlags.HANDLE_BASIC_INFORMATION
        | CaptureFlags.HANDLE_TYPE_SPECIFIC_INFORMATION,
        CaptureFlags.HANDLES,
    ),
    (CaptureFlags.VA_SPACE_SECTION_INFORMATION, CaptureFlags.VA_SPACE),
)


def parse_flag_mask(text: str) -> CaptureFlags:
    """`0x980`, `2432`, or `THREADS|HANDLES` (PSS_CAPTURE_ prefix optional) as CaptureFlags."""
    text = text.strip()
    try:
        value = int(text, 0)
    except ValueError:
        value = 0
        for part in filter(None, (p.strip() for p in text.split("|"))):
            name = part.upper().removeprefix("PSS_CAPTURE_")
            member = CaptureFlags.__members__.get(name)
            if member is None:
                raise UsageError(
                    f"unknown capture flag {part!r}; known: {', '.join(CaptureFlags.__members__)}"
                ) from None
            value |= member
    known = 0
    for member in CaptureFlags:
        known |= int(member)  # an int: ~ of an IntFlag keeps only its own bits and would hide the unknown ones
    if value & ~known:
        raise UsageError(f"capture mask {text} has unknown bits {value & ~known:#x}")
    return CaptureFlags(value)


def selected_flags(chosen: CaptureFlags | None, everything: bool, mask: str | None) -> CaptureFlags:
    """The capture flags: `--everything`, else a raw mask, else the named options, else the default."""
    if everything:
        flags = EVERYTHING
    elif mask is not None:
        flags = parse_flag_mask(mask) | (chosen or CaptureFlags.NONE)
    elif chosen is not None:
        flags = chosen
    else:
        flags = DEFAULT_CAPTURE
    for trigger, needed in IMPLIED:
        if flags & trigger:
            flags |= needed
    return flags


#: The selection options, shared by `capture`, `dup` and `dump`.
CAPTURE_OPTIONS = (
    Param("option", ("--flags", "mask"), {
        "metavar": "MASK", "help": "Raw PSS_CAPTURE_* mask: hex, decimal, or names joined by | (THREADS|HANDLES)."}),
    Param("option", ("--everything",), {"is_flag": True,
                                        "help": "Capture everything, memory included (every flag above)."}),
    *(Param("option", (name, "selected"), {"flag_value": int(flag), "multiple": True, "help": f"Capture {text}."})
      for name, flag, text in FLAG_OPTIONS),
)  # fmt: skip


def capture_options(func: Any) -> Any:
    """Declare CAPTURE_OPTIONS on a command."""
    declared(func).extend(reversed(CAPTURE_OPTIONS))
    return func


def flags_from(selected: tuple[int, ...], everything: bool, mask: str | None) -> CaptureFlags:
    chosen = None
    if selected:
        chosen = CaptureFlags.NONE
        for value in selected:
            chosen |= CaptureFlags(value)
    return selected_flags(chosen, everything, mask)


@command
@argument("target", type=TARGET)
@option(
    "--all",
    "all_matches",
    is_flag=True,
    help="When TARGET is a name that several processes have: all; with container:ID, every process in it.",
)
@capture_options
@output_options
def capture(
    ui: Ui, target: str, all_matches: bool, selected: tuple[int, ...], everything: bool, mask: str | None
) -> int:
    """Capture a snapshot of TARGET (a PID, a process name, or container:ID) and report it.

    container:ID is the main process of the container whose ID starts with ID (as docker takes IDs);
    container:ID:PID is the process with PID in that container's PID namespace.

    Process information is always captured. Without selection options: threads with register contexts, the
    handle table with names, basic and type-specific information, and the memory map with section information.
    The process is frozen only while its registers, handles and memory map are read, and then runs on exactly as
    before; a process that was stopped stays stopped.
    """
    from pss_cli import api
    from pss_cli.render import report

    flags = flags_from(selected, everything, mask)
    pids = api.resolve(target, all_matches=all_matches)
    outcomes: list[tuple[int, Any]] = []
    for pid in pids:
        try:
            outcomes.append((pid, api.capture(pid, flags, timeout=ui.timeout)))
        except PssError as exc:
            if len(pids) == 1:
                raise
            outcomes.append((pid, exc))
    report.captures(ui, outcomes)
    failures = [o for _, o in outcomes if isinstance(o, PssError)]
    if not failures:
        return ExitCode.OK
    if len(failures) < len(outcomes):
        return ExitCode.PARTIAL
    return int(failures[0].exit_code)
