"""Mini-VTAB: generators, NOAH layout, determinism, the pretrained backbone file, the probe."""
import hashlib
import json
import re

import numpy as np
import pytest
import timm
import torch
from PIL import Image
from safetensors.torch import load_file

import vtab
from vtab import mini
from vtab.mini import generate as mini_gen
from vtab.mini import pretrain
from vtab.mini import probe as mini_probe
from vtab.mini import source as mini_source
from vtab.mini.__main__ import get_args_parser, main

SMALL = (16, 8, 24)  # train800 / val200 / test sizes at test scale (all multiples of 8)
TINY_KWARGS = {"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 1, "num_heads": 2}
TINY_CFG = pretrain.PretrainConfig(seed=3, pool_size=64, eval_size=16, epochs=1, batch_size=32)
LINE = re.compile(r"images/\d{5}\.jpg \d+")


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("vtab-1k")
    mini.build(root, sizes=SMALL, progress=False)
    return root


@pytest.fixture(scope="module")
def backbone(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny_vit")
    pretrain.pretrain(out, TINY_CFG, model_kwargs=TINY_KWARGS, progress=False)
    return out


def test_mini_tasks_match_the_registry():
    """Fails if the generator's task list, seeds or class counts drift from vtab/tasks.py."""
    for name, k in mini_gen.NUM_CLASSES.items():
        assert vtab.TASKS[name].num_classes == k and vtab.TASKS[name].mini
    assert mini.MINI_TASKS is vtab.MINI_TASKS
    assert tuple(mini_gen.NUM_CLASSES) == vtab.MINI_TASKS == tuple(mini.SEEDS)
    assert set(mini_gen.RENDERERS) | set(mini.DIGIT_TASKS) == set(vtab.MINI_TASKS)


def _balanced(n: int, k: int) -> list[int]:
    return [n // k + (c < n % k) for c in range(k)]


@pytest.mark.parametrize("task", sorted(mini_gen.RENDERERS))
def test_generator_balanced_in_range_and_deterministic(task):
    k = mini_gen.NUM_CLASSES[task]
    images, labels = mini_gen.generate(task, 32, seed=5)
    assert images.shape == (32, 32, 32, 3) and images.dtype == np.uint8
    assert np.bincount(labels, minlength=k).tolist() == _balanced(32, k)
    again, labels_again = mini_gen.generate(task, 32, seed=5)
    assert np.array_equal(images, again) and np.array_equal(labels, labels_again)
    assert not np.array_equal(images, mini_gen.generate(task, 32, seed=6)[0])
    assert images.std() > 10  # not blank: backgrounds and sprites vary


# sha256 (first 16 hex) of the design tasks' images and labels at test sizes, as generated before the
# confirmation tasks were added: the design tasks' data must never change.
DESIGN_DIGESTS = {"mini_digits": "1c39f9dd36972e8f", "mini_count": "704878b91bc662cf",
                  "mini_loc": "e1d2a866cb725e5c", "mini_ori": "58ac6ceef297d838"}


@pytest.mark.parametrize("task", sorted(DESIGN_DIGESTS))
def test_design_task_data_is_unchanged(task):
    """Fails if adding or editing a task changes a design task's generated images or labels."""
    splits = mini.task_splits(task, SMALL)
    digest = hashlib.sha256()
    for name in ("train800", "val200", "test"):
        digest.update(splits[name][0].tobytes())
        digest.update(splits[name][1].astype(np.int64).tobytes())
    assert digest.hexdigest()[:16] == DESIGN_DIGESTS[task]


def test_roles_split_the_mini_tasks():
    """Fails if a mini task has no role, or the selections disagree with the registry."""
    assert set(DESIGN_DIGESTS) == set(vtab.tasks.MINI_DESIGN)
    assert vtab.tasks.MINI_DESIGN + vtab.tasks.MINI_CONFIRM == vtab.MINI_TASKS
    assert len(vtab.tasks.MINI_CONFIRM) >= 6
    assert {vtab.TASKS[t].group for t in vtab.MINI_TASKS} == set(vtab.GROUPS)
    assert all(vtab.TASKS[t].role == "confirmation" for t in vtab.tasks.MINI_CONFIRM)
    assert vtab.tasks.select_tasks(["mini_confirm"]) == list(vtab.tasks.MINI_CONFIRM)
    assert vtab.tasks.select_tasks(["mini_design"]) == ["mini_digits", "mini_count", "mini_loc", "mini_ori"]


def test_cli_takes_mini_selections_and_refuses_other_tasks():
    """Fails if `--tasks mini_confirm` does not expand, or a VTAB-1k task is built as a mini task."""
    from vtab.mini.__main__ import mini_tasks

    assert mini_tasks(["mini_design", "mini_land"]) == [*vtab.tasks.MINI_DESIGN, "mini_land"]
    assert mini_tasks(["mini"]) == list(vtab.MINI_TASKS)
    with pytest.raises(vtab.DataError, match="not mini tasks: cifar"):
        mini_tasks(["cifar"])


def test_occluded_digits_are_corrupted_digits_with_their_labels():
    """Fails if the occluded task loses the digits' labels, leaves an image uncorrupted, or is not
    deterministic."""
    n_train, n_val, n_test = SMALL
    plain = mini_gen.digits(mini.SEEDS["mini_occluded"], n_train, n_val, n_test)
    occluded = mini.task_splits("mini_occluded", SMALL)
    again = mini.task_splits("mini_occluded", SMALL)
    for name in ("train800", "val200", "test"):
        assert occluded[name][0].shape == plain[name][0].shape
        assert np.array_equal(occluded[name][1], plain[name][1])
        assert all(not np.array_equal(a, b) for a, b in zip(occluded[name][0], plain[name][0]))
        assert np.array_equal(occluded[name][0], again[name][0])


def test_digits_are_sklearn_digits_split_without_overlap():
    full = mini_gen.digits(seed=0)
    assert [len(full[s][1]) for s in ("train800", "val200", "test")] == [800, 200, 797]
    small = mini_gen.digits(seed=0, n_train=20, n_val=5, n_test=7)
    assert [len(small[s][1]) for s in ("train800", "val200", "test")] == [20, 5, 7]
    assert np.array_equal(small["train800"][0], full["train800"][0][:20])
    image = full["test"][0][0]
    assert image.shape == (32, 32, 3) and np.array_equal(image[..., 0], image[..., 2])
    assert set(np.unique(full["train800"][1])) == set(range(10))


def test_split_streams_are_independent():
    # Changing the test size must not change train images (one RNG stream per split).
    a = mini.task_splits("mini_count", (8, 8, 8))
    b = mini.task_splits("mini_count", (8, 8, 16))
    assert np.array_equal(a["train800"][0], b["train800"][0])


def test_noah_layout_and_list_files(built):
    for task in mini.MINI_TASKS:
        folder = built / task
        lists = {n: (folder / f"{n}.txt").read_text().splitlines() for n in mini.LIST_FILES}
        assert [len(lists[n]) for n in ("train800", "val200", "test")] == list(SMALL)
        assert lists["train800val200"] == lists["train800"] + lists["val200"]
        for line in sum(lists.values(), []):
            assert LINE.fullmatch(line), line
            path, label = line.split()
            assert 0 <= int(label) < mini_gen.NUM_CLASSES[task]
        with Image.open(folder / lists["test"][0].split()[0]) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", (32, 32))
        if task not in mini.DIGIT_TASKS:
            labels = [int(line.split()[1]) for line in lists["train800"]]
            assert np.bincount(labels).tolist() == _balanced(SMALL[0], mini_gen.NUM_CLASSES[task])


def test_build_is_byte_identical_and_skips_built_tasks(built, tmp_path):
    assert mini.build(tmp_path, sizes=SMALL, progress=False) == list(mini.MINI_TASKS)
    files = sorted(p.relative_to(built) for p in built.rglob("*") if p.is_file()
                   and ".cache" not in p.parts)
    assert files == sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*") if p.is_file())
    assert all((built / f).read_bytes() == (tmp_path / f).read_bytes() for f in files)
    assert mini.build(tmp_path, sizes=SMALL, progress=False) == []
    assert mini.build(tmp_path, ["mini_loc"], force=True, sizes=SMALL, progress=False) == [
        "mini_loc"]


def test_mini_task_loads_with_the_vtab_loader(built):
    split = vtab.load_split(built, "mini_ori", "train800", input_size=32, progress=False)
    assert split.images.shape == (SMALL[0], 3, 32, 32) and split.labels.max() < 8


def test_source_task_heads_balanced():
    images, labels = mini_source.generate(90, seed=0)
    assert images.shape == (90, 32, 32, 3) and labels.shape == (90, len(mini_source.HEADS))
    for j, k in enumerate(mini_source.HEADS.values()):
        counts = np.bincount(labels[:, j], minlength=k)
        assert len(counts) == k and counts.max() - counts.min() <= 1


def test_recolour_permutes_channels():
    images = torch.randint(0, 256, (16, 3, 4, 4), dtype=torch.uint8)
    out = pretrain.recolour(images, torch.Generator().manual_seed(0))
    for x, y in zip(images, out):
        assert sorted(c.sum().item() for c in x) == sorted(c.sum().item() for c in y)
        assert all(any(torch.equal(channel, c) for c in x) for channel in y)
    assert not torch.equal(images, out)


def test_backbone_file_has_no_head_and_loads_into_timm(backbone):
    state = load_file(str(backbone / pretrain.WEIGHTS_FILE))
    assert state and not any(k.startswith("head.") for k in state)
    model = timm.create_model(pretrain.MODEL, num_classes=7, **TINY_KWARGS)
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert sorted(missing) == ["head.bias", "head.weight"] and unexpected == []
    meta = json.loads((backbone / pretrain.META_FILE).read_text())
    assert meta["model_kwargs"] == TINY_KWARGS and meta["seed"] == TINY_CFG.seed
    assert set(meta["source_test_acc1"]) == set(mini_source.HEADS)
    assert not list(backbone.glob("*.tmp"))  # written atomically


def test_pretrain_is_deterministic(backbone, tmp_path):
    """Fails if the weights depend on the caller's torch thread count (OMP_NUM_THREADS=1 in the demo,
    all cores elsewhere) or if pretraining leaves its own thread count behind."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1 if threads != 1 else 2)  # the fixture built with the default count
    try:
        pretrain.pretrain(tmp_path, TINY_CFG, model_kwargs=TINY_KWARGS, progress=False)
        assert torch.get_num_threads() == (1 if threads != 1 else 2)
    finally:
        torch.set_num_threads(threads)
    assert json.loads((tmp_path / pretrain.META_FILE).read_text())["threads"] == TINY_CFG.threads == 2
    a = load_file(str(backbone / pretrain.WEIGHTS_FILE))
    b = load_file(str(tmp_path / pretrain.WEIGHTS_FILE))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    # and it did train: the weights differ from the seeded initialisation
    torch.manual_seed(TINY_CFG.seed)
    init = pretrain.create_model(31, model_kwargs=TINY_KWARGS).state_dict()
    assert not torch.equal(init["blocks.0.attn.qkv.weight"], a["blocks.0.attn.qkv.weight"])


def test_ensure_backbone_skips_an_existing_file(tmp_path):
    (tmp_path / pretrain.WEIGHTS_FILE).write_bytes(b"x")
    assert mini.ensure_backbone(tmp_path, progress=False) == tmp_path / pretrain.WEIGHTS_FILE


def test_probe_reports_both_backbones(built, backbone):
    """Fails if the probe uses another backbone, fits or scores on another split, or reports a
    number other than a logistic regression on frozen pre-logits features, fitted on train800 and
    scored once on test (recomputed here from the weights file)."""
    rows = mini_probe.probe(str(built), backbone, ["mini_loc"])
    assert rows[0]["task"] == "mini_loc"
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    def probe_accuracy(model):
        def feats(split):
            data = vtab.load_split(built, "mini_loc", split, input_size=32, progress=False)
            (x, y), = list(vtab.Loader(data, 256, shuffle=False, drop_last=False))
            with torch.no_grad():
                return model.forward_head(model.forward_features(x), pre_logits=True).numpy(), y.numpy()

        clf = make_pipeline(StandardScaler(), LogisticRegression(C=mini_probe.PROBE_C, max_iter=5000))
        clf.fit(*feats("train800"))
        return 100.0 * clf.score(*feats("test"))

    torch.manual_seed(0)  # the probe's default seed for the random backbone
    random_init = timm.create_model(pretrain.MODEL, num_classes=0, **TINY_KWARGS).eval()
    pretrained = timm.create_model(pretrain.MODEL, num_classes=0, **TINY_KWARGS).eval()
    pretrained.load_state_dict(load_file(str(backbone / pretrain.WEIGHTS_FILE)), strict=True)
    assert rows[0]["pretrained"] == pytest.approx(probe_accuracy(pretrained))
    assert rows[0]["random_init"] == pytest.approx(probe_accuracy(random_init))
    table = mini_probe.markdown_table(rows)
    assert table.splitlines()[0].startswith("| task |") and "| mean |" in table


def test_cli_build_without_backbone(tmp_path):
    args = get_args_parser().parse_args(
        ["build", "--data-path", str(tmp_path), "--tasks", "mini_loc", "--no-backbone"])
    main(args)
    assert [len((tmp_path / "mini_loc" / f"{n}.txt").read_text().splitlines())
            for n in mini.LIST_FILES] == [800, 200, 1000, 1000]
    assert not (tmp_path / "tiny_vit").exists()
