"""NOAH-layout splits: decode-once cache == per-image PIL pipeline, loaders, errors, vtab.check."""
import runpy
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import vtab
import vtab.dataset as dataset
from vtab.check import main as check_main

SIZE = 20  # input size of the tests: small, and not a divisor of the odd source sizes
TASK = "eurosat"  # 10 classes
ODD_SIZES = [(37, 23), (50, 61), (29, 29), (64, 17), (23, 48), (41, 35)]
MODES = ["RGB", "L", "RGBA", "P"]  # exercises convert("RGB") as the original loader does


def make_task(root: Path, task: str = TASK, n: int = 30, seed: int = 0) -> Path:
    """A NOAH-layout task folder of n small random images (JPEG and PNG, odd sizes)."""
    rng = np.random.default_rng(seed)
    folder = root / task
    (folder / "images").mkdir(parents=True)
    lines = []
    for i in range(n):
        w, h = ODD_SIZES[i % len(ODD_SIZES)]
        pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
        image = Image.fromarray(pixels).convert(MODES[i % len(MODES)])
        ext = "png" if i % 2 or image.mode in ("RGBA", "P") else "jpg"
        name = f"images/img {i}.{ext}" if i == 3 else f"images/{i:03d}.{ext}"  # one with a space
        image.save(folder / name)
        lines.append(f"{name} {i % 10}")
    write_list(folder, "train800", lines[:20])
    write_list(folder, "val200", lines[20:26])
    write_list(folder, "train800val200", lines[:26])
    write_list(folder, "test", lines[26:] + lines[:5], trailer="\n\n")  # trailing blank lines
    return folder


def write_list(folder: Path, split: str, lines, trailer: str = "\n") -> None:
    (folder / f"{split}.txt").write_text("\n".join(lines) + trailer)


@pytest.fixture
def tree(tmp_path):
    make_task(tmp_path / "vtab-1k")
    return tmp_path / "vtab-1k"


def load(tree, split="train800", **kwargs):
    kwargs = {"input_size": SIZE, "progress": False, **kwargs}
    return vtab.load_split(tree, TASK, split, **kwargs)


# --- decode once == the per-image pipeline ----------------------------------------------------

def test_cached_uint8_equals_pil_resize_exactly(tree):
    split = load(tree, "train800val200")
    assert split.images.shape == (26, 3, SIZE, SIZE) and split.images.dtype == torch.uint8
    assert split.labels.dtype == torch.int64 and len(split) == 26
    for i, rel in enumerate(split.paths):
        reference = Image.open(tree / TASK / rel).convert("RGB").resize((SIZE, SIZE), Image.BICUBIC)
        assert torch.equal(split.images[i], torch.from_numpy(np.array(reference)).permute(2, 0, 1))


def test_loader_floats_equal_totensor_normalize(tree):
    split = load(tree)
    loader = vtab.Loader(split, 8, shuffle=False, drop_last=False)
    x = torch.cat([xb for xb, _ in loader])
    assert x.dtype == torch.float32
    for i, rel in enumerate(split.paths):
        expected = vtab.pil_pipeline(tree / TASK / rel, SIZE, "bicubic")
        assert (x[i] - expected).abs().max() <= 1e-6
    assert torch.equal(torch.cat([y for _, y in loader]), split.labels)


def test_paths_with_spaces_and_trailing_blank_lines(tree):
    split = load(tree, "test")
    assert len(split) == 9 and "images/img 3.png" in split.paths


def test_interpolation_is_honoured(tree):
    cubic, near = load(tree), load(tree, interpolation="nearest")
    assert not torch.equal(cubic.images, near.images)
    with pytest.raises(ValueError, match="interpolation"):
        load(tree, interpolation="cubic-ish")


# --- the cache ----------------------------------------------------------------------------------

def count_decodes(monkeypatch) -> list:
    calls, real = [], dataset.decode_image
    monkeypatch.setattr(dataset, "decode_image", lambda *a: calls.append(a) or real(*a))
    return calls


