"""A finished run is recognised by content, wherever it now is: a copied or moved runs folder, its
data tree behind a symlink, its weights file elsewhere. Other bytes are refused, naming what
differs, and no message advises deleting a result that may be valid."""
import shutil

import pytest
import yaml

from glora.run import evolution, supernet
from tests.helpers import write_tiny_setup

SEARCH = ["--param-limits", "0.006", "--population-num", "4", "--select-num", "2", "--mutation-num", "2",
          "--crossover-num", "2", "--max-epochs", "1"]


def config_at(root, data, weights):
    """The tiny setup's config, pointing at ``data`` and ``weights``."""
    settings = yaml.safe_load((root / "tiny.yaml").read_text())
    settings.update(data_path=str(data), pretrained=str(weights))
    path = root / "moved.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def train(config, out):
    supernet.cli(["--config", str(config), "--save_path", str(out), "--epochs", "2", "--eval-every", "2",
                  "--lr", "1e-2", "--resume", "auto"])


def search(config, load, out):
    evolution.cli(["--config", str(config), "--load_path", str(load), "--save_path", str(out), *SEARCH,
                   "--resume", "auto"])


@pytest.fixture(scope="module")
def first(tmp_path_factory):
    """A supernet and its search, finished in one place."""
    root = tmp_path_factory.mktemp("first")
    write_tiny_setup(root, dataset="eurosat")
    train(root / "tiny.yaml", root / "runs" / "s")
    search(root / "tiny.yaml", root / "runs" / "s", root / "runs" / "q")
    return root


def test_a_moved_runs_folder_and_data_tree_are_still_finished(first, tmp_path, capsys):
    """Fails if a copied runs folder, data behind a symlink and a moved weights file make the
    finished runs look like "other settings" (and the advice was to delete them)."""
    moved = tmp_path / "elsewhere"
    shutil.copytree(first / "runs", moved / "runs")
    (moved / "data").symlink_to(first / "data", target_is_directory=True)
    shutil.copy(first / "bb.safetensors", moved / "weights.safetensors")
    config = config_at(first, moved / "data", moved / "weights.safetensors")
    capsys.readouterr()
    train(config, moved / "runs" / "s")
    search(config, moved / "runs" / "s", moved / "runs" / "q")
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"already finished: {moved / 'runs' / 's' / 'eurosat.pt'}")
    assert out[1].startswith(f"already finished: {moved / 'runs' / 'q' / 'results.json'}")


def test_other_bytes_are_refused_naming_them_and_the_result_is_kept(first, tmp_path):
    """Fails if a data tree whose lists differ, or other weights, pass as the finished run, or if
    the refusal advises deleting it."""
    moved = tmp_path / "other"
    shutil.copytree(first / "runs", moved / "runs")
    shutil.copytree(first / "data", moved / "data")
    lines = (moved / "data" / "eurosat" / "val200.txt").read_text().splitlines()
    (moved / "data" / "eurosat" / "val200.txt").write_text("\n".join(lines[:-1]) + "\n")
    config = config_at(first, moved / "data", first / "bb.safetensors")
    with pytest.raises(SystemExit) as refused:
        train(config, moved / "runs" / "s")
    message = str(refused.value)
    assert "data content: sha256" in message and "it is kept" in message and "delete" not in message
    with pytest.raises(SystemExit, match="data content: sha256.*they are kept") as refused:
        search(config, moved / "runs" / "s", moved / "runs" / "q")
    assert "delete" not in str(refused.value)
    (moved / "weights.safetensors").write_bytes((first / "bb.safetensors").read_bytes()[:-4] + b"\0\0\0\0")
    config = config_at(first, first / "data", moved / "weights.safetensors")
    with pytest.raises(SystemExit, match="pretrained content: sha256"):
        train(config, moved / "runs" / "s")
