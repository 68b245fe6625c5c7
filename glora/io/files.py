"""Writing outputs so that a reader never sees half of one: the one helper every writer uses.

``atomic_write(path, data)`` writes ``.<name>.tmp`` in the same folder, fsyncs it and renames it
over ``path``; ``atomic_folder(folder)`` does the same for a folder of files. A failure of any
kind (a full disk, a read-only folder, Ctrl-C) removes the temporary file or folder and leaves
the previous ``path`` as it was; one of the operating system (``OSError``, or a library's error
that carries one) becomes an :class:`~glora.errors.OutputError` naming the path. A process killed
outright cannot clean up: its ``.<name>.tmp`` is truncated and reused by the next write.

Every file written here gets one mode, that of a plain ``open``: 0666 less the umask (0644 under
the usual umask 022), folders 0777 less the umask. ``atomic_folder`` replaces only a folder of
its own kind (see there). ``check_regular`` and ``read_regular_text`` refuse a symbolic link or a
non-regular file (a FIFO would block a reader forever) in an output folder, in one line.
"""
from __future__ import annotations

import contextlib
import errno
import os
import re
import shutil
import stat
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
            os.fchmod(fd, FILE_MODE & ~umask())  # mkstemp makes 0600; a plain open would not
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
def atomic_folder(folder: "str | os.PathLike", replaces: "str | None" = None) -> Iterator[Path]:
    """Yield a path beside ``folder`` to build a folder at; on success it becomes ``folder``.

    ``folder`` may be absent or an empty folder. An existing folder with files is replaced only
    if it holds the file ``replaces`` (the mark of a previous folder of the same kind, such as
    ``config.json`` of a timm export); anything else there (a file, a symbolic link, a folder of
    other files, the current folder or one holding it) is refused with an ``OutputError`` before
    anything is written. On any failure in the block (or in the swap) the temporary folder is
    removed and ``folder`` keeps its previous content. The temporary and the swapped-out folders
    have unique names, so nothing of the same name beside ``folder`` is ever touched.
    """
    shown, folder = Path(folder), Path(os.path.abspath(folder))
    _check_replaceable(shown, folder, replaces)
    make_folder(folder.parent)
    try:
        work = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
    except OSError as err:
        raise _failure(shown, err) from None
    tmp, old = work / folder.name, work / "previous"
    try:
        yield tmp
        for file in (p for p in tmp.rglob("*") if p.is_file()):
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
        set_modes(tmp)
        if folder.exists():
            os.replace(folder, old)
        os.replace(tmp, folder)
    except BaseException as err:
        if old.exists() and not folder.exists():
            os.replace(old, folder)  # the swap failed half-way: put the previous folder back
        shutil.rmtree(work, ignore_errors=True)
        cause = _os_cause(err) if isinstance(err, Exception) else None
        if cause is None:
            raise
        raise _failure(shown, cause) from None
    shutil.rmtree(work, ignore_errors=True)
    _sync_folder(folder.parent)


def _check_replaceable(shown: Path, folder: Path, replaces: "str | None") -> None:
    """Refuse (OutputError) a ``folder`` that ``atomic_folder`` must not replace."""
    real, cwd = Path(os.path.realpath(folder)), Path.cwd()
    if real == cwd or real in cwd.parents:
        raise OutputError(f"{shown} is the current folder or holds it; refusing to replace it "
                          "(give a new folder)")
    kind = file_kind(folder)
    if kind is None:
        return
    if kind != "a folder":
        raise OutputError(f"{shown} is {kind}; refusing to replace it (give a new folder)")
    if not any(folder.iterdir()):
        return
    if replaces is None or file_kind(folder / replaces) != "a regular file":
        why = f" and no {replaces} (it is not a previous export of this kind)" if replaces else ""
        raise OutputError(f"{shown} holds files{why}; refusing to replace it (give a new folder)")


FILE_MODE, FOLDER_MODE = 0o666, 0o777


def umask() -> int:
    """The process's umask (read without changing it where /proc tells it)."""
    with contextlib.suppress(OSError, ValueError):
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def set_modes(root: Path) -> None:
    """Give ``root`` and everything under it the modes a plain ``open`` / ``mkdir`` would."""
    mask = umask()
    for path in (root, *root.rglob("*")):
        if path.is_symlink():
            continue
        os.chmod(path, (FOLDER_MODE if path.is_dir() else FILE_MODE) & ~mask)


_KINDS = ((stat.S_ISLNK, "a symbolic link"), (stat.S_ISDIR, "a folder"),
          (stat.S_ISFIFO, "a FIFO (named pipe)"), (stat.S_ISCHR, "a character device"),
          (stat.S_ISBLK, "a block device"), (stat.S_ISSOCK, "a socket"), (stat.S_ISREG, "a regular file"))


def file_kind(path: "str | os.PathLike") -> "str | None":
    """What ``path`` itself is ('a regular file', 'a symbolic link', 'a FIFO (named pipe)', ...),
    or None if nothing is there. ``lstat`` opens nothing, so it never blocks."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return None
    except OSError as err:
        raise OutputError(f"cannot read {path}: {err.strerror or err}") from None
    return next((kind for test, kind in _KINDS if test(mode)), "not a regular file")


def check_regular(path: "str | os.PathLike", folder_ok: bool = False) -> bool:
    """True if ``path`` is a regular file (or, with ``folder_ok``, a real folder), False if it is
    absent; OutputError naming it if it is a symbolic link, a FIFO, a device or a socket."""
    kind = file_kind(path)
    if kind is None:
        return False
    if kind == "a regular file" or (folder_ok and kind == "a folder"):
        return True
    raise OutputError(f"{path} is {kind}, not a regular file; this project neither follows links "
                      "nor opens special files in its output folders (move it away or choose another folder)")


def read_regular_text(path: "str | os.PathLike") -> str:
    """The text of the regular file ``path``; FileNotFoundError if absent, OutputError (one line)
    if it is a symbolic link or not a regular file. Opened without following a link and without
    blocking, so a FIFO planted after the check cannot hang the reader either."""
    if not check_regular(path):
        raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OutputError(f"{path} is not a regular file")
        return handle.read().decode("utf-8")
