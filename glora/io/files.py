"""Writing outputs so that a reader never sees half of one: the one helper every writer uses.

``atomic_write(path, data)`` writes ``.<name>.tmp`` in the same folder, fsyncs it and renames it
over ``path``; ``atomic_folder(folder)`` does the same for a folder of files. A failure of any
kind (a full disk, a read-only folder, Ctrl-C) removes the temporary file or folder and leaves
the previous ``path`` as it was; one of the operating system (``OSError``, or a library's error
that carries one) becomes an :class:`~glora.errors.OutputError` naming the path. A process killed
outright cannot clean up: its ``.<name>.tmp`` is truncated and reused by the next write.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import IO, Callable, Iterator, Union

from glora.errors import OutputError

Data = Union[bytes, str, Callable[[IO[bytes]], None]]


class _Tracked:
    """A binary file that remembers what interrupted a write: ``torch.save`` turns an ``OSError``
    (no space left, ...) and even a ``KeyboardInterrupt`` raised inside its writer into a
    ``RuntimeError`` with no trace of the cause."""

    def __init__(self, handle: IO[bytes]):
        self.handle, self.error = handle, None

    def write(self, data) -> int:
        try:
            return self.handle.write(data)
        except BaseException as err:  # OSError, or Ctrl-C / SIGTERM arriving mid-write
            self.error = err
            raise

    def flush(self) -> None:
        self.handle.flush()


def make_folder(folder: "str | os.PathLike", what: str = "folder") -> Path:
    """Create ``folder`` (and its parents); OutputError naming a file in the way or the OS reason."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()), folder)
        raise OutputError(f"{what} {folder}: {blocker} is a file, not a folder") from None
    except OSError as err:
        raise OutputError(f"cannot create {what} {folder}: {err.strerror or err}") from None
    return folder


def _os_cause(err: BaseException, tracked: "_Tracked | None" = None) -> "OSError | None":
    """The operating-system error behind ``err``, if there is one."""
    if isinstance(err, OSError):
        return err
    if tracked is not None and isinstance(tracked.error, OSError):
        return tracked.error
    # Rust-backed writers (safetensors) report an I/O error only in their message.
    found = re.search(r"\(os error (\d+)\)", str(err))
    if found:
        code = int(found.group(1))
        return OSError(code, os.strerror(code))
    return None


def _failure(path: Path, cause: OSError) -> OutputError:
    kept = "; the previous one is kept" if path.exists() else ""
    reason = cause.strerror or str(cause)
    if cause.errno == errno.ENOSPC:
        reason = "no space left on the device"
    return OutputError(f"cannot write {path}: {reason}{kept}")


def _remove(path: "str | os.PathLike") -> None:
    with contextlib.suppress(OSError):
        os.remove(path)


def _sync_folder(folder: Path) -> None:
    # The rename is durable once the folder's entry is on disk; not every file system allows it.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def atomic_write(path: "str | os.PathLike", data: Data, *, unique: bool = False) -> Path:
    """Write ``data`` (bytes, text as UTF-8, or ``write(binary_file)``) to ``path`` atomically.

    ``unique=True`` names the temporary file uniquely, for a file that several processes may write
    at once (a shared cache); by default it is ``.<name>.tmp``, so a killed writer's leftover is
    reused rather than piling up.
    """
    path = Path(path)
    make_folder(path.parent)
    try:
        if unique:
            fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            tmp, handle = Path(name), os.fdopen(fd, "wb")
        else:
            tmp = path.with_name(f".{path.name}.tmp")
            handle = open(tmp, "wb")
    except OSError as err:
        raise _failure(path, err) from None
    tracked = _Tracked(handle)
    try:
        with handle:
            if callable(data):
                data(tracked)
            else:
                tracked.write(data.encode("utf-8") if isinstance(data, str) else data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException as err:
        _remove(tmp)
        if isinstance(tracked.error, (KeyboardInterrupt, SystemExit)) and tracked.error is not err:
            raise tracked.error from None  # the interrupt, not the RuntimeError torch made of it
        cause = _os_cause(err, tracked) if isinstance(err, Exception) else None
        if cause is None:
            raise
        raise _failure(path, cause) from None
    _sync_folder(path.parent)
    return path


@contextlib.contextmanager
def atomic_folder(folder: "str | os.PathLike") -> Iterator[Path]:
    """Yield an empty temporary folder beside ``folder``; on success it replaces ``folder``.

    On any failure in the block (or in the swap) the temporary folder is removed and ``folder``
    keeps its previous content.
    """
    folder = Path(folder)
    make_folder(folder.parent)
    tmp, old = folder.with_name(f".{folder.name}.tmp"), folder.with_name(f".{folder.name}.old")
    try:
        shutil.rmtree(tmp, ignore_errors=True)
        yield tmp
        for file in (p for p in tmp.rglob("*") if p.is_file()):
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
        shutil.rmtree(old, ignore_errors=True)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not folder.exists():
            os.replace(old, folder)  # the swap failed half-way: put the previous folder back
        cause = _os_cause(err) if isinstance(err, Exception) else None
        if cause is None:
            raise
        raise _failure(folder, cause) from None
    shutil.rmtree(old, ignore_errors=True)
    _sync_folder(folder.parent)
