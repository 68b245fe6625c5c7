"""Every run writes a text log beside its outputs (command line, versions, a line per epoch or
generation, the result), and --log-tensorboard writes the same numbers as TensorBoard scalars."""
import json

import pytest

from glora.run import evolution, supernet
from tests.helpers import write_tiny_setup

SEARCH = ["--param-limits", "0.006", "--population-num", "4", "--select-num", "2", "--mutation-num", "2",
          "--crossover-num", "2", "--max-epochs", "2"]


def scalars(folder) -> dict[str, list[tuple[int, float]]]:
    """Every scalar series written under ``folder``, read back with TensorBoard's own reader."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    found = {}
    for events in folder.rglob("events.out.tfevents.*"):
        reader = EventAccumulator(str(events.parent))
        reader.Reload()
        for tag in reader.Tags()["scalars"]:
            found[tag] = [(e.step, e.value) for e in reader.Scalars(tag)]
    return found


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("logs")
    write_tiny_setup(root, dataset="eurosat")
    supernet.cli(["--config", str(root / "tiny.yaml"), "--save_path", str(root / "s"), "--epochs", "3",
                  "--eval-every", "2", "--lr", "1e-2", "--log-tensorboard", str(root / "tb_s")])
    evolution.cli(["--config", str(root / "tiny.yaml"), "--load_path", str(root / "s"), "--save_path",
                   str(root / "q"), *SEARCH, "--log-tensorboard", str(root / "tb_q")])
    return root


def test_supernet_log_has_command_versions_every_epoch_and_the_end(runs):
    """Fails if a standalone run keeps no text log, or the log misses an epoch, the command line,
    the versions or the final line."""
    text = (runs / "s" / "eurosat_run.log").read_text()
    assert "command: " in text and "--save_path" in text and "versions: torch " in text
    for epoch in (1, 2, 3):
        assert f"epoch {epoch}: loss " in text
    assert "done: 3 epochs in " in text
    assert text.count("acc1") == 2  # validated at epochs 2 and 3


def test_search_log_has_every_generation_and_the_result(runs):
    text = (runs / "q" / "run.log").read_text()
    assert "searching " in text and "versions: torch " in text
    for generation in (0, 1, 2):
        assert f"generation {generation}: best " in text
    result = json.loads((runs / "q" / "results.json").read_text())
    assert f"test acc1 {result['test_acc1']:.2f}" in text


def test_tensorboard_scalars_match_the_jsonl_log(runs):
    """Fails if the TensorBoard scalars miss an epoch or a generation, or disagree with the run's
    own JSON log and search history."""
    train = scalars(runs / "tb_s")
    records = [json.loads(line) for line in (runs / "s" / "eurosat_log.jsonl").read_text().splitlines()]
    assert [step for step, _ in train["train/loss"]] == [1, 2, 3]
    assert [v for _, v in train["train/loss"]] == pytest.approx([r["train_loss"] for r in records], rel=1e-6)
    assert [step for step, _ in train["val/acc1"]] == [2, 3]
    search = scalars(runs / "tb_q")
    assert [step for step, _ in search["search/best"]] == [0, 1, 2]
    best = json.loads((runs / "q" / "results.json").read_text())["search_acc1"]
    assert search["search/best"][-1][1] == pytest.approx(best, rel=1e-6)