def test_second_load_does_not_decode(tree, monkeypatch):
    first = load(tree)
    def refuse(*args):
        raise AssertionError("decoded although the cache is valid")
    monkeypatch.setattr(dataset, "decode_image", refuse)
    second = load(tree)
    assert torch.equal(first.images, second.images) and torch.equal(first.labels, second.labels)


def test_changed_list_invalidates_cache_and_replaces_the_stale_file(tree, monkeypatch):
    load(tree)
    lines = (tree / TASK / "train800.txt").read_text().splitlines()
    write_list(tree / TASK, "train800", lines[:-1])
    calls = count_decodes(monkeypatch)
    split = load(tree)
    assert len(split) == 19 and len(calls) == 19
    assert len(list((tree / TASK / ".cache").glob("train800_*.pt"))) == 1


def test_size_is_part_of_the_key(tree, monkeypatch):
    load(tree)
    calls = count_decodes(monkeypatch)
    assert load(tree, input_size=12).images.shape[-1] == 12 and len(calls) == 20


def test_cache_dir_and_no_leftover_temporary_files(tree, tmp_path):
    load(tree, cache_dir=tmp_path / "cache")
    files = list((tmp_path / "cache" / TASK).iterdir())
    assert len(files) == 1 and files[0].suffix == ".pt"
    assert not (tree / TASK / ".cache").exists()


def test_unwritable_cache_warns_and_still_loads(tree, tmp_path):
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("a file where the cache folder would go")
    with pytest.warns(UserWarning, match="could not write cache"):
        split = load(tree, cache_dir=blocker)
    assert len(split) == 20


def test_corrupt_cache_is_rebuilt(tree):
    load(tree)
    (cache,) = (tree / TASK / ".cache").glob("train800_*.pt")
    cache.write_bytes(b"not a torch file")
    with pytest.warns(UserWarning, match="unreadable cache"):
        split = load(tree)
    assert len(split) == 20


# --- the loader ---------------------------------------------------------------------------------

def orders(loader, epoch):
    loader.set_epoch(epoch)
    return [b.tolist() for b in loader.batch_indices()]


def test_shuffle_drop_last_full_batches_of_distinct_indices(tree):
    loader = vtab.Loader(load(tree, "train800val200"), 4, shuffle=True, drop_last=True, seed=3)
    assert len(loader) == 26 // 4
    for epoch in range(3):
        batches = orders(loader, epoch)
        flat = sum(batches, [])
        assert len(batches) == 6 and all(len(b) == 4 for b in batches)
        assert len(set(flat)) == 24 and set(flat) <= set(range(26))
        shapes = [(x.shape, y.shape) for x, y in loader]
        assert shapes == [((4, 3, SIZE, SIZE), (4,))] * 6


def test_order_is_a_function_of_seed_and_epoch(tree):
    split = load(tree, "train800val200")
    a = vtab.Loader(split, 4, shuffle=True, drop_last=True, seed=3)
    b = vtab.Loader(split, 4, shuffle=True, drop_last=True, seed=3)
    assert orders(a, 5) == orders(b, 5)  # a resumed run replays epoch 5
    assert orders(a, 5) != orders(a, 6)
    c = vtab.Loader(split, 4, shuffle=True, drop_last=True, seed=4)
    assert orders(c, 5) != orders(a, 5)


def test_no_shuffle_keeps_order_and_last_partial_batch(tree):
    loader = vtab.Loader(load(tree), 8, shuffle=False, drop_last=False)
    assert len(loader) == 3 and orders(loader, 7) == [list(range(8)), list(range(8, 16)),
                                                      list(range(16, 20))]


def test_non_resident_batches_are_identical(tree):
    split = load(tree, "train800val200")
    kwargs = dict(shuffle=True, drop_last=False, seed=1)
    resident = vtab.Loader(split, 5, resident=True, **kwargs)
    chunked = vtab.Loader(split, 5, resident=False, **kwargs)
    for loader in (resident, chunked):
        loader.set_epoch(2)
    pairs = list(zip(resident, chunked, strict=True))
    assert len(pairs) == 6
    for (xa, ya), (xb, yb) in pairs:
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_batch_size_must_be_positive(tree):
    with pytest.raises(ValueError, match="batch_size"):
        vtab.Loader(load(tree), 0, shuffle=False, drop_last=False)


