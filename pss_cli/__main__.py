"""`python -m pss_cli` and the `pss-dup` console script."""

from __future__ import annotations

import sys

from pss_cli import interrupts

# Before anything else is imported: a Ctrl-C or SIGTERM from now on goes through pss-dup's handler, so it ends
# the tool with one line (and, once a process is touched, only after it is restored), never with a traceback.
interrupts.install()


def main() -> None:
    """Answer `--version` before importing anything else, and run a declared command that the quick path fully
    understands without importing click (pss_cli.cli.quick); click runs everything else."""
    if sys.argv[1:] == ["--version"]:
        from pss_cli._version import __version__

        print(f"pss-dup, version {__version__}")
        sys.exit(0)
    try:
        from pss_cli.cli import quick

        quick.main(sys.argv[1:])  # returns only when it leaves the command line to click
        from pss_cli.cli.app import main as cli_main
    except KeyboardInterrupt as exc:  # nothing was touched yet
        signo = exc.signo if isinstance(exc, interrupts.Terminated) else 2
        print(f"pss-dup: {'interrupted' if signo == 2 else f'ended by {exc}'}; nothing was touched", file=sys.stderr)
        sys.exit(128 + signo)
    cli_main()


if __name__ == "__main__":
    main()
