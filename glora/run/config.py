"""Command-line configuration: argparse owns every key, type and default; YAML only overrides."""
from __future__ import annotations

import argparse
import ast
import contextlib
import copy
import json
import os
import signal
from pathlib import Path
from typing import Any, Callable, Sequence

import yaml

from glora.errors import ConfigError, one_line_errors
from glora.run.compile import COMPILE_CHOICES
from glora.io.files import atomic_write
from glora.run.yaml_files import load_yaml


def add_common_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Flags both steps share (defaults are the original code's)."""
    parser.add_argument("--config", type=str, default=None, help="YAML file overriding these defaults")
    parser.add_argument("--dataset", type=str, default="cifar", help="VTAB-1k task folder name")
    parser.add_argument("--data-path", type=str, default="data/vtab-1k")
    parser.add_argument("--model", type=str, default="vit_base_patch16_224_in21k", help="timm model name")
    parser.add_argument("--model-kwargs", type=parse_kwargs, nargs="+", action=MergeKwargs, default={},
                        metavar="KEY=VALUE", help="extra timm.create_model arguments, as timm's key=value pairs "
                        "(depth=2 img_size=32) or one JSON object ('{\"depth\": 2}')")
    parser.add_argument("--pretrained", type=str, default="ViT-B_16.npz",
                        help="backbone weights: .npz (Google layout), .pth/.pt/.safetensors, or none")
    parser.add_argument("--input-size", type=int, default=224)
    parser.add_argument("--rank", type=int, default=4, help="LoRA rank of the supernet supports")
    parser.add_argument("--targets", type=str, default=None,
                        help="regex over qualified module names of the nn.Linear layers that get GLoRA "
                             r"(full match; default: the ViT block linears, blocks\.\d+\.(attn\.(qkv|proj)|mlp\.(fc1|fc2)))")
    parser.add_argument("--protocol", type=str, default="val", choices=("val", "paper", "retrain"),
                        help="val: train800 / search val200; paper: train800val200 / search test; "
                             "retrain: as val, then the chosen subnet and baselines train on train800val200")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--eval-batch-size", type=int, default=256)
    parser.add_argument("--drop-path", type=float, default=0.1)
    parser.add_argument("--device", type=str, default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--precision", type=str, default="auto", choices=("auto", "bf16", "fp32"),
                        help="auto = the original's numerics: fp32 weights, TF32 matmuls on CUDA (fp32 on "
                             "the CPU); bf16 = bf16 autocast (a speed option; README, bf16); fp32 = fp32 "
                             "with TF32 off")
    parser.add_argument("--compile", type=str, default="auto", choices=COMPILE_CHOICES,
                        help="torch.compile the fixed-graph models (fixed subnet or full fine-tuning, search "
                             "scoring); auto = off on the CPU (the compile time is not recovered by CPU-sized "
                             "runs, measured) and on CUDA (not measured on a GPU yet)")
    parser.add_argument("--subnet", type=str, default=None,
                        help="a fixed subnet: a preset (linear_probe, lora, bitfit, ssf, largest) or a subnet.yaml")
    parser.add_argument("--resume", nargs="?", const=True, default=False, type=resume_mode,
                        help="continue from the state in the output folder; --resume auto: continue if a "
                             "state exists, start fresh if none, and exit at once if the run is finished")
    parser.add_argument("--overwrite", action="store_true",
                        help="start afresh in a --save_path that holds a run, deleting that run's outputs "
                             "(without it such a folder is refused unless --resume)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", help="hide progress bars")
    parser.add_argument("--log-tensorboard", type=str, default=None, metavar="DIR",
                        help="also write TensorBoard scalars into DIR (needs the tensorboard extra)")
    parser.add_argument("--print-config", action="store_true",
                        help="print the resolved settings as YAML (a valid --config) and exit")
    return parser


def parse_kwargs(text: str) -> dict[str, Any]:
    """One ``--model-kwargs`` value: a JSON object, or ``key=value`` pairs (values read as Python
    literals where they parse, else as text), as timm's ``--model-kwargs`` takes them."""
    text = str(text).strip()
    if text.startswith(("{", "[")):  # JSON; anything but an object is refused by the checks, naming it
        try:
            return json.loads(text)
        except ValueError as err:
            raise argparse.ArgumentTypeError(f"not a JSON object: {err}") from None
    pairs = {}
    for item in text.split():
        key, eq, raw = item.partition("=")
        if not eq or not key:
            raise argparse.ArgumentTypeError(f"expected key=value, got {item!r}")
        try:
            pairs[key] = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            pairs[key] = raw
    return pairs


class MergeKwargs(argparse.Action):
    """``--model-kwargs a=1 b=2``: the pairs of every token, merged into one mapping."""

    def __call__(self, parser, namespace, values, option_string=None):
        if len(values) == 1 or not all(isinstance(value, dict) for value in values):
            setattr(namespace, self.dest, values[0])
            return
        merged: dict[str, Any] = {}
        for value in values:
            merged.update(value)
        setattr(namespace, self.dest, merged)


def resume_mode(value: str) -> bool | str:
    """``--resume`` value: ``auto``, or a yes/no word (a YAML ``resume: true`` arrives as a bool)."""
    word = str(value).strip().lower()
    if word == "auto":
        return "auto"
    if word in ("1", "true", "yes", "on"):
        return True
    if word in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected auto, yes or no, got {value!r}")


# Settings that do not change what a run computes: a finished run is reused across them.
RUN_ONLY_KEYS = frozenset({"resume", "progress", "device", "config", "save_every", "eval_every",
                           "eval_subnets", "eval_batch_size", "overwrite", "allow_partial", "compile",
                           "log_tensorboard"})


def differing_settings(recorded: dict[str, Any], current: dict[str, Any],
                       ignore: "frozenset[str] | set[str]" = RUN_ONLY_KEYS) -> list[str]:
    """``key: recorded -> current`` for every setting both know (but ``ignore``) that differs."""
    keys = sorted((set(recorded) & set(current)) - set(ignore))
    return [f"{k}: {recorded.get(k)!r} -> {current.get(k)!r}" for k in keys if recorded.get(k) != current.get(k)]


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse ``argv`` with precedence CLI > ``--config`` YAML > argparse defaults."""
    pre, _ = parser.parse_known_args(argv)
    if getattr(pre, "config", None):
        parser.set_defaults(**load_yaml_overrides(parser, pre.config))
    return parser.parse_args(argv)


def given_keys(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> set[str]:
    """Destinations set explicitly, on the command line or in the ``--config`` YAML (not defaults)."""
    probe = copy.deepcopy(parser)
    for action in probe._actions:
        action.default = argparse.SUPPRESS  # absent flags then leave no attribute at all
    probe._defaults = {}
    given, _ = probe.parse_known_args(argv)
    keys = set(vars(given))
    if getattr(given, "config", None):
        keys |= set(load_yaml_overrides(parser, given.config))
    return keys - {"config"}


# The configs and sweep plans shipped in the package (glora/configs/*.yaml).
SHIPPED = Path(__file__).resolve().parents[1] / "configs"


def shipped_names() -> list[str]:
    """Names of the shipped configs and plans (``demo``, ``mini_vtab``, ...)."""
    return sorted(p.stem for p in SHIPPED.glob("*.yaml"))


def find_config(reference: str | os.PathLike) -> Path | None:
    """A config or plan file: the path itself if it is a file, else the shipped one of that name.

    ``demo``, ``demo.yaml`` and ``configs/demo.yaml`` all name ``glora/configs/demo.yaml`` when no
    such file exists where the command runs, so the same plans work from a checkout and an install.
    """
    path = Path(reference)
    if path.is_file():
        return path
    if path.parent in (Path("."), Path("configs"), Path("glora/configs")) and path.suffix in ("", ".yaml"):
        shipped = SHIPPED / f"{path.stem}.yaml"
        return shipped if shipped.is_file() else None
    return None


def load_yaml_overrides(parser: argparse.ArgumentParser, path: str) -> dict[str, Any]:
    """Read a YAML config; every key must be a parser destination, typed by its action."""
    file = find_config(path)
    if file is None:
        raise SystemExit(f"error: config file not found: {path} (nor a shipped config: {', '.join(shipped_names())})")
    try:
        raw = load_yaml(file) or {}
    except ConfigError as err:
        raise SystemExit(f"error: {err}") from None
    if not isinstance(raw, dict):
        raise SystemExit(f"error: {file} must hold a mapping of option: value")
    actions = {a.dest: a for a in parser._actions if a.dest not in ("help", "config")}
    overrides, unknown = {}, []
    for key, value in raw.items():
        dest = str(key).replace("-", "_")
        if dest not in actions:
            unknown.append(str(key))
            continue
        overrides[dest] = _typed(actions[dest], value, file, key)
    if unknown:
        valid = ", ".join(sorted(actions))
        raise SystemExit(f"error: unknown key(s) in {file}: {', '.join(unknown)} (valid: {valid})")
    return overrides


def _typed(action: argparse.Action, value: Any, file: Path, key: str) -> Any:
    # PyYAML reads 1e-4 as the string "1e-4": convert strings through the argument's own type.
    if isinstance(value, str) and action.type is not None:
        try:
            value = action.type(value)
        except (TypeError, ValueError, argparse.ArgumentTypeError):
            raise SystemExit(f"error: {file}: {key}: {value!r} is not a valid {action.type.__name__}") from None
    elif not isinstance(value, str):
        expected = _type_problem(action, value)
        if expected:
            raise SystemExit(f"error: {file}: {key}: {value!r} is not {expected}")
        if action.type is str and value is not None:
            value = str(value)  # `dataset: 123` or `targets: 1` mean the text
    if action.choices is not None and value not in action.choices:
        raise SystemExit(f"error: {file}: {key}: {value!r} is not one of {list(action.choices)}")
    return value


def _type_problem(action: argparse.Action, value: Any) -> str | None:
    """What a YAML value that is not a string should have been, or None if it fits the action."""
    if value is None and action.default is None:
        return None  # an optional setting left unset
    if action.nargs == 0:  # store_true / store_false
        return None if isinstance(value, bool) else "true or false"
    if action.type is parse_kwargs:
        return None if isinstance(value, dict) else "a mapping"
    if action.type is int:
        return None if isinstance(value, int) and not isinstance(value, bool) else "a valid int"
    if action.type is float:
        return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "a valid float"
    if action.type is resume_mode:
        return None if isinstance(value, bool) else "auto, yes or no"
    return None if isinstance(value, (int, float)) and not isinstance(value, bool) else "a valid string"


def write_yaml(path: str | os.PathLike, data: Any) -> None:
    """Write YAML atomically (``glora.io.files.atomic_write``)."""
    atomic_write(path, yaml.safe_dump(data, sort_keys=False))


def run_command(settings, main: Callable[[Any], None], interrupted: Callable[[], str]) -> None:
    """A step's command: print the settings (``--print-config``) or run ``main``; expected failures
    are one line, and Ctrl-C or SIGTERM that ``main`` does not handle itself ends with the line
    ``interrupted()`` gives."""
    if settings.print_config:
        print(settings.as_yaml(), end="")
        return
    try:
        with one_line_errors(), sigterm_as_interrupt():
            main(settings)
    except KeyboardInterrupt:
        raise SystemExit(interrupted()) from None


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Treat SIGTERM (a scheduler's pre-emption) like Ctrl-C while the block runs.

    SIGINT gets Python's Ctrl-C handler too: a process started in the background by a
    non-interactive shell inherits SIGINT ignored, and would otherwise ignore the interrupt a
    sweep sends its jobs to make them save and stop.
    """
    previous = {sig: signal.signal(sig, signal.default_int_handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
