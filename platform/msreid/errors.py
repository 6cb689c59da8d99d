"""The one exception type for bad user input, and the full-disk error every writer shares.

Raise ``UserError`` with a message that names the file, field or value, says
what is wrong and what to do. The CLI prints it on one line (``msreid SUB:
error: ...``) and exits with status 2; no traceback.

A full disk (``ENOSPC``), an exhausted quota (``EDQUOT``) or SQLite's "database
or disk is full" is not a bug either: every writer (synth, ingest, checkpoints,
MLflow artifacts and store) wraps its writes in ``disk_full_is_user_error``,
which turns them into one ``UserError`` naming the path, the space needed when
the writer knows it, the space free there, and what to do. The writers remove
their partial output themselves (temporary siblings renamed into place).
"""

from __future__ import annotations

import contextlib
import errno
import re
import shutil
from pathlib import Path
from typing import Callable, Iterator

DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
SQLITE_FULL = "database or disk is full"  # SQLITE_FULL's message (sqlite3.OperationalError)
# The same conditions as text: what is left of them after Ray or pyarrow re-raised them
# (pyarrow: "[Errno 28] Error writing bytes to file. Detail: [errno 28] No space left on device").
DISK_FULL_TEXT = re.compile(r"\[errno (?:28|122)\]|no space left on device|disk quota exceeded|"
                            + re.escape(SQLITE_FULL), re.IGNORECASE)


class UserError(Exception):
    """Bad input from the user (file, field or value), with what to do about it."""


class DiskFullError(UserError):
    """A write ran out of disk space or quota (see ``disk_full_is_user_error``)."""


def disk_full_cause(exc: BaseException | None) -> BaseException | None:
    """The ENOSPC / EDQUOT ``OSError`` or SQLite "disk is full" error in ``exc``'s chain, or None.

    Follows ``__cause__`` / ``__context__``: MLflow and SQLAlchemy wrap SQLite's error twice.
    """
    for e in _chain(exc):
        if isinstance(e, DiskFullError):
            continue  # already reported
        if (isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS) or DISK_FULL_TEXT.search(str(e)):
            return e
    return None


def reported_disk_full(exc: BaseException | None) -> str | None:
    """The message of a ``DiskFullError`` in ``exc``'s chain, or in its text (raised in a Ray
    worker, it reaches the driver as text inside Ray's error), or None."""
    chain = _chain(exc)
    for line in "\n".join(str(e) for e in chain).splitlines():
        if DiskFullError.__name__ + ": " in line:
            return line.split(DiskFullError.__name__ + ": ", 1)[1].strip()
    mine = [e for e in chain if isinstance(e, DiskFullError)]
    return str(mine[0]) if mine else None


def disk_full_report(exc: BaseException) -> str | None:
    """The one-line full-disk message for an error that reached a command's edge, or None.

    For errors that crossed a process boundary (a Ray Train worker, a Tune trial), whose
    chain is gone and whose text holds the worker's traceback: the ``DiskFullError``
    message in that text, or else the line naming the OS error; for a bare ``OSError``
    from a writer without its own handling, a message naming its file.
    """
    reported = reported_disk_full(exc)
    if reported is not None:
        return reported
    cause = disk_full_cause(exc)
    if isinstance(cause, OSError) and cause.filename:
        return disk_full_message(cause.filename, "a file", FREE_SPACE_ADVICE, cause)
    for line in "\n".join(str(e) for e in _chain(exc)).splitlines():
        if DISK_FULL_TEXT.search(line):
            return f"{line.strip()[:500]}; {FREE_SPACE_ADVICE}"
    return None


def user_error_message(exc: BaseException) -> str | None:
    """The one line a command prints for ``exc`` before exiting 2, or None for a bug (traceback).

    A ``UserError`` or a full disk however it arrived: Ray re-raises a worker's error with the
    worker's traceback in its text, from which the message line is taken.
    """
    full = disk_full_report(exc)
    if full is not None:
        return full
    if not isinstance(exc, UserError):
        return None
    text = str(exc)
    for line in reversed(text.splitlines()):
        if UserError.__name__ + ": " in line:
            return line.split(UserError.__name__ + ": ", 1)[1].strip()
    return text


FREE_SPACE_ADVICE = "free space there (or write elsewhere) and run the command again"


def _chain(exc: BaseException | None) -> list[BaseException]:
    out: list[BaseException] = []
    while exc is not None and all(exc is not e for e in out):
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def format_bytes(n: float) -> str:
    """``1234567`` -> ``1.2 MB`` (decimal units, as ``df -H`` prints them)."""
    for unit in ("bytes", "kB", "MB", "GB", "TB"):
        if abs(n) < 1000 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1000
    raise AssertionError("unreachable")


def free_bytes(path: str | Path) -> int | None:
    """Free space for this user on the filesystem holding ``path`` (its nearest existing parent)."""
    here = Path(path).absolute()
    for candidate in (here, *here.parents):
        if candidate.exists():
            try:
                return shutil.disk_usage(candidate).free
            except OSError:
                return None
    return None


def disk_full_message(path: str | Path, what: str, advice: str, cause: BaseException,
                      needed: int | None = None) -> str:
    """The one-line message of a full disk while writing ``what`` to ``path``."""
    quota = (isinstance(cause, OSError) and cause.errno == errno.EDQUOT) or \
        "quota" in str(cause).lower()
    problem = "disk quota exceeded" if quota else "no space left on the device"
    at = getattr(cause, "filename", None)
    at = f" (at {at})" if at and str(at) != str(path) else ""
    free = free_bytes(path)
    sizes = []
    if needed:
        sizes.append(f"it needs about {format_bytes(needed)}")
    if free is not None:
        sizes.append(f"{format_bytes(free)} free there now")
    sizes_text = f" ({', '.join(sizes)})" if sizes else ""
    return f"{problem} writing {what} to {path}{at}{sizes_text}; {advice}"


@contextlib.contextmanager
def disk_full_is_user_error(path: str | Path, what: str, advice: str,
                            needed: int | Callable[[], int | None] | None = None) -> Iterator[None]:
    """Turn a full disk inside the block into one ``DiskFullError`` (a ``UserError``).

    path: where the block writes (the user's --out, the run directory, the store);
    what: what it writes ("the manifest"); advice: what to do, including whether
    anything was left behind; needed: bytes the whole write needs, or a function
    computing it when the disk filled (None: unknown). Other errors pass unchanged.
    """
    try:
        yield
    except UserError:
        raise
    except Exception as exc:
        reported = reported_disk_full(exc)  # a worker's, naming its own path
        if reported is not None:
            raise DiskFullError(reported) from None
        cause = disk_full_cause(exc)
        if cause is None:
            raise
        try:
            size = needed() if callable(needed) else needed
        except Exception:  # noqa: BLE001 (an estimate must not hide the real error)
            size = None
        raise DiskFullError(disk_full_message(path, what, advice, cause, size)) from None
