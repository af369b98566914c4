"""`python -m pss_cli` and the `pss-dup` console script."""

from __future__ import annotations

import sys


def main() -> None:
    """Answer `--version` before importing click or anything else, so that it costs about one interpreter start."""
    if sys.argv[1:] == ["--version"]:
        from pss_cli._version import __version__

        print(f"pss-dup, version {__version__}")
        sys.exit(0)
    from pss_cli.cli import main as cli_main

    cli_main()


if __name__ == "__main__":
    main()
