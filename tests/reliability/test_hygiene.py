"""Hostile files and numbers: what sits in an output folder (links, FIFOs), YAML alias bombs, seeds
and sizes outside what torch accepts, file modes, and a refused pickle's message."""
import contextlib
import os
import signal
import stat

import pytest
import torch
import yaml

from glora.errors import CheckpointError, ConfigError, OutputError
from glora.io.files import atomic_folder, atomic_write, read_regular_text
from glora.run import evolution, supernet
from glora.run.checkpoint import load_checkpoint, load_subnet
from glora.run.yaml_files import load_yaml
from glora.sweep import cli as sweep_cli
from tests.helpers import write_tiny_setup

# A billion laughs in 372 bytes: nine levels of ten aliases, 10**9 strings once expanded.
BOMB = ('a: &a [' + ",".join(['"lol"'] * 10) + "]\n"
        + "".join(f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 10)}]\n" for i in range(8)))


EXPANDS = ("its aliases (*name) expand to more than 1,000,000 values (an alias bomb, or a document that "
           "contains itself); write the values out")


@contextlib.contextmanager
def no_hang(seconds: int = 120):
    """Turn a hang (a blocking open of a FIFO) into a test failure instead of a stuck suite."""
    def fail(*_):
        raise AssertionError("blocked: the command opened a FIFO and waited for a writer")
    previous = signal.signal(signal.SIGALRM, fail)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


def one_line(excinfo) -> str:
    message = str(excinfo.value)
    assert message.startswith("error: ") and "\n" not in message, message
    return message


def supernet_argv(root, config, *extra):
    return ["--config", str(config), "--dataset", "eurosat", "--save_path", str(root / "sup"), "--epochs", "1", *extra]


def evolution_argv(root, config, *extra):
    return ["--config", str(config), "--dataset", "eurosat", "--save_path", str(root / "search"),
            "--load_path", str(root / "sup"), *extra]


# ---------------------------------------------------------------- links and FIFOs in output folders
def test_planted_lock_symlink_is_refused_and_its_target_untouched(tmp_path):
    """Fails if the lock file is opened through a symbolic link: the run would truncate the link's
    target and write its pid there (a planted .<task>.lock in a shared folder)."""
    config = write_tiny_setup(tmp_path)
    (tmp_path / "sup").mkdir()
    victim = tmp_path / "precious.txt"
    victim.write_text("do not touch\n")
    (tmp_path / "sup" / ".eurosat.lock").symlink_to(victim)
    with pytest.raises(SystemExit) as err:
        supernet.cli(supernet_argv(tmp_path, config))
    assert one_line(err) == (f"error: {tmp_path / 'sup' / '.eurosat.lock'} is a symbolic link, not a regular file; "
                             "this project neither follows links nor opens special files in its output folders "
                             "(move it away or choose another folder)")
    assert victim.read_text() == "do not touch\n"
    assert sorted(os.listdir(tmp_path / "sup")) == [".eurosat.lock"]


@pytest.mark.parametrize("name", ["eurosat.pt", "eurosat_log.jsonl", "eurosat_args.yaml", ".eurosat.lock"])
@pytest.mark.parametrize("resume", ["auto", "no"])
def test_supernet_refuses_a_fifo_among_its_outputs(tmp_path, name, resume):
    """Fails if a FIFO at the checkpoint, the log, the resolved config or the lock blocks the run
    forever (opening a FIFO waits for a writer) instead of a one-line refusal naming it."""
    config = write_tiny_setup(tmp_path)
    (tmp_path / "sup").mkdir()
    os.mkfifo(tmp_path / "sup" / name)
    with no_hang(), pytest.raises(SystemExit) as err:
        supernet.cli(supernet_argv(tmp_path, config, "--resume", resume))
    assert one_line(err).startswith(f"error: {tmp_path / 'sup' / name} is a FIFO (named pipe), not a regular file")


@pytest.mark.parametrize("name", ["results.json", "search_state.json", "subnet.yaml", "args.yaml", ".lock"])
def test_evolution_resume_auto_refuses_a_fifo_among_its_outputs(tmp_path, name):
    """Fails if `--resume auto` (which reads results.json, then the search state) or the lock blocks
    on a FIFO in --save_path, instead of refusing it in one line before anything is loaded."""
    config = write_tiny_setup(tmp_path)
    (tmp_path / "search").mkdir()
    os.mkfifo(tmp_path / "search" / name)
    with no_hang(), pytest.raises(SystemExit) as err:
        evolution.cli(evolution_argv(tmp_path, config, "--resume", "auto"))
    assert one_line(err).startswith(f"error: {tmp_path / 'search' / name} is a FIFO (named pipe), not a regular file")


