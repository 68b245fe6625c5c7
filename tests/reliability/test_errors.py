"""One exception type for expected failures: every CLI prints one line for a GLoRAError and lets
any other exception (a bug) keep its traceback."""
import pytest

from glora.run import evolution
from glora.run import supernet
import vtab
import vtab.check
import vtab.report
from glora import errors
from glora.run.checkpoint import CheckpointError
from glora.run.engine import NonFiniteLossError
from glora.run.backbone import WeightsError
from glora.export.peft_map import PeftExportError
from glora.search import BudgetError
from glora.sweep import cli as sweep_cli
from glora.sweep.plan import PlanError
from vtab.mini import __main__ as mini_cli
from vtab.report import ReportError


@pytest.mark.parametrize("cls, old_base", [
    (vtab.DataError, Exception), (WeightsError, RuntimeError), (CheckpointError, RuntimeError),
    (BudgetError, ValueError), (NonFiniteLossError, FloatingPointError), (ReportError, Exception),
    (errors.TargetError, ValueError), (errors.ConfigError, ValueError), (PlanError, ValueError),
    (PeftExportError, ValueError), (errors.OutputError, Exception),
])
def test_every_expected_failure_is_a_gloraerror_and_keeps_its_old_base(cls, old_base):
    """Fails if an area's error is not a GLoRAError (a CLI would print its traceback) or stops being
    the built-in type callers caught before (BudgetError as a ValueError, ...)."""
    assert issubclass(cls, errors.GLoRAError) and issubclass(cls, old_base)


def raise_in(monkeypatch, module, name, error):
    def boom(*args, **kwargs):
        raise error
    monkeypatch.setattr(module, name, boom)


CLIS = {  # name -> (module holding the patched function, its name, the call)
    "supernet": (supernet, "main", lambda: supernet.cli(["--dataset", "eurosat"])),
    "evolution": (evolution, "main", lambda: evolution.cli(["--dataset", "eurosat"])),
    "sweep": (sweep_cli, "main", lambda: sweep_cli.cli(["--dry-run"])),
    "mini": (mini_cli, "main", lambda: mini_cli.cli(["build"])),
}


@pytest.mark.parametrize("name", list(CLIS))
def test_cli_prints_one_line_for_a_gloraerror(monkeypatch, name):
    """Fails if a GLoRAError (here with a line break inside) reaches the user as a traceback or as
    more than one line."""
    module, attr, call = CLIS[name]
    raise_in(monkeypatch, module, attr, CheckpointError("run.pt is not\na checkpoint"))
    with pytest.raises(SystemExit) as err:
        call()
    assert err.value.code == "error: run.pt is not a checkpoint"


@pytest.mark.parametrize("name", list(CLIS))
def test_cli_lets_a_plain_valueerror_keep_its_traceback(monkeypatch, name):
    """Fails if a CLI catches plain ValueError (or Exception) and so hides a genuine bug behind a
    one-line message."""
    module, attr, call = CLIS[name]
    raise_in(monkeypatch, module, attr, ValueError("a bug"))
    with pytest.raises(ValueError, match="a bug"):
        call()


def test_report_and_check_one_line_for_gloraerror_traceback_otherwise(monkeypatch, tmp_path, capsys):
    """Fails if python -m vtab.report or vtab.check turns a bug into an error line, or prints a
    GLoRAError as more than one line."""
    raise_in(monkeypatch, vtab.report, "collect", ReportError("no results\nanywhere"))
    assert vtab.report.main([str(tmp_path)]) == 2
    assert capsys.readouterr().err == "vtab.report: error: no results anywhere\n"
    raise_in(monkeypatch, vtab.report, "collect", ValueError("a bug"))
    with pytest.raises(ValueError, match="a bug"):
        vtab.report.main([str(tmp_path)])
    raise_in(monkeypatch, vtab.check, "find_tasks", vtab.DataError("no tasks"))
    assert vtab.check.main(["--data-path", str(tmp_path)]) == 2
    assert capsys.readouterr().err == "vtab.check: error: no tasks\n"
    raise_in(monkeypatch, vtab.check, "find_tasks", KeyError("a bug"))
    with pytest.raises(KeyError):
        vtab.check.main(["--data-path", str(tmp_path)])


def test_export_peft_one_line_for_gloraerror_traceback_otherwise(monkeypatch):
    """Fails if python -m glora.run.export_peft still catches plain ValueError."""
    from glora.run import export_peft
    raise_in(monkeypatch, export_peft, "main", PeftExportError("blocks.0.mlp.fc1: no bias"))
    with pytest.raises(SystemExit, match="^error: blocks.0.mlp.fc1: no bias$"):
        export_peft.cli(["--checkpoint", "x.pt", "--out", "o"])
    raise_in(monkeypatch, export_peft, "main", ValueError("a bug"))
    with pytest.raises(ValueError, match="a bug"):
        export_peft.cli(["--checkpoint", "x.pt", "--out", "o"])
