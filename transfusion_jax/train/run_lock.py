"""One process trains a workdir at a time.

Two processes training the same run (the same command started twice, or a sweep re-run
while a job of an earlier one still trains) would write the same checkpoints and metrics
over each other. While a run trains, its writing process holds an advisory lock
(``fcntl.flock``) on the workdir folder itself; a second process asking for it stops with
`WorkdirBusyError` before it reads or writes anything of the run. The operating system
drops the lock when its process ends, however it ends (SIGKILL included), so a cut-off run
leaves no stale lock. Once its state is built or restored, the holder names itself (pid,
host, start time) in ``WORKDIR/.training.lock`` for that message; a refused or failed start
writes nothing.

Where it does not apply: ``gs://`` workdirs (object storage has no locks), and filesystems
that refuse ``flock`` on a folder (some network mounts: a warning, and no lock).
"""

from __future__ import annotations

import fcntl
import logging
import os
import socket
import time
from pathlib import Path

from transfusion_jax import parallel
from transfusion_jax.config import ConfigError
from transfusion_jax.paths import is_remote

log = logging.getLogger(__name__)

LOCK_NAME = ".training.lock"  # names the holder; the lock is on the folder


class WorkdirBusyError(ConfigError):
    """Another process is training this workdir now."""


class RunLock:
    """The lock of one run's workdir, taken by this process's writer (process 0)."""

    def __init__(self, workdir: str | os.PathLike):
        self.workdir = workdir
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Takes the lock if the workdir exists (the checks that read it come after); does
        nothing if it is held already, for a ``gs://`` workdir, or on a process other than
        the writer. Writes nothing.

        Raises:
          WorkdirBusyError: another process holds it (the message names it).
        """
        if (self.held or is_remote(str(self.workdir)) or not parallel.is_writer()
                or not Path(self.workdir).is_dir()):
            return
        fd = os.open(self.workdir, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            holder = Path(self.workdir) / LOCK_NAME
            holder = holder.read_text().strip() if holder.is_file() else "another process"
            raise WorkdirBusyError(
                f"{self.workdir} is being trained by {holder}; wait for that run to end "
                "(or stop it), then run this command again: two processes training one "
                "workdir would overwrite each other's checkpoints") from None
        except OSError as e:  # a filesystem without flock on folders
            os.close(fd)
            log.warning("%s: cannot lock the workdir (%s); nothing stops a second process "
                        "from training it at the same time", self.workdir, e)
            return
        self._fd = fd

    def announce(self) -> None:
        """Names this process as the holder in ``WORKDIR/.training.lock``: call it once the
        run is sure to train (its state built or restored), so that a refused or failed
        start leaves the workdir as it was."""
        if self.held:
            (Path(self.workdir) / LOCK_NAME).write_text(
                f"pid {os.getpid()} on {socket.gethostname()} since "
                f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")

    def release(self) -> None:
        """Drops the lock (the holder file stays, and is overwritten by the next holder)."""
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None
