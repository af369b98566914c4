"""The one place the version is written; pyproject reads it (hatch), and `--version` prints it without imports."""

__version__ = "0.1.0"
