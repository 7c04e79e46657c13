"""User-facing errors.

Everything a user can get wrong (a config, a data file, a model name) raises
:class:`GenftError`. The CLI prints its message as one line on stderr and exits
non-zero; anything else escaping is a genft bug and keeps its traceback.
"""

from __future__ import annotations

import difflib
import errno
from collections.abc import Iterable
from contextlib import contextmanager


ECHO_LIMIT = 80  # characters of a user's value echoed back in an error message


class GenftError(Exception):
    """A problem with the user's input, described well enough to fix it."""


def short(value, limit: int = ECHO_LIMIT, plain: bool = False) -> str:
    """``repr(value)`` (or ``str`` when ``plain``) cut to ``limit`` characters: an error line
    echoes what the user wrote, never megabytes of it. The repr of a huge nested value is
    never built whole (reprlib stops early)."""
    import reprlib

    if plain:
        text = str(value)
    else:
        r = reprlib.Repr()
        r.maxlevel, r.maxstring, r.maxother, r.maxlist, r.maxdict = 3, limit, limit, 8, 8
        text = r.repr(value)
    return text if len(text) <= limit else f"{text[:limit - 1]}…"


def did_you_mean(name: str, choices: Iterable[str]) -> str:
    """Return ' (did you mean "x"?)' for the closest valid name, or ''."""
    close = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return f' (did you mean "{close[0]}"?)' if close else ""


def unknown_name(kind: str, name: str, choices: Iterable[str]) -> str:
    """The one message for a name missing from a registry (method, scoring rule, backend)."""
    choices = list(choices)
    return f"unknown {kind} {name!r}{did_you_mean(name, choices)}; choose from {', '.join(choices)}"


def check_writable_dir(path, option: str = "--out") -> None:
    """Create ``path`` if needed and prove a file can be written there, before any work starts
    (a path under a regular file, a read-only disk, no permission: one line, not a traceback)."""
    import os
    from pathlib import Path

    folder = Path(path)
    probe = folder / f".genft-write-probe-{os.getpid()}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise GenftError(f"{option} {folder}: cannot write here ({e.strerror or e})") from None


@contextmanager
def disk_full_is_one_line(out, what: str, kept: str = "every finished cell is stored intact"):
    """A full disk or exhausted quota while writing under ``out`` becomes one line saying what
    was being written and that finished results are intact (other OS errors pass through)."""
    try:
        yield
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT):
            raise
        raise GenftError(f"{out}: disk full while {what} ({e.filename or e.strerror}); {kept} "
                         f"— free space and run the same command again") from None
