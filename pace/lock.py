"""Single-flight: one process computes a missing cache entry, the others wait for it and read it.

A lock is a file created with ``O_CREAT | O_EXCL`` (atomic on local file systems and on NFSv3+) next to
the entry it guards. It holds the holder's ``host pid`` and its mtime is a heartbeat, refreshed by a
daemon thread while the holder computes. A waiter takes the lock over when it is stale:

- the holder runs on this host and its pid is gone (a crashed trial: taken over at once), or
- the heartbeat is older than ``stale_after`` seconds (a holder on another node that died).

The waiter polls; on a cluster with shared storage there is no cross-node event to wait on. After
acquiring, callers re-check for the entry, since the previous holder may have finished it.
"""

from __future__ import annotations

import contextlib
import os
import socket
import threading
import time
from pathlib import Path
from typing import Iterator

HEARTBEAT_S = 5.0
STALE_AFTER_S = 60.0


def _holder_id() -> str:
    return f"{socket.gethostname()} {os.getpid()}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def is_stale(path: Path, stale_after: float = STALE_AFTER_S) -> bool:
    """A lock whose holder is known dead (same host) or whose heartbeat stopped ``stale_after`` ago."""
    try:
        text = path.read_text()
        age = time.time() - path.stat().st_mtime
    except FileNotFoundError:
        return False  # released meanwhile: not stale, just gone
    host, _, pid = text.strip().rpartition(" ")
    if host == socket.gethostname() and pid.isdigit() and not _pid_alive(int(pid)):
        return True
    return age > stale_after


def _try_create(path: Path) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        f.write(_holder_id())
    return True


def _break(path: Path) -> None:
    """Remove a stale lock. Renaming it first means two waiters that both judged it stale cannot both
    remove a lock that a third process has just re-created: only one rename of the old file succeeds."""
    tomb = path.with_name(f"{path.name}.stale.{os.getpid()}")
    try:
        os.replace(path, tomb)
    except FileNotFoundError:
        return
    tomb.unlink(missing_ok=True)


@contextlib.contextmanager
def file_lock(path: str | Path, poll: float = 0.2, heartbeat: float = HEARTBEAT_S,
              stale_after: float = STALE_AFTER_S) -> Iterator[bool]:
    """Hold ``path`` exclusively across processes and nodes. Yields True if the lock was free at once,
    False if this process had to wait for another holder (which probably produced the entry)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    waited = False
    while not _try_create(path):
        waited = True
        if is_stale(path, stale_after):
            _break(path)
            continue
        time.sleep(poll)
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(heartbeat):
            with contextlib.suppress(OSError):
                os.utime(path)

    thread = threading.Thread(target=beat, name=f"lock-heartbeat {path.name}", daemon=True)
    thread.start()
    try:
        yield not waited
    finally:
        stop.set()
        thread.join()
        with contextlib.suppress(FileNotFoundError):
            if path.read_text() == _holder_id():  # never remove a lock someone took over
                path.unlink()
