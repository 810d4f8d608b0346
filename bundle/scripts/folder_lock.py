"""A lock on a folder that one process writes (a training's ``model_dir``): two trainings started on one
folder would otherwise both pass the "already holds a training" check and replace each other's checkpoints."""

from __future__ import annotations

import atexit
import contextlib
import json
import logging
import os
import socket
import sys
import time

__all__ = ["FolderLock", "FolderInUseError", "LOCK_NAME"]

LOCK_NAME = ".diffmic.lock"
logger = logging.getLogger(__name__)


class FolderInUseError(RuntimeError):
    """Another live process holds the folder's lock."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        return True
    return True


class FolderLock:
    """``<folder>/.diffmic.lock``, created atomically (``O_EXCL``) with the owner's process id, host, start time
    and command line. A lock whose process is gone (on this host) is stale: it is named in the log and taken
    over. The lock is released by :meth:`release` (at the end of training) or when the process exits; a
    process may acquire a lock it already holds (a second training in one Python session).

    Args:
        folder: the folder to lock (created if missing).
    """

    def __init__(self, folder: str) -> None:
        self.folder = folder
        self.path = os.path.join(folder, LOCK_NAME)

    def acquire(self) -> FolderLock:
        os.makedirs(self.folder, exist_ok=True)
        owner = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        owner["command"] = " ".join(sys.argv)
        for _ in range(2):  # a second try after removing a stale lock
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = self._holder()
                if holder.get("pid") == os.getpid() and holder.get("host") == owner["host"]:
                    return self
                if not self._stale(holder):
                    raise FolderInUseError(
                        f"{self.folder} is in use by process {holder.get('pid')} on {holder.get('host')} since "
                        f"{holder.get('started')} ({holder.get('command', '?')}). Wait for it to finish or choose "
                        f"another --model_dir; if that process is gone, delete {self.path}"
                    ) from None
                logger.warning(f"removing the stale lock {self.path} of process {holder.get('pid')}, which is gone")
                with contextlib.suppress(FileNotFoundError):
                    os.remove(self.path)
                continue
            with os.fdopen(descriptor, "w") as f:
                json.dump(owner, f)
            atexit.register(self.release)
            return self
        raise FolderInUseError(f"could not lock {self.folder}: another process took {self.path} meanwhile")

    def release(self, *_) -> None:
        """Removes the lock file if this process holds it (safe to call more than once; ignite passes the engine)."""
        holder = self._holder()
        if holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)

    def _holder(self) -> dict:
        try:
            with open(self.path) as f:
                holder = json.load(f)
            return holder if isinstance(holder, dict) else {}
        except (OSError, ValueError):
            return {}  # unreadable or half-written: judged by its age in _stale

    def _stale(self, holder: dict) -> bool:
        if not holder:  # a lock being written right now is younger than a few seconds
            try:
                return time.time() - os.path.getmtime(self.path) > 10
            except FileNotFoundError:
                return True
        if holder.get("host") != socket.gethostname():
            return False  # another machine's process cannot be checked from here
        return not isinstance(holder.get("pid"), int) or not _alive(holder["pid"])
