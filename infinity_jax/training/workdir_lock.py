"""One run per workdir: an exclusive ``flock`` on ``WORKDIR/.lock`` held by process 0 for the run.

The lock file records who holds it (host, pid, start time, command) so that a second run is told
whom to wait for. The kernel drops the lock when its process ends, even by ``kill -9``, so a stale
file never blocks a rerun. Remote workdirs (``gs://``) are not locked.
"""
from __future__ import annotations

import fcntl
import json
import os
import pathlib
import socket
import sys
import time

LOCK_NAME = ".lock"


class WorkdirLockedError(RuntimeError):
    """Another live run holds the workdir."""


class WorkdirLock:
    def __init__(self, workdir: str | os.PathLike):
        self.path = pathlib.Path(workdir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "WorkdirLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = self._holder(fd)
            os.close(fd)
            raise WorkdirLockedError(f"workdir {self.path.parent} is in use by {holder} (lock {self.path}); wait "
                                     f"for that run to end or stop it, or use another --workdir") from None
        info = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.strftime("%Y-%m-%d %H:%M:%S"),
                "command": " ".join(sys.argv)[:500]}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        self._fd = fd
        return self

    @staticmethod
    def _holder(fd: int) -> str:
        try:
            info = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
            return f"pid {info['pid']} on {info['host']} since {info['since']}"
        except (ValueError, KeyError, OSError):
            return "another process"

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
