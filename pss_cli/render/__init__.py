"""Rendering: rich tables for people, JSON and JSON Lines for scripts. Nothing here captures or changes anything."""

from __future__ import annotations


def printable(text: str) -> str:
    """Text that a process chose (a name, an argument, a path) made safe for a terminal, as ps(1) does it.

    Every character that is not printable (a newline, an escape, a bell) shows as '?': none can start a terminal
    escape sequence, and a one-line message stays one line. JSON output keeps the exact text.
    """
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else "?" for c in text)


def human_size(value: int) -> str:
    """A byte count in binary units, as tables and shell completion show it: 512 B, 2.9 KiB, 1.5 GiB."""
    amount = float(value)
    for unit in ("B", "KiB", "MiB"):
        if amount < 1024:
            return f"{amount:.0f} {unit}" if unit == "B" else f"{amount:.1f} {unit}"
        amount /= 1024
    return f"{amount:.1f} GiB"
