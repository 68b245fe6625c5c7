"""Output folders are owned: one run at a time, and a finished or interrupted run is never
overwritten by accident.

A run takes an exclusive ``fcntl.flock`` on a lock file in its ``--save_path`` for its whole life.
The kernel drops the lock when the process ends in any way (even ``kill -9``), so a stale lock
cannot exist; a second run on the folder refuses with the holder's pid, which the holder writes
into the lock file. A fresh run into a folder that already holds a run's outputs refuses unless
``--resume`` (continue it) or ``--overwrite`` (delete those outputs first) is given. All refusals
happen before anything is written.

The lock file and every name of the run's outputs must be a regular file (or a real folder) or
absent: a symbolic link there would make the run write through it, and a FIFO would block the
run forever, so either is refused in one line naming it. The lock is opened with ``O_NOFOLLOW``
and ``O_NONBLOCK`` and checked with ``fstat``, so one planted after the check is refused too.
"""
from __future__ import annotations

import errno
import fcntl
import os
import stat
import shutil
from pathlib import Path
from typing import Sequence

from glora.errors import ConfigError, OutputError
from glora.io.files import check_regular, make_folder


class OutputFolder:
    """``--save_path`` of one run: ``check`` (read-only), then ``acquire`` for the run's life.

    ``outputs`` are the names (files or folders) whose presence means the folder holds a run;
    ``extras`` are further names of the run's that ``--overwrite`` deletes with them (logs, the
    resolved config); ``lock_name`` is the lock file's name (one per run sharing the folder).
    """

    def __init__(self, path: "str | os.PathLike", outputs: Sequence[str], extras: Sequence[str] = (),
                 lock_name: str = ".lock", flag: str = "--save_path"):
        self.path, self.outputs, self.flag = Path(path), tuple(outputs), flag
        self.extras = tuple(extras)
        self.lock_path = self.path / lock_name
        self._fd: "int | None" = None

    def held_outputs(self) -> list[str]:
        """The outputs of a run that are present in the folder."""
        return [name for name in self.outputs if (self.path / name).exists()]

    def check(self, resume: bool, overwrite: bool) -> None:
        """Refuse, writing nothing, a folder under a file, one in use, or one holding a run that
        this run would overwrite without ``--resume`` or ``--overwrite``."""
        if resume and overwrite:
            raise ConfigError("--resume continues the run in --save_path and --overwrite deletes it; "
                              "give one of them")
        blocker = next((p for p in (self.path, *self.path.parents) if p.exists()), None)
        if blocker is not None and not blocker.is_dir():
            raise OutputError(f"{self.flag} {self.path}: {blocker} is a file, not a folder")
        self.check_files()
        holder = self.holder()
        if holder is not None:
            raise self._busy(holder)
        held = self.held_outputs()
        if held and not (resume or overwrite):
            raise OutputError(f"{self.path} holds a run ({', '.join(held)}); continue it with --resume, "
                              f"replace it with --overwrite, or choose another {self.flag}")

    def check_files(self) -> None:
        """Refuse (OutputError naming it) a symbolic link or a non-regular file at the lock or at
        any name of the run's outputs; a run's outputs are regular files and real folders."""
        if self.path.is_dir():
            check_regular(self.lock_path)
            for name in self.outputs + self.extras:
                check_regular(self.path / name, folder_ok=True)

    def holder(self) -> "str | None":
        """The pid (as written) of the run holding the folder's lock, or None if it is free."""
        try:
            fd = _open_lock(self.lock_path, os.O_RDONLY)
        except OSError:
            return None  # no lock file (or unreadable: acquire() will report the folder)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return None
        except BlockingIOError:
            return _read_pid(fd)
        finally:
            os.close(fd)  # closing also drops a lock taken here

    def _busy(self, holder: str) -> OutputError:
        return OutputError(f"{self.path} is in use by another run (pid {holder}); wait for it to "
                           f"finish or choose another {self.flag}")

    def acquire(self, overwrite: bool = False, expected: "Sequence[str] | None" = None) -> "OutputFolder":
        """Create the folder, take the lock (refusing if held) and write this process's pid.

        ``expected``: the outputs ``check`` saw; if others appeared meanwhile (a run started and
        wrote between the check and the lock), refuse. ``overwrite`` deletes the outputs.
        """
        make_folder(self.path, self.flag)
        if not os.access(self.path, os.W_OK):  # an existing lock file may be writable in a read-only folder
            reason = "Read-only file system" if os.statvfs(self.path).f_flag & os.ST_RDONLY else "Permission denied"
            raise OutputError(f"cannot write in {self.flag} {self.path}: {reason}")
        check_regular(self.lock_path)
        try:
            fd = _open_lock(self.lock_path, os.O_RDWR | os.O_CREAT)
        except OSError as err:
            raise OutputError(f"cannot write in {self.flag} {self.path}: {err.strerror or err}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            error = self._busy(_read_pid(fd))
            os.close(fd)
            raise error from None
        self._fd = fd
        try:
            os.ftruncate(fd, 0)
            os.write(fd, f"{os.getpid()}\n".encode())
            held = self.held_outputs()
            if expected is not None and set(held) - set(expected):
                raise OutputError(f"{self.path}: another run wrote {', '.join(sorted(set(held) - set(expected)))} "
                                  "meanwhile; run again to see what it holds")
            if overwrite:
                self._delete([name for name in self.outputs + self.extras if (self.path / name).exists()])
        except OSError as err:
            self.release()
            raise OutputError(f"cannot write in {self.flag} {self.path}: {err.strerror or err}") from None
        except BaseException:
            self.release()
            raise
        return self

    def _delete(self, names: Sequence[str]) -> None:
        for name in names:
            target = self.path / name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink()

    def release(self) -> None:
        """Drop the lock (the lock file stays: removing it could let two runs lock two files)."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "OutputFolder":
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def _open_lock(path: Path, flags: int) -> int:
    """Open a lock file without following a link and without blocking on a FIFO; OutputError if
    what is there is not a regular file (a link gives ELOOP under O_NOFOLLOW)."""
    try:
        fd = os.open(path, flags | os.O_NOFOLLOW | os.O_NONBLOCK, 0o666)
    except OSError as err:
        if err.errno == errno.ELOOP:
            raise OutputError(f"{path} is a symbolic link, not a regular file; refusing to follow it") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OutputError(f"{path} is not a regular file; refusing to use it as a lock")
    return fd


def _read_pid(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 64).decode("ascii", "replace").strip() or "unknown"
