"""Make docs/report.svg: a real `pss-dup capture` report, rendered by the CLI's own report code, exported by rich.

It starts a small demo process of its own (two named worker threads, a log file, a pipe, a listening socket),
captures it through the public API exactly as `pss-dup capture PID --thread-context --handle-names --handle-basic
--handle-type-info` does, renders that with pss_cli.render.report into a recording console, saves the SVG, and
kills and reaps the demo process. Run it as root on Linux: `.venv/bin/python docs/make_screenshot.py`.
"""

from __future__ import annotations

import io
import subprocess
import sys
import tempfile
from pathlib import Path

from rich.console import Console

import pss_cli
from pss_cli.model import CaptureFlags
from pss_cli.render import report
from pss_cli.render.console import Ui

OUTPUT = Path(__file__).resolve().parent / "report.svg"
WIDTH = 118
FLAGS = (
    CaptureFlags.THREADS
    | CaptureFlags.THREAD_CONTEXT
    | CaptureFlags.HANDLES
    | CaptureFlags.HANDLE_NAME_INFORMATION
    | CaptureFlags.HANDLE_BASIC_INFORMATION
    | CaptureFlags.HANDLE_TYPE_SPECIFIC_INFORMATION
)
COMMAND = "pss-dup capture {pid} --thread-context --handle-names --handle-basic --handle-type-info"

DEMO = """\
import ctypes, os, socket, sys, threading
def worker(name, stop):
    ctypes.CDLL(None).prctl(15, name.encode(), 0, 0, 0)
    stop.wait()
stop = threading.Event()
for name in ("worker-1", "worker-2"):
    threading.Thread(target=worker, args=(name, stop), daemon=True).start()
log = open(os.path.join(os.path.dirname(__file__), "demo.log"), "a")
log.write("started\\n"); log.flush()
reader, writer = os.pipe()
server = socket.socket(); server.bind(("127.0.0.1", 0)); server.listen()
print("ready", flush=True)
sys.stdin.read()
"""


def main() -> None:
    with tempfile.TemporaryDirectory(prefix="pss-demo-") as workdir:
        script = Path(workdir) / "demo-server.py"
        script.write_text(DEMO)
        demo = subprocess.Popen(
            [sys.executable, str(script)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=workdir
        )
        try:
            assert demo.stdout is not None
            if demo.stdout.readline().strip() != "ready":
                raise SystemExit("the demo process did not start")
            snapshot = pss_cli.capture(demo.pid, FLAGS)
            console = Console(
                file=io.StringIO(), record=True, width=WIDTH, force_terminal=True, color_system="truecolor",
                highlight=False, soft_wrap=False,
            )  # fmt: skip
            ui = Ui(output="table", quiet=False, color="always", timeout=10.0, command="capture", _out=console)
            console.print(f"$ {COMMAND.format(pid=demo.pid)}", style="bold")
            report.captures(ui, [(demo.pid, snapshot)])
            console.save_svg(str(OUTPUT), title="pss-dup capture")
        finally:
            demo.kill()
            demo.wait()
            for stream in (demo.stdin, demo.stdout):
                if stream is not None:
                    stream.close()
    print(f"wrote {OUTPUT}")


if __name__ == "__main__":
    main()
