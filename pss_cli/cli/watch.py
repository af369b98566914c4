"""`pss-dup watch TARGET...`: act (dump, capture, dup) when a process crosses a threshold; thin: parse, run, render."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Iterator
from typing import Any

import click

from pss_cli import interrupts
from pss_cli.cli.common import memory_options, output_options
from pss_cli.cli.params import PID, SIZE, TARGET
from pss_cli.compress import COMPRESSIONS
from pss_cli.errors import ExitCode, NoSuchProcess, UsageError
from pss_cli.model import CLONE_METHODS, DumpSelection, selection_problem
from pss_cli.render.console import Ui
from pss_cli.watch import DEFAULT_TEMPLATE


class SignalParam(click.ParamType[int, Any]):
    """A signal: USR1, SIGUSR1 or its number."""

    name = "signal"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        from pss_cli.watch import parse_signal

        if isinstance(value, int):
            return value
        try:
            return parse_signal(str(value))
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


SIGNAL = SignalParam()


@click.command(
    epilog="\b\nExit codes: 0 every action succeeded (or no trigger fired), 1 an action (or its --exec) "
    "failed,\n2 usage error, 3 a TARGET does not exist (see --wait), 7 --on-signal/--on-crash/--on-exit on a "
    "process\nanother tracer holds, 124 --duration ran out with no trigger, 130/128+N ended by Ctrl-C/signal N."
)
@click.argument("targets", metavar="TARGET...", nargs=-1, required=True, type=TARGET)
@click.option("--all", "all_matches", is_flag=True, help="Watch every process a name matches.")
@click.option("--wait", is_flag=True, help="Wait for a matching process to start (with --all: keep watching new ones).")
@click.option("--cpu", type=float, metavar="PCT", help="Act when CPU use is at or above PCT (100 = one core).")
@click.option("--cpu-below", type=float, metavar="PCT", help="Act when CPU use is below PCT.")
@click.option(
    "--for",
    "for_seconds",
    type=float,
    default=1.0,
    show_default=True,
    metavar="SECONDS",
    help="How long --cpu/--cpu-below must hold, in a row.",
)
@click.option(
    "--memory",
    type=SIZE,
    multiple=True,
    metavar="SIZE",
    help="Act as the resident set reaches SIZE (512M, 2G); repeat, ascending: one action each.",
)
@click.option("--memory-below", type=SIZE, metavar="SIZE", help="Act when the resident set is below SIZE.")
@click.option("--fds", type=int, metavar="N", help="Act when the process has N or more open fds.")
@click.option("--threads", type=int, metavar="N", help="Act when the process has N or more threads.")
@click.option(
    "--hang",
    type=float,
    metavar="SECONDS",
    help="Act when the process used no CPU time for SECONDS, or a thread stayed in D that long.",
)
@click.option(
    "--on-signal",
    "on_signal",
    type=SIGNAL,
    multiple=True,
    metavar="SIG",
    help="Act when the process receives SIG (USR1, SIGTERM, 10); repeatable. The signal is delivered afterwards.",
)
@click.option(
    "--on-crash",
    is_flag=True,
    help="Act when a fatal signal with its default action (SIGSEGV, SIGABRT...) reaches the process, before it "
    "dies: the fault address and thread go in the report and the core; it then dies as it would have.",
)
@click.option(
    "--on-exit", is_flag=True, help="Act when the process exits (in exit(), before it is gone), with its status."
)
@click.option(
    "--dump",
    "dump_dir",
    is_flag=False,
    flag_value=".",
    default=None,
    metavar="[DIR]",
    help="A core per trigger into DIR (default: here), with the clone method; the default action.",
)
@click.option(
    "--name",
    "template",
    metavar="TEMPLATE",
    default=DEFAULT_TEMPLATE,
    show_default=True,
    help="Core file name, from {name} {pid} {trigger} {time} {host} {n} {container} (a short container ID, or 'host').",
)
@click.option("--compress", type=click.Choice(COMPRESSIONS),
              help="Compress each core (--dump) into NAME.zst, one standard zstd frame.")  # fmt: skip
@click.option("--clone-method", type=click.Choice(CLONE_METHODS), default=None,
              help="As for dump: clone (the default) stops the process only while a copy-on-write clone is made, "
                   "also while attached; copy keeps it stopped for the whole copy. A crash or an exit an attached "
                   "watch caught is always copied.")  # fmt: skip
@memory_options
@click.option("--capture", "capture_action", is_flag=True, help="Print the snapshot as one JSON line on stdout.")
@click.option("--dup", "dup_into", type=PID, metavar="PID", help="Push the snapshot into process PID (an analyser).")
@click.option(
    "--exec",
    "exec_command",
    metavar="CMD",
    help="Run CMD through the shell after each action, with PSS_DUP_FILE, PSS_DUP_PID, PSS_DUP_TRIGGER and "
    "PSS_DUP_HANDLE set; a non-zero exit fails the action.",
)
@click.option("-n", "count", type=int, default=1, show_default=True, metavar="COUNT", help="Actions in total.")
@click.option(
    "--every",
    type=float,
    default=10.0,
    show_default=True,
    metavar="SECONDS",
    help="At least this long between two actions on one process.",
)
@click.option("--poll", type=float, default=1.0, show_default=True, metavar="SECONDS", help="Sampling interval.")
@click.option("--duration", type=float, metavar="SECONDS", help="Give up after this long (exit 124 if nothing fired).")
@click.option("--max-size", type=SIZE, metavar="SIZE", help="Stop acting once the files written add up to SIZE.")
@click.option("-v", "--verbose", is_flag=True, help="Also report every sample (a `sample` event per process).")
@output_options
def watch(
    ui: Ui,
    targets: tuple[str, ...],
    all_matches: bool,
    wait: bool,
    cpu: float | None,
    cpu_below: float | None,
    for_seconds: float,
    memory: tuple[int, ...],
    memory_below: int | None,
    fds: int | None,
    threads: int | None,
    hang: float | None,
    on_signal: tuple[int, ...],
    on_crash: bool,
    on_exit: bool,
    dump_dir: str | None,
    template: str,
    compress: str | None,
    clone_method: str | None,
    selection: DumpSelection | None,
    capture_action: bool,
    dup_into: int | None,
    exec_command: str | None,
    count: int,
    every: float,
    poll: float,
    duration: float | None,
    max_size: int | None,
    verbose: bool,
) -> int:
    """Watch TARGET (PIDs or names) and dump, capture or dup it when a trigger fires.

    Triggers: --cpu/--cpu-below (for --for seconds), --memory (repeatable)/--memory-below, --fds, --threads,
    --hang: only /proc is read between actions, nothing is stopped or traced. --on-signal, --on-crash, --on-exit:
    each target stays seized (ptrace, never stopped; every signal passed on as it came) for the whole watch, so no
    debugger can attach to it meanwhile; should the watcher die, it runs on untraced. With no trigger, act once now.
    """
    from pss_cli import api
    from pss_cli.naming import WATCH_FIELDS, template_problem
    from pss_cli.watch import Action, LimitSettings, Triggers, problems

    if ui.output == "json":
        raise UsageError("watch reports events as they happen: use -o jsonl, not -o json")
    triggers = Triggers(
        cpu,
        cpu_below,
        for_seconds,
        tuple(memory),
        memory_below,
        fds,
        threads,
        hang,
        tuple(dict.fromkeys(on_signal)),
        on_crash,
        on_exit,
    )
    limits = LimitSettings(count, every, poll, duration, max_size)
    found = problems(triggers, limits) + ([p] if (p := template_problem(template, WATCH_FIELDS)) else [])
    found += [p] if selection is not None and (p := selection_problem(selection)) else []
    if found:
        raise UsageError(found[0])
    made = selection is not None or clone_method is not None or compress is not None
    if made and (capture_action or dup_into is not None):
        raise UsageError(
            "--clone-method, --mini, --filter, --all-memory and --compress choose how a core is made: they go with "
            "--dump"
        )
    action = Action(
        "dump",
        directory=dump_dir or ".",
        template=template,
        exec_command=exec_command,
        selection=selection,
        clone_method=clone_method,
        compress=compress,
    )
    chosen = [
        name
        for name, on in (
            ("--dump", dump_dir is not None),
            ("--capture", capture_action),
            ("--dup", dup_into is not None),
        )
        if on
    ]
    if len(chosen) > 1:
        raise UsageError(f"give one action, not {' and '.join(chosen)}")
    if capture_action:
        action = Action("capture", exec_command=exec_command)
    elif dup_into is not None:
        if str(dup_into) in targets:
            raise UsageError(f"--dup {dup_into} is a watched process: a snapshot cannot be pushed into itself")
        if not api.process_exists(dup_into):
            raise NoSuchProcess(f"no process with PID {dup_into} to --dup into", pid=dup_into)
        action = Action("dup", dup_into=dup_into, exec_command=exec_command)
    else:
        check_directory(action.directory)
    with reporter(ui, stdout_free=not capture_action) as rep:
        watcher = api.watch(
            list(targets),
            all_matches=all_matches,
            wait=wait,
            triggers=triggers,
            limits=limits,
            action=action,
            reporter=rep,
            verbose=verbose,
            timeout=ui.timeout,
        )
        try:
            return watcher.run()
        except interrupts.Terminated as exc:
            watcher.interrupted(f"ended by {exc}", 128 + exc.signo)
            raise
        except KeyboardInterrupt:
            watcher.interrupted("interrupted", ExitCode.INTERRUPTED)
            raise


@contextlib.contextmanager
def reporter(ui: Ui, *, stdout_free: bool) -> Iterator[Any]:
    """JSON Lines, a live status for a person at a terminal, or plain lines (on stderr when stdout carries
    --capture's snapshots)."""
    from pss_cli.render.watch import JsonlReporter, LineReporter, LiveReporter

    if ui.machine:
        yield JsonlReporter()
        return
    stream = sys.stdout if stdout_free else sys.stderr
    if not ui.interactive:
        yield LineReporter(stream)
        return
    from rich.live import Live

    # Refreshed by the watch loop at each poll, not by a thread of rich's: an attached watch needs every thread of
    # its own to hold SIGCHLD back for its tracers, and a status line changes only at a poll anyway.
    with Live(console=ui.err, transient=True, auto_refresh=False) as live:
        yield LiveReporter(stream, live)


def check_directory(path: str) -> None:
    """--dump DIR must take a file now, not at the first trigger hours later; a file is made and removed to know
    (access(2) says yes to root even where the filesystem says no)."""
    import tempfile

    if not os.path.isdir(path):
        raise UsageError(f"--dump {path!r} is not a directory")
    try:
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as exc:
        raise UsageError(f"--dump {path!r} is not a directory this user can write into ({exc.strerror})") from None
