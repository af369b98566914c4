"""Output file names, shared by `dump` and `watch --dump`: the default name, and --name templates.

A template holds literal text of safe characters (letters, digits and . _ + -) and {fields}; every value put in a
field is reduced to those characters too, so a name made from a template is always one plain file name: no path
separator, no leading dot or dash, nothing a shell would read as something else. "-" alone stands for stdout.
"""

from __future__ import annotations

import re
import string
import time

#: Characters kept from a value; anything else becomes "_".
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")
#: The fields every template may use; `watch` adds {n}, its action count.
FIELDS = ("name", "pid", "trigger", "time", "host", "container")
WATCH_FIELDS = (*FIELDS, "n")
#: The name that stands for standard output.
STDOUT = "-"


def safe(value: object, *, empty: str = "process") -> str:
    """`value` as characters safe in any shell and path, never empty nor starting with a dot."""
    return _UNSAFE.sub("_", str(value)).strip("._") or empty


def stamp(when: float) -> str:
    """YYMMDD_HHMMSS in local time: the {time} field, and the default name's."""
    return time.strftime("%y%m%d_%H%M%S", time.localtime(when))


def default_name(name: str, pid: int, when: float, suffix: str) -> str:
    """NAME_PID_YYMMDD_HHMMSS.SUFFIX, with the name reduced to characters safe in any shell."""
    return f"{safe(name)[:64]}_{pid}_{stamp(when)}{suffix}"


def template_problem(template: str, fields: tuple[str, ...] = FIELDS) -> str | None:
    """Why a --name template cannot make a file name, or None."""
    try:
        parsed = list(string.Formatter().parse(template))
    except ValueError as exc:
        return f"--name {template!r} is not a template: {exc}"
    names = [f for _, f, _, _ in parsed if f is not None]
    unknown = [n for n in names if n not in fields]
    if unknown:
        return f"--name knows only {{{'} {'.join(fields)}}}, not {{{unknown[0]}}}"
    if any(spec or conversion for _, f, spec, conversion in parsed if f is not None):
        return f"--name {template!r}: a field takes no format (write {{pid}}, not {{pid:...}} or {{pid!r}})"
    if template == STDOUT:
        return None
    literal = "".join(text for text, _, _, _ in parsed)
    if _UNSAFE.search(literal) or not (names or literal) or template.startswith((".", "-")):
        return f"--name {template!r} may hold only letters, digits and . _ + - besides its {{fields}}"
    return None


def file_name(
    template: str, *, name: str, pid: int, trigger: str, when: float, n: int = 1, container: str | None = None
) -> str:
    """A file name from a --name template that template_problem accepted.

    `container` is the process's container as {container} shows it (a short ID, or a machine's name): "host"
    outside one."""
    import socket  # only a template names the host: not loaded with every command that imports this module

    values = {
        "name": safe(name)[:64],
        "pid": pid,
        "trigger": safe(trigger),
        "time": stamp(when),
        "host": safe(socket.gethostname(), empty="host"),
        "n": n,
        "container": safe(container or "host", empty="host")[:64],
    }
    return template.format(**values)
