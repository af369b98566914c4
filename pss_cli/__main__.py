"""`python -m pss_cli` and the `pss-dup` console script."""

from __future__ import annotations

from pss_cli.cli import main

if __name__ == "__main__":
    main()
