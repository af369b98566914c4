"""A process that is handed snapshots: for each fd number it reads on stdin it opens the snapshot with
pss_cli.open_snapshot, from inside, and answers one JSON line (what it found, or the error)."""

from __future__ import annotations

import json
import os
import sys

import pss_cli


def main() -> None:
    print("ready", flush=True)
    for line in sys.stdin:
        fd = int(line)
        try:
            snap = pss_cli.open_snapshot(fd)
            flags = os.get_inheritable(fd)
            answer = {
                "ok": True,
                "pid": snap.process.pid,
                "name": snap.process.name,
                "threads": None if snap.threads is None else len(snap.threads),
                "handles": None if snap.handles is None else len(snap.handles),
                "inheritable": flags,
            }
        except pss_cli.PssError as exc:
            answer = {"ok": False, "error": str(exc), "code": int(exc.exit_code)}
        print(json.dumps(answer), flush=True)


if __name__ == "__main__":
    main()
