"""A random backbone (--pretrained none) is the same in every step: the search scores exactly the
weights the supernet trained with, and a rebuild that differs is refused."""
import json

import pytest
import torch
import yaml

from glora.run import evolution, supernet
from tests.helpers import write_tiny_setup


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("random")
    write_tiny_setup(root, dataset="eurosat", pretrained="none")
    supernet.cli(["--config", str(root / "tiny.yaml"), "--save_path", str(root / "s"), "--epochs", "2",
                  "--eval-every", "2", "--lr", "1e-2", "--seed", "5"])
    return root


def test_the_search_scores_the_supernets_own_random_backbone(trained):
    """Fails if evolution.py rebuilds a random backbone under its own seed: the supernet's fixed
    validation subnets, scored by the export path on the same split, must give the supernet's own
    validation accuracies (they scored ~chance on another backbone)."""
    ckpt = torch.load(trained / "s" / "eurosat.pt", weights_only=True)
    log = [json.loads(line) for line in (trained / "s" / "eurosat_log.jsonl").read_text().splitlines()]
    per_subnet = log[-1]["val_acc1_per_subnet"]
    for i, subnet in enumerate(ckpt["eval_subnets"]):
        path = trained / f"subnet{i}.yaml"
        path.write_text(yaml.safe_dump({"rank": ckpt["rank"], "layers": dict(zip(ckpt["layer_names"], subnet))}))
        evolution.cli(["--config", str(trained / "tiny.yaml"), "--load_path", str(trained / "s"),
                       "--save_path", str(trained / f"export{i}"), "--subnet", str(path)])
        result = json.loads((trained / f"export{i}" / "results.json").read_text())
        assert result["search_acc1"] == pytest.approx(per_subnet[i], abs=1e-9)


def test_a_backbone_that_rebuilds_differently_is_refused(trained, tmp_path):
    """Fails if a checkpoint whose recorded seed no longer rebuilds its frozen backbone is searched
    anyway (here the seed is tampered with; another torch build would do the same)."""
    ckpt = torch.load(trained / "s" / "eurosat.pt", weights_only=True)
    ckpt["backbone"]["init_seed"] = 6
    (tmp_path / "s").mkdir()
    torch.save(ckpt, tmp_path / "s" / "eurosat.pt")
    with pytest.raises(SystemExit, match="the frozen backbone built here differs from the one it was trained with"):
        evolution.cli(["--config", str(trained / "tiny.yaml"), "--load_path", str(tmp_path / "s"),
                       "--save_path", str(tmp_path / "q"), "--param-limits", "0.006"])
