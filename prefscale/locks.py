"""One writer per output directory: a lock file with its owner and a heartbeat.

Two jobs writing one run directory (or one score output) would each resume from what they
read at start and write the same ids twice. The lock is created atomically (O_EXCL); its owner
touches it every HEARTBEAT_S, so a lock whose owner died is recognised as stale (its process is
gone on this host, or its heartbeat is older than STALE_AFTER_S) and taken over, saying so.
Object-store URIs have no atomic create, so they are not locked (the README says so).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

import psutil

from prefscale.errors import PrefscaleError

LOCK_NAME = ".prefscale.lock"
HEARTBEAT_S = 30.0
STALE_AFTER_S = 180.0


def _owner() -> dict[str, object]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}


def _is_stale(path: str, owner: dict) -> bool:
    heartbeat_age = time.time() - os.path.getmtime(path)
    if heartbeat_age > STALE_AFTER_S:
        return True
    same_host = owner.get("host") == socket.gethostname()
    return same_host and not psutil.pid_exists(int(owner.get("pid", -1)))


def _create(path: str) -> bool:
    try:
        fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as handle:
        json.dump(_owner(), handle)
    return True


@contextlib.contextmanager
def exclusive(directory: str, log: Callable[[str], None] = print) -> Iterator[None]:
    """Hold ``directory``'s lock while writing it; a live second writer gets a one-line error."""
    if "://" in directory:
        yield
        return
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, LOCK_NAME)
    while not _create(path):
        try:
            with open(path) as handle:
                owner = json.load(handle)
        except (FileNotFoundError, json.JSONDecodeError):
            owner = {}  # released, or being written this instant: look again
        if not owner or _is_stale(path, owner):
            if owner:
                log(f"  taking over a stale lock on {directory} (owner {owner.get('host')}:{owner.get('pid')} is gone)")
            with contextlib.suppress(FileNotFoundError):
                os.remove(path)
            continue
        age = time.time() - os.path.getmtime(path)
        raise PrefscaleError(f"{directory} is being written by {owner.get('host')}:{owner.get('pid')} (heartbeat {age:.0f}s ago); "
                             f"wait for that job, or use another --run-dir / --out (delete {path} only if that job is gone)")
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                os.utime(path)

    heart = threading.Thread(target=beat, daemon=True, name="prefscale-lock-heartbeat")
    heart.start()
    try:
        yield
    finally:
        stop.set()
        heart.join()
        with contextlib.suppress(FileNotFoundError):
            os.remove(path)
