"""glora.io.progress: a tqdm bar on a terminal, a few plain lines in a log, nothing when disabled."""
import io
import re

from tqdm import tqdm

from glora.io.progress import PlainProgress, progress

LINE = re.compile(r"decode: (\d+)/100 img \((\d+)%\) \d+\.\d s( done| stopped)?")


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_log_gets_start_every_tenth_and_end_lines_without_carriage_returns():
    """Fails if a non-terminal stream gets tqdm's carriage-return bar, or more or fewer than
    a start line, one line per 10 % and an end line."""
    log = io.StringIO()
    assert list(progress(range(100), "decode", unit="img", file=log)) == list(range(100))
    text = log.getvalue()
    assert "\r" not in text and text.endswith("\n")
    lines = text.splitlines()
    matches = [LINE.fullmatch(line) for line in lines]
    assert all(matches), lines
    assert [int(m.group(1)) for m in matches] == [0, 10, 20, 30, 40, 50, 60, 70, 80, 90, 100]
    assert [m.group(3) for m in matches] == [None] * 10 + [" done"]


def test_small_and_odd_totals_give_at_most_one_line_per_step():
    """Fails if a total below 10 repeats lines, or an odd total misses its step boundaries."""
    log = io.StringIO()
    for _ in progress(range(3), "t", file=log):
        pass
    assert [line.split(" it")[0] for line in log.getvalue().splitlines()] == [
        "t: 0/3", "t: 1/3", "t: 2/3", "t: 3/3"]
    log = io.StringIO()
    for _ in progress(range(23), "t", file=log):
        pass
    counts = [int(line.split()[1].split("/")[0]) for line in log.getvalue().splitlines()]
    assert counts == [0, 3, 5, 7, 10, 12, 14, 17, 19, 21, 23]


def test_unknown_total_logs_at_powers_of_two():
    """Fails if an iterable without a length floods the log or logs nothing until the end."""
    log = io.StringIO()
    for _ in progress(iter(range(20)), "gen", file=log):
        pass
    counts = [line.split()[1] for line in log.getvalue().splitlines()]
    assert counts == ["0", "1", "2", "4", "8", "16", "20"]
    assert log.getvalue().splitlines()[-1].endswith(" done")


def test_manual_updates_postfix_and_early_stop():
    """Fails if update()/set_postfix()/with (as pretraining uses them) break, or if a loop that
    stopped early is reported as done."""
    log = io.StringIO()
    with progress(desc="pretrain", total=10, unit="step", file=log) as bar:
        bar.update(5)
        bar.set_postfix(loss="0.500")
        bar.update(2)
    lines = log.getvalue().splitlines()
    assert lines[1].startswith("pretrain: 5/10 step (50%)")
    assert lines[2].startswith("pretrain: 7/10 step (70%)") and lines[2].endswith("loss=0.500")
    assert lines[-1].endswith("loss=0.500 stopped") and len(lines) == 4
    log = io.StringIO()
    for i in progress(range(100), "loop", file=log):
        if i == 30:
            break
    assert log.getvalue().splitlines()[-1].startswith("loop: 30/100 it (30%)")
    assert log.getvalue().splitlines()[-1].endswith(" stopped")


def test_terminal_gets_tqdm_and_disabled_writes_nothing():
    """Fails if a terminal loses its tqdm bar, or if enabled=False still writes."""
    bar = progress(range(3), "x", file=Terminal())
    assert isinstance(bar, tqdm) and not isinstance(bar, PlainProgress)
    assert list(bar) == [0, 1, 2]
    quiet = io.StringIO()
    assert list(progress(range(3), "x", enabled=False, file=quiet)) == [0, 1, 2]
    with progress(desc="x", total=5, enabled=False, file=quiet) as manual:
        manual.update(5)
    assert quiet.getvalue() == ""
    assert isinstance(progress(range(3), "x", file=io.StringIO()), PlainProgress)


def test_training_epoch_and_search_bars_write_plain_lines_into_a_log(capsys):
    """Fails if glora.run.engine's epoch bar writes tqdm's carriage-return bar into a log that is not a
    terminal, or more than a first and a last line per epoch."""
    import torch

    from glora.run.engine import train_one_epoch
    model = torch.nn.Linear(4, 3)
    batches = [(torch.randn(2, 4), torch.tensor([0, 1])) for _ in range(25)]
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    train_one_epoch(model, batches, optimizer, torch.device("cpu"), epoch=7, progress=True)
    err = capsys.readouterr().err  # pytest's captured stderr is not a terminal
    assert "\r" not in err
    lines = err.splitlines()
    assert len(lines) == 2 and lines[0].startswith("epoch 7: 0/25 it (0%)")
    assert lines[1].startswith("epoch 7: 25/25 it (100%)") and lines[1].endswith(" done")


def test_steps_one_gives_only_the_first_and_last_line():
    """Fails if steps=1 still writes a line every 10 %."""
    log = io.StringIO()
    for _ in progress(range(50), "e", file=log, steps=1):
        pass
    assert [line.split(" it")[0] for line in log.getvalue().splitlines()] == ["e: 0/50", "e: 50/50"]
