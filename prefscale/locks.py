"""One writer per output directory: an OS file lock, and a record of its owner with a heartbeat.

Two jobs writing one run directory (or one score output) would each resume from what they
read at start and write the same ids twice. The lock is `filelock`'s (flock on the lock file):
the kernel grants it to one process at a time and releases it when that process dies, so a
lock a dead job left is taken over without a race, and two processes can never both hold it.
Beside it the owner's host and pid are recorded and touched every HEARTBEAT_S, for the one-line
error a second writer gets and the note a taker-over prints. Object-store URIs have no locks,
so they are not locked (the README says so).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator

from filelock import FileLock, Timeout

from prefscale.errors import PrefscaleError

LOCK_NAME = ".prefscale.lock"
OWNER_NAME = ".prefscale.owner"
HEARTBEAT_S = 30.0


def _owner() -> dict[str, object]:
    return {"host": socket.gethostname(), "pid": os.getpid(), "started": time.time()}


def _read_owner(path: str) -> dict:
    try:
        with open(path) as handle:
            return json.load(handle)
    except (FileNotFoundError, json.JSONDecodeError):
        return {}


@contextlib.contextmanager
def exclusive(directory: str, log: Callable[[str], None] = print) -> Iterator[None]:
    """Hold ``directory``'s lock while writing it; a live second writer gets a one-line error."""
    if "://" in directory:
        yield
        return
    os.makedirs(directory, exist_ok=True)
    lock = FileLock(os.path.join(directory, LOCK_NAME))
    owner_path = os.path.join(directory, OWNER_NAME)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        owner = _read_owner(owner_path)
        age = time.time() - os.path.getmtime(owner_path) if os.path.exists(owner_path) else float("nan")
        raise PrefscaleError(f"{directory} is being written by {owner.get('host')}:{owner.get('pid')} (heartbeat {age:.0f}s ago); "
                             f"wait for that job, or use another --run-dir / --out") from None
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_S):
            with contextlib.suppress(OSError):
                os.utime(owner_path)

    heart = threading.Thread(target=beat, daemon=True, name="prefscale-lock-heartbeat")
    try:
        if previous := _read_owner(owner_path):  # its owner died holding it: the kernel released the lock
            log(f"  taking over a stale lock on {directory} (owner {previous.get('host')}:{previous.get('pid')} is gone)")
        staged = f"{owner_path}.{os.getpid()}"
        with open(staged, "w") as handle:
            json.dump(_owner(), handle)
        os.replace(staged, owner_path)
        heart.start()
        yield
    finally:
        stop.set()
        if heart.is_alive():
            heart.join()
        with contextlib.suppress(FileNotFoundError):
            os.remove(owner_path)
        lock.release()