def test_results_json_through_a_symlink_is_refused(tmp_path):
    """Fails if `--resume auto` trusts a results.json that is a link to another run's results (it
    would report that run as this one, finished)."""
    config = write_tiny_setup(tmp_path)
    (tmp_path / "search").mkdir()
    (tmp_path / "elsewhere.json").write_text('{"config": {}, "test_acc1": 99.0}')
    (tmp_path / "search" / "results.json").symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(SystemExit) as err:
        evolution.cli(evolution_argv(tmp_path, config, "--resume", "auto"))
    assert one_line(err).startswith(f"error: {tmp_path / 'search' / 'results.json'} is a symbolic link")
    assert (tmp_path / "elsewhere.json").read_text() == '{"config": {}, "test_acc1": 99.0}'


def test_read_regular_text_never_opens_a_fifo(tmp_path):
    """Fails if the reader behind `--resume auto` opens a FIFO (and blocks) or reads a device."""
    os.mkfifo(tmp_path / "pipe")
    with no_hang(), pytest.raises(OutputError, match=r"pipe is a FIFO \(named pipe\), not a regular file"):
        read_regular_text(tmp_path / "pipe")
    with pytest.raises(FileNotFoundError):
        read_regular_text(tmp_path / "absent.json")
    (tmp_path / "a.json").write_text("{}")
    assert read_regular_text(tmp_path / "a.json") == "{}"


# ---------------------------------------------------------------- YAML alias bombs
def test_the_bomb_is_what_it_claims():
    """Fails if the test's own file stops being a small alias bomb (PyYAML's plain loader accepts it)."""
    assert len(BOMB.encode()) == 372 and BOMB.count("*") == 80
    assert len(yaml.safe_load(BOMB)["i"]) == 10  # safe_load composes it: the expansion happens later


def test_yaml_alias_bomb_config_is_one_line(tmp_path):
    """Fails if a 476-byte billion-laughs --config expands (a MemoryError where it is printed or
    serialised) instead of a one-line refusal naming the file."""
    (tmp_path / "bomb.yaml").write_text(BOMB)
    with pytest.raises(SystemExit) as err:
        supernet.cli(["--config", str(tmp_path / "bomb.yaml"), "--save_path", str(tmp_path / "sup")])
    assert one_line(err) == f"error: {tmp_path / 'bomb.yaml'}: {EXPANDS}"
    assert not (tmp_path / "sup").exists()


def test_yaml_alias_bomb_plan_is_one_line(tmp_path, capsys):
    """Fails if the sweep's plan reader expands a billion-laughs plan (json.dumps of it runs out of
    memory) instead of refusing it in one line naming the file."""
    (tmp_path / "plan.yaml").write_text(BOMB)
    with pytest.raises(SystemExit) as err:
        sweep_cli.cli([str(tmp_path / "plan.yaml"), "--dry-run"])
    assert one_line(err) == f"error: {tmp_path / 'plan.yaml'}: {EXPANDS}"


def test_subnet_file_bombs_are_refused_and_shared_choices_load(tmp_path):
    """Fails if a subnet file's alias bomb or self-containing alias is expanded instead of refused
    naming the file, or if the aliases yaml.safe_dump writes for a shared choice are refused."""
    names = ["blocks.0.attn.qkv", "blocks.0.attn.proj"]
    choice = {"A": "vector", "B": "none", "C": "none", "D": "none", "E": "none"}
    (tmp_path / "shared.yaml").write_text(yaml.safe_dump({"rank": 4, "layers": {name: choice for name in names}}))
    assert "*id001" in (tmp_path / "shared.yaml").read_text()
    assert load_subnet(str(tmp_path / "shared.yaml"), names, 4) == [choice, choice]
    (tmp_path / "bomb.yaml").write_text(BOMB + "rank: 4\nlayers: *i\n")
    (tmp_path / "loop.yaml").write_text("rank: 4\nlayers: &l {blocks.0.attn.qkv: *l}\n")
    for name in ("bomb.yaml", "loop.yaml"):
        with pytest.raises(CheckpointError) as err:
            load_subnet(str(tmp_path / name), names, 4)
        assert str(err.value) == f"{tmp_path / name}: {EXPANDS}"


def test_load_yaml_reads_plain_yaml_and_refuses_fifos(tmp_path):
    """Fails if the safe loader changes what a plain file means (aliases included), or blocks on a
    FIFO --config."""
    data = {"model": "vit_tiny_patch16_224", "lr": 0.01, "model_kwargs": {"depth": 2}, "flags": [1, 2]}
    (tmp_path / "ok.yaml").write_text(yaml.safe_dump(data) + "shared: &s {a: [1, 2]}\nagain: *s\n")
    assert load_yaml(tmp_path / "ok.yaml") == {**data, "shared": {"a": [1, 2]}, "again": {"a": [1, 2]}}
    (tmp_path / "empty.yaml").write_text("")
    assert load_yaml(tmp_path / "empty.yaml") is None
    os.mkfifo(tmp_path / "fifo.yaml")
    with no_hang(), pytest.raises(ConfigError, match=r"fifo.yaml is not a regular file"):
        load_yaml(tmp_path / "fifo.yaml")


