"""--resume auto, the skip/resume rule the sweep relies on: continue a state, start fresh without
one, exit at once when the run is finished, refuse a finished run made with other settings."""
import json

import pytest
import torch

from glora.run import evolution
from glora.run import supernet
from tests.helpers import write_tiny_setup
from tests.helpers import assert_same_tensors, interrupt_at


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    root = tmp_path_factory.mktemp("auto")
    write_tiny_setup(root, dataset="eurosat")
    return root


def train(root, out, *extra):
    supernet.cli(["--config", str(root / "tiny.yaml"), "--save_path", str(root / out), "--epochs", "3",
                  "--eval-every", "3", "--lr", "1e-2", "--resume", "auto", *extra])
    return torch.load(root / out / "eurosat.pt", weights_only=True)


def search(root, out, *extra):
    evolution.cli(["--config", str(root / "tiny.yaml"), "--load_path", str(root / "s"), "--save_path",
                   str(root / out), "--param-limits", "0.006", "--population-num", "4", "--select-num", "2",
                   "--mutation-num", "2", "--crossover-num", "2", "--max-epochs", "2", "--resume", "auto", *extra])
    return json.loads((root / out / "results.json").read_text())


def test_supernet_auto_starts_fresh_then_skips_and_refuses_other_settings(root, capsys):
    """Fails if --resume auto errors without a state, retrains a finished run, reuses a finished run
    trained with another lr, or refuses one that differs only in a logging setting."""
    first = train(root, "s")
    assert first["epoch"] == 3 and first["config"]["resume"] is False
    mtime = (root / "s" / "eurosat.pt").stat().st_mtime_ns
    capsys.readouterr()
    train(root, "s", "--eval-every", "1", "--no-progress")  # logging only: the same run
    assert capsys.readouterr().out == f"already finished: {root / 's' / 'eurosat.pt'} (3 epochs)\n"
    assert (root / "s" / "eurosat.pt").stat().st_mtime_ns == mtime
    with pytest.raises(SystemExit, match=r"eurosat.pt is a finished run with other settings \(lr: 0.01 -> 0.02\); "
                                         r"it is kept: to run these settings, move .* aside or use another --save_path"):
        train(root, "s", "--lr", "2e-2")


def test_supernet_auto_continues_an_interrupted_run_exactly(root, monkeypatch):
    """Fails if --resume auto restarts an interrupted run from scratch or does not end where an
    uninterrupted run ends."""
    straight = train(root, "straight")
    with monkeypatch.context() as m:
        interrupt_at(m, 2)
        with pytest.raises(SystemExit, match="interrupted in epoch 2"):
            train(root, "resumed")
    assert torch.load(root / "resumed" / "eurosat.pt", weights_only=True)["epoch"] == 1
    resumed = train(root, "resumed")
    assert resumed["epoch"] == 3 and resumed["config"]["resume"] is True
    assert_same_tensors(straight["state_dict"], resumed["state_dict"])


def test_search_auto_skips_resumes_and_refuses(root, capsys):
    """Fails if a finished search runs again, if a search state without results.json is not
    continued, or if results.json of another budget count as finished."""
    if not (root / "s" / "eurosat.pt").is_file():
        train(root, "s")
    done = search(root, "search")
    assert done["config"]["param_limits"] == 0.006
    capsys.readouterr()
    search(root, "search")
    assert capsys.readouterr().out.startswith(f"already finished: {root / 'search' / 'results.json'} (test acc1 ")
    (root / "search" / "results.json").unlink()  # as if stopped after the last generation's state
    again = search(root, "search")
    assert "resumed the search at generation 3" in capsys.readouterr().out
    assert again["test_acc1"] == done["test_acc1"] and again["search_acc1"] == done["search_acc1"]
    with pytest.raises(SystemExit, match=r"holds results of other settings \(param_limits: 0.006 -> 0.005\)"):
        search(root, "search", "--param-limits", "0.005")


def test_tampered_search_state_cannot_set_the_reported_score(root, capsys):
    """Fails if an edited fitness in a finished search state becomes search_acc1, or if a state that
    does not record its supernet is trusted."""
    if not (root / "s" / "eurosat.pt").is_file():
        train(root, "s")
    honest = search(root, "honest")
    state_path = root / "honest" / "search_state.json"
    state = json.loads(state_path.read_text())
    for record in state["evaluated"]:
        record["fitness"] = 99.0
    state_path.write_text(json.dumps(state))
    (root / "honest" / "results.json").unlink()
    again = search(root, "honest")
    assert again["search_acc1"] == honest["search_acc1"] != 99.0
    assert "records 99.00 for the chosen subnet" in capsys.readouterr().out
    del state["supernet"]
    state_path.write_text(json.dumps(state))
    (root / "honest" / "results.json").unlink()
    with pytest.raises(SystemExit, match="does not record which supernet it searched"):
        search(root, "honest")
