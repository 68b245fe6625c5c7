"""Provenance by content: what a run read, as sha256 digests, so a finished run is recognised wherever
its folders, data tree or weights file now are (a copied or moved runs folder, a symlink, another
mount), and a run over other bytes is never taken for it.

Checkpoints and results.json record ``inputs``: the digest of the list files of every split the run
read (the images are named by them, and the decode cache is keyed on them too), of the backbone
weights file, and of a subnet file or the supernet a run started from. Settings that are only
paths (:data:`PATH_KEYS`) are then left out of the comparison of settings.
"""
from __future__ import annotations

import functools
import hashlib
import os
from pathlib import Path
from typing import Callable, Iterable, Mapping

import vtab
from vtab.dataset import list_file

# Settings that name where an input or output is, not what it holds: compared through ``inputs``.
PATH_KEYS = frozenset({"save_path", "load_path", "data_path", "pretrained", "init_from", "subnet"})


def file_sha256(path: str | os.PathLike) -> str:
    """The sha256 of a file's bytes (read in chunks; cached per path, size and modification time)."""
    stat = Path(path).stat()
    return _file_sha256(str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=64)
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def data_digest(data_path: str | os.PathLike, task: str, splits: Iterable[str]) -> str:
    """One sha256 over the list files of ``splits`` (each name and its bytes, in sorted order)."""
    digest = hashlib.sha256()
    for split in sorted(set(splits)):
        digest.update(f"{split}\n".encode())
        digest.update(list_file(data_path, task, split).read_bytes())
    return digest.hexdigest()


def weights_digest(pretrained: str | None) -> str | None:
    """The weights file's sha256; ``None`` for a random backbone (``--pretrained none``)."""
    if pretrained is None or str(pretrained).lower() == "none":
        return None
    return file_sha256(pretrained)


def subnet_digest(subnet: str | None) -> str | None:
    """A preset's name, or a subnet file's sha256; ``None`` without a fixed subnet."""
    if subnet is None or not Path(subnet).is_file():
        return subnet
    return file_sha256(subnet)


def run_inputs(data_path: str, task: vtab.TaskInfo, splits: Iterable[str], pretrained: str | None,
               **more: str | None) -> dict:
    """The ``inputs`` record of a run: data lists, weights and any ``more`` (subnet, supernet, ...)."""
    return {"data": data_digest(data_path, task.name, splits), "pretrained": weights_digest(pretrained), **more}


def differing_inputs(recorded: Mapping | None, current: Callable[[], dict]) -> list[str]:
    """``name: sha256 old… -> new…`` for every input whose content differs; ``current`` is only
    computed when there is a record to compare with."""
    if not recorded:
        return []
    now = current()
    return [f"{key} content: {_short(recorded.get(key))} -> {_short(now.get(key))}"
            for key in sorted(set(recorded) & set(now)) if recorded.get(key) != now.get(key)]


def _short(value) -> str:
    text = str(value)
    return f"sha256 {text[:12]}…" if len(text) == 64 else repr(value)
