"""One atomic-write helper for every writer: the previous file survives any failure, no temporary
file is left behind, and a disk error is one line naming the file."""
import errno
import os

import pytest
import torch

from glora.errors import OutputError
from glora.io.files import atomic_folder, atomic_write


def no_space(handle):
    handle.write(b"partial")
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_failed_write_keeps_the_previous_file_and_leaves_no_temporary(tmp_path):
    """Fails if a full disk truncates the previous file, leaves a half-written .tmp that holds the
    space a resume needs, or surfaces as a traceback instead of one OutputError line."""
    path = tmp_path / "state.json"
    atomic_write(path, '{"generation": 3}')
    with pytest.raises(OutputError) as err:
        atomic_write(path, no_space)
    assert str(err.value) == f"cannot write {path}: no space left on the device; the previous one is kept"
    assert path.read_text() == '{"generation": 3}' and sorted(os.listdir(tmp_path)) == ["state.json"]


def test_torch_save_disk_error_is_named_not_a_runtime_error(tmp_path, monkeypatch):
    """Fails if torch.save's RuntimeError (which hides the OSError of a full disk) escapes as a
    traceback, or a bug's RuntimeError is mistaken for a disk error."""
    class Full:
        def __init__(self, handle):
            self.handle, self.error = handle, None

        def write(self, data):
            self.error = OSError(errno.ENOSPC, "No space left on device")
            raise self.error

        def flush(self):
            pass

    monkeypatch.setattr("glora.io.files._Tracked", Full)
    with pytest.raises(OutputError, match="no space left on the device"):
        atomic_write(tmp_path / "x.pt", lambda handle: torch.save({"a": torch.zeros(3)}, handle))
    monkeypatch.undo()

    def bug(handle):
        raise RuntimeError("a bug")
    with pytest.raises(RuntimeError, match="a bug"):
        atomic_write(tmp_path / "y.pt", bug)
    assert os.listdir(tmp_path) == []


def test_interrupt_during_a_write_removes_the_temporary_and_reraises(tmp_path):
    """Fails if Ctrl-C in the middle of a write leaves the temporary file or is swallowed."""
    def interrupted(handle):
        handle.write(b"half")
        raise KeyboardInterrupt
    with pytest.raises(KeyboardInterrupt):
        atomic_write(tmp_path / "a.yaml", interrupted)
    assert os.listdir(tmp_path) == []


def test_unique_temporaries_for_shared_files(tmp_path, monkeypatch):
    """Fails if unique=True reuses the fixed .name.tmp, which two processes writing one cache would share."""
    seen = []
    real = os.replace
    monkeypatch.setattr(os, "replace", lambda src, dst: seen.append(os.path.basename(src)) or real(src, dst))
    atomic_write(tmp_path / "c.pt", b"1", unique=True)
    atomic_write(tmp_path / "d.pt", b"2")
    assert seen[0].startswith(".c.pt.") and seen[0].endswith(".tmp") and seen[0] != ".c.pt.tmp"
    assert seen[1] == ".d.pt.tmp"


def test_atomic_folder_keeps_the_previous_folder_on_failure(tmp_path):
    """Fails if an export that fails half-way removes or mixes into the previous merged/ folder."""
    folder = tmp_path / "merged"
    with atomic_folder(folder) as tmp:
        tmp.mkdir()
        (tmp / "model.safetensors").write_bytes(b"old")
    with pytest.raises(OutputError, match=f"cannot write {folder}: "):
        with atomic_folder(folder, replaces="model.safetensors") as tmp:
            tmp.mkdir()
            (tmp / "model.safetensors").write_bytes(b"ne")
            raise OSError(errno.EROFS, os.strerror(errno.EROFS))
    assert sorted(os.listdir(tmp_path)) == ["merged"] and (folder / "model.safetensors").read_bytes() == b"old"
    with atomic_folder(folder, replaces="model.safetensors") as tmp:
        tmp.mkdir()
        (tmp / "config.json").write_text("{}")
    assert sorted(os.listdir(folder)) == ["config.json"] and sorted(os.listdir(tmp_path)) == ["merged"]


def test_rust_writer_disk_error_is_one_line(tmp_path):
    """Fails if safetensors' I/O error (no OSError, only '(os error 28)' in its message) is a traceback."""
    with pytest.raises(OutputError, match="no space left on the device"):
        with atomic_folder(tmp_path / "m") as tmp:
            tmp.mkdir()
            raise RuntimeError("Error while serializing: I/O error: No space left on device (os error 28)")
    assert os.listdir(tmp_path) == []


def test_interrupt_inside_torch_save_stays_an_interrupt(tmp_path):
    """Fails if Ctrl-C or SIGTERM arriving while torch.save writes (torch turns it into a
    RuntimeError 'unexpected pos') escapes as that RuntimeError's traceback instead of reaching
    the Ctrl-C path that saves the run's state."""
    class Interrupting:
        def __init__(self, handle):
            self.handle, self.error, self.calls = handle, None, 0

        def write(self, data):
            self.calls += 1
            if self.calls == 3:
                self.error = KeyboardInterrupt()
                raise self.error
            return self.handle.write(data)

        def flush(self):
            self.handle.flush()

    import glora.io.files
    real, glora.io.files._Tracked = glora.io.files._Tracked, Interrupting
    try:
        with pytest.raises(KeyboardInterrupt):
            atomic_write(tmp_path / "x.pt", lambda handle: torch.save({"a": torch.zeros(1000)}, handle))
    finally:
        glora.io.files._Tracked = real
    assert os.listdir(tmp_path) == []


def test_atomic_folder_replaces_only_a_folder_of_its_own_kind(tmp_path, monkeypatch):
    """Fails if atomic_folder swaps away what it is given: a file (once hidden as .name.old), a
    folder of other files, a symbolic link, the current folder; or deletes a sibling that happens
    to be named .name.tmp / .name.old; or cannot replace an empty folder or a previous export."""
    (tmp_path / "file").write_text("f")
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "a.txt").write_text("n")
    (tmp_path / "link").symlink_to(tmp_path / "notes")
    (tmp_path / ".out.tmp").mkdir()
    (tmp_path / ".out.old").write_text("mine")
    expected = {"file": "is a regular file; refusing to replace it (give a new folder)",
                "notes": "holds files and no config.json (it is not a previous export of this kind); refusing "
                         "to replace it (give a new folder)",
                "link": "is a symbolic link; refusing to replace it (give a new folder)"}
    for name, reason in expected.items():
        with pytest.raises(OutputError) as err:
            with atomic_folder(tmp_path / name, replaces="config.json") as tmp:
                raise AssertionError("the block must not run")
        assert str(err.value) == f"{tmp_path / name} {reason}"
    monkeypatch.chdir(tmp_path / "notes")
    (tmp_path / "notes" / "config.json").write_text("{}")
    for given in (".", str(tmp_path)):
        with pytest.raises(OutputError, match=r"is the current folder or holds it; refusing to replace it"):
            with atomic_folder(given, replaces="config.json"):
                raise AssertionError("the block must not run")
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty").mkdir()
    for name in ("out", "empty", "notes", "out"):  # absent, empty, a previous export, the new one again
        with atomic_folder(tmp_path / name, replaces="config.json") as tmp:
            tmp.mkdir()
            (tmp / "config.json").write_text(name)
        assert os.listdir(tmp_path / name) == ["config.json"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.old", ".out.tmp", "empty", "file", "link", "notes", "out"]
    assert (tmp_path / ".out.old").read_text() == "mine" and (tmp_path / "file").read_text() == "f"