# ---------------------------------------------------------------- numbers
@pytest.mark.parametrize("cli,argv", [
    (supernet.cli, ["--seed", str(2**63)]), (supernet.cli, ["--seed", "-1"]),
    (evolution.cli, ["--seed", str(10**14)]), (supernet.cli, ["--input-size", "99999"]),
], ids=["seed_2_63", "seed_negative", "search_seed_1e14", "input_size_99999"])
def test_numbers_outside_torch_range_are_refused_before_the_folder_is_taken(tmp_path, cli, argv):
    """Fails if a seed that overflows torch's seeding (a derived per-epoch seed included) or an input
    size that would allocate a huge probe passes the checks and fails later, after --save_path was taken."""
    config = write_tiny_setup(tmp_path)
    flag, value = argv
    with pytest.raises(SystemExit) as err:
        cli(["--config", str(config), "--dataset", "eurosat", "--save_path", str(tmp_path / "out"),
             "--load_path", str(tmp_path / "sup"), *argv] if cli is evolution.cli else
            ["--config", str(config), "--dataset", "eurosat", "--save_path", str(tmp_path / "out"), *argv])
    high = {"--seed": 2**32 - 1, "--input-size": 4096}[flag]
    low = {"--seed": 0, "--input-size": 1}[flag]
    assert one_line(err) == f"error: {flag} {int(value)}: must be an integer in [{low}, {high}]"
    assert not (tmp_path / "out").exists()


def test_the_largest_seed_fits_every_seed_derived_from_it():
    """Fails if the bound on --seed lets a derived seed (per epoch and rank, the loader's order)
    overflow torch's seeding range."""
    from glora.run.distributed import World, epoch_seed
    from glora.run.preflight import MAX_SEED

    world = World(rank=7, size=8, local_rank=7)  # the largest rank of a large job
    torch.manual_seed(epoch_seed(MAX_SEED, 10**6, world))
    torch.Generator().manual_seed(MAX_SEED * 100003 + 10**6)


# ---------------------------------------------------------------- modes
@pytest.mark.parametrize("mask,expected", [(0o022, 0o644), (0o077, 0o600)])
def test_every_written_file_gets_the_mode_of_a_plain_open(tmp_path, mask, expected):
    """Fails if a shared-cache write (mkstemp: 0600) or a file in an atomic folder (safetensors'
    writer: 0600) gets another mode than a plain open under the same umask."""
    from safetensors.torch import save_file

    previous = os.umask(mask)
    try:
        atomic_write(tmp_path / "cache.pt", b"x", unique=True)
        atomic_write(tmp_path / "plain.yaml", "a: 1\n")
        with atomic_folder(tmp_path / "merged") as tmp:
            tmp.mkdir()
            save_file({"w": torch.zeros(2)}, str(tmp / "model.safetensors"))
            (tmp / "config.json").write_text("{}")
        with open(tmp_path / "reference", "w"):
            pass
    finally:
        os.umask(previous)
    modes = {p.relative_to(tmp_path).as_posix(): stat.S_IMODE(p.stat().st_mode)
             for p in tmp_path.rglob("*") if p.is_file()}
    assert modes == {"cache.pt": expected, "plain.yaml": expected, "merged/model.safetensors": expected,
                     "merged/config.json": expected, "reference": expected}
    assert stat.S_IMODE((tmp_path / "merged").stat().st_mode) == 0o777 & ~mask


# ---------------------------------------------------------------- refused pickles
class _Payload:
    def __reduce__(self):
        return (os.system, ("echo should-not-run",))


def test_refused_pickle_does_not_pass_on_the_advice_to_unpickle_it(tmp_path):
    """Fails if the refusal of a malicious checkpoint repeats torch's 'weights_only=False will likely
    succeed', advice that would run the file's code."""
    torch.save({"state_dict": _Payload()}, tmp_path / "evil.pt")
    with pytest.raises(Exception) as err:
        load_checkpoint(tmp_path / "evil.pt")
    message = str(err.value)
    assert "weights_only" not in message and "\n" not in message
    assert message.startswith(f"cannot read checkpoint {tmp_path / 'evil.pt'}: refused: it holds Python objects "
                              "beyond tensors and plain values, which could run code when loaded (")
    assert "GLOBAL posix.system" in message or "GLOBAL os.system" in message


def test_refused_pickle_as_backbone_is_one_line_without_the_advice(tmp_path):
    """Fails if --pretrained pointing at a malicious pickle passes on torch's weights_only advice."""
    config = write_tiny_setup(tmp_path)
    torch.save({"state_dict": _Payload()}, tmp_path / "evil.pth")
    with pytest.raises(SystemExit) as err:
        supernet.cli(supernet_argv(tmp_path, config, "--pretrained", str(tmp_path / "evil.pth")))
    message = one_line(err)
    assert message.startswith(f"error: cannot load pretrained weights from {tmp_path / 'evil.pth'}: refused: ")
    assert "weights_only" not in message