# --- bad data: one-line DataError naming the culprit --------------------------------------------

def one_line_error(tree, split="train800", match=None):
    with pytest.raises(vtab.DataError, match=match) as err:
        load(tree, split)
    assert "\n" not in str(err.value)
    return str(err.value)


def test_missing_task_folder(tmp_path):
    message = one_line_error(tmp_path, match="task folder")
    assert str(tmp_path / TASK) in message and "data/README.md" in message


def test_missing_list_file(tree):
    (tree / TASK / "val200.txt").unlink()
    message = one_line_error(tree, "val200", match="list file")
    assert str(tree / TASK / "val200.txt") in message and "data/README.md" in message


@pytest.mark.parametrize("bad_line, match", [
    ("images/000.jpg 10", "label 10 outside \\[0, 10\\)"),
    ("images/000.jpg -1", "label -1 outside"),
    ("images/000.jpg cat", "expected 'relative/path label'"),
    ("images/000.jpg", "expected 'relative/path label'"),
])
def test_bad_line_names_file_and_line(tree, bad_line, match):
    lines = (tree / TASK / "train800.txt").read_text().splitlines()
    lines[6] = bad_line
    write_list(tree / TASK, "train800", lines)
    message = one_line_error(tree, match=match)
    assert f"{tree / TASK / 'train800.txt'}:7:" in message


def test_list_that_is_not_text(tree):
    (tree / TASK / "train800.txt").write_bytes(b"images/000.jpg 1\n\xff\xfe 2\n")
    one_line_error(tree, match="not a UTF-8 text list file")


def test_empty_list(tree):
    write_list(tree / TASK, "val200", [], trailer="\n\n")
    one_line_error(tree, "val200", match="no samples")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "missing"])
def test_unreadable_image_names_the_file(tree, damage):
    victim = tree / TASK / "images" / "004.jpg"
    if damage == "garbage":
        victim.write_bytes(b"this is not an image")
    elif damage == "truncated":
        victim.write_bytes(victim.read_bytes()[:200])
    else:
        victim.unlink()
    message = one_line_error(tree, match="cannot read image")
    assert str(victim) in message and f"{tree / TASK / 'train800.txt'}:5" in message


def test_unknown_split(tree):
    one_line_error(tree, "train", match="unknown split")


# --- python -m vtab.check -----------------------------------------------------------------------

def test_check_good_tree(tree, capsys):
    make_task(tree.parent / "vtab-1k", "dtd", n=28, seed=1)
    (tree / "notes").mkdir()
    assert check_main(["--data-path", str(tree), "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "eurosat" in out and "dtd" in out and "OK" in out
    assert "not a known task" in out and "VTAB-1k has 800" in out  # warnings, not failures
    assert check_main(["--data-path", str(tree), "--no-progress", "--strict"]) == 1


def test_check_bad_tree_reports_every_kind_of_problem(tree, capsys):
    (tree / TASK / "images" / "004.jpg").write_bytes(b"junk")
    (tree / TASK / "val200.txt").unlink()
    write_list(tree / TASK, "test", ["images/000.jpg 99"])
    assert check_main(["--data-path", str(tree), "--no-progress", "--quick"]) == 0 + 1
    assert check_main(["--data-path", str(tree), "--no-progress", "eurosat"]) == 1
    out = capsys.readouterr().out
    assert "FAIL" in out and "004.jpg" in out and "val200.txt not found" in out
    assert "label 99 outside [0, 10)" in out


def test_check_cli_exit_2_without_traceback(tmp_path, monkeypatch, capsys):
    # Runs the module as `python -m vtab.check` would, in-process (a fresh interpreter would
    # spend seconds importing torch and timm).
    monkeypatch.setattr(sys, "argv", ["vtab.check", "--data-path", str(tmp_path / "nowhere")])
    monkeypatch.delitem(sys.modules, "vtab.check")  # run_module re-executes it as __main__
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("vtab.check", run_name="__main__", alter_sys=True)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "not found" in err and "data/README.md" in err
    assert check_main(["--data-path", str(tmp_path), "imagenet"]) == 2
