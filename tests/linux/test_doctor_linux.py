"""Doctor's ptrace probe on a process that will not stop: it is let go of, and the failure says what happened."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

import pytest

from tests.linux.conftest import Target, state, tracer_pids, wait_until

pytestmark = pytest.mark.skipif(
    sys.platform != "linux" or os.uname().machine != "x86_64" or os.geteuid() != 0,
    reason="needs Linux x86_64 and root",
)


def test_a_probe_of_a_process_that_never_stops_lets_go_of_it_and_the_next_probe_is_not_refused(
    c_target: Callable[..., Target],
) -> None:
    """A vfork parent waits in state D until its child exits: no ptrace-stop reaches it, so PTRACE_DETACH cannot
    either. The probe must still leave it untraced (ending its tracer thread), say so, and not turn the next probe
    into an EPERM from PTRACE_SEIZE, the 'already traced' that doctor used to report after ignoring the detach."""
    from pss_cli.doctor.linux import PtraceProbe

    target = c_target("vfork", "2")
    wait_until(lambda: state(target.pid) == "D", what="the vfork parent to wait in state D")
    for _ in range(2):
        with pytest.raises(TimeoutError) as failure:
            PtraceProbe(target.pid, 0.3, options=0).run()
        message = str(failure.value)
        assert "did not stop within 0.3 s" in message and "let go of it (TracerPid 0)" in message, message
        assert set(tracer_pids(target.pid).values()) == {0}
    target.expect("vfork-done")  # its child exited: the parent runs on, and no stop is left pending for it
    target.send("ping")
    assert target.expect("pong").startswith("pong")
    assert state(target.pid) != "t" and set(tracer_pids(target.pid).values()) == {0}
    assert "detached (TracerPid 0)" in PtraceProbe(target.pid, 5.0, options=0).run()
