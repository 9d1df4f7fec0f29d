"""A per-file writer lock: one process, and one thread in it, writes a file at a time.

:func:`hold` takes an exclusive ``fcntl.flock`` on ``<path>.lock`` without waiting and records
its holder in that file (pid, host, what it is doing, command line, since when). A second writer,
another process or another thread of this one, gets :class:`LockHeld` at once with the holder's
record; it never waits and never writes. The thread that holds the lock may take it again (a
merge inside a generation). The lock file is removed on release, and the kernel drops the lock
of a process that dies, so a killed run leaves no stale lock. Forked children (a grading
process) close their copy, so that a child outliving its parent holds nothing.
"""

from __future__ import annotations

import fcntl
import json
import os
import shlex
import socket
import sys
import threading
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

__all__ = ["LockHeld", "lock_file", "hold", "command_line"]


class LockHeld(RuntimeError):
    """The lock of ``path`` is held by another writer; ``holder`` is its record (None when it was
    being taken or released at that moment)."""

    def __init__(self, path: Path, holder: dict[str, Any] | None):
        self.path, self.holder = path, holder
        super().__init__(f"{path}: held by {holder!r}")


_HELD: dict[str, dict[str, Any]] = {}  # lock file (real path) -> {"thread", "depth", "fd", "record"}
_GUARD = threading.Lock()


def _close_in_child() -> None:
    for entry in _HELD.values():
        try:
            os.close(entry["fd"])
        except OSError:
            pass
    _HELD.clear()


os.register_at_fork(after_in_child=_close_in_child)


def lock_file(path: str | os.PathLike) -> Path:
    """The lock file of ``path``: ``<path>.lock`` beside it."""
    return Path(str(path) + ".lock")


def command_line(limit: int = 500) -> str:
    """This process's command line (``/proc/self/cmdline`` where there is one: it keeps ``-m`` and
    ``-c``), cut to ``limit`` characters."""
    try:
        args = [a.decode(errors="replace") for a in Path("/proc/self/cmdline").read_bytes().split(b"\0") if a]
    except OSError:
        args = []
    cmd = shlex.join(args or [sys.executable, *sys.argv])
    return cmd if len(cmd) <= limit else cmd[: limit - 3] + "..."


def _read_record(path: Path, wait_s: float = 0.5) -> dict[str, Any] | None:
    """The holder's record; it writes it just after taking the lock, so an empty file is read again
    for up to ``wait_s``."""
    end = time.monotonic() + wait_s
    while True:
        try:
            text = path.read_text()
        except OSError:
            return None  # released (and removed) just now
        if text.strip():
            try:
                rec = json.loads(text)
                return rec if isinstance(rec, dict) else None
            except ValueError:
                pass  # being written
        if time.monotonic() >= end:
            return None
        time.sleep(0.02)


def _acquire(path: Path, record: dict[str, Any]) -> int:
    for _ in range(100):
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise LockHeld(path, _read_record(path)) from None
        except BaseException:
            os.close(fd)
            raise
        # the holder before us may have removed the file (and another writer made a new one)
        # between our open and our flock: then our lock is on a file nobody else sees
        try:
            st, mine = os.stat(path), os.fstat(fd)
            if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
                os.ftruncate(fd, 0)
                os.write(fd, (json.dumps(record) + "\n").encode())
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)
    raise OSError(f"{path}: could not take the lock (the file kept being replaced)")


def _release(path: Path, fd: int) -> None:
    try:
        st, mine = os.stat(path), os.fstat(fd)
        if (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino):
            os.unlink(path)
    except FileNotFoundError:
        pass
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


@contextmanager
def hold(path: str | os.PathLike, what: str) -> Iterator[dict[str, Any]]:
    """Hold the writer lock of ``path`` (the file ``<path>.lock``) for the ``with`` block; yields the
    holder's record. Raises :class:`LockHeld` at once when another process or thread holds it."""
    lock = lock_file(path)
    key = os.path.realpath(lock)
    me = threading.get_ident()
    with _GUARD:
        entry = _HELD.get(key)
        if entry is not None and entry["thread"] != me:
            raise LockHeld(lock, {**entry["record"], "thread": entry["thread_name"]})
        if entry is not None:
            entry["depth"] += 1
    if entry is not None:  # re-entered by its holder
        try:
            yield entry["record"]
        finally:
            with _GUARD:
                entry["depth"] -= 1
        return
    record = {"pid": os.getpid(), "host": socket.gethostname(), "what": what, "command": command_line(),
              "since": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    fd = _acquire(lock, record)
    with _GUARD:
        _HELD[key] = {"thread": me, "thread_name": threading.current_thread().name, "depth": 1, "fd": fd,
                      "record": record}
    try:
        yield record
    finally:
        with _GUARD:
            _HELD.pop(key, None)
        _release(lock, fd)
