"""Reading a YAML file safely: the one loader for configs, sweep plans and subnet files.

``yaml.safe_load`` builds no Python objects, but it does expand aliases: a few hundred bytes of
nested ``&a [*b, *b, ...]`` (a "billion laughs") become a structure that is small in memory, as
the aliases share their nodes, and that explodes wherever it is serialised or printed (``json.dumps``
of a plan, an error message naming a value). Nothing this project reads needs an alias, so
:func:`load_yaml` refuses the first one, naming the file and line, before anything is built. It
also refuses a file that is not a regular file (a FIFO would block the reader) or is larger than
``MAX_BYTES``.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from glora.errors import ConfigError

MAX_BYTES = 16 * 2**20  # far above any config, plan or subnet file (a 7B LLM's subnet is ~30 kB)


class _NoAliasLoader(yaml.SafeLoader):
    """PyYAML's safe loader with aliases refused where the composer meets them."""

    def compose_node(self, parent, index):
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise _AliasFound(event.anchor, event.start_mark)
        return super().compose_node(parent, index)


class _AliasFound(Exception):
    def __init__(self, anchor: str, mark):
        super().__init__(anchor)
        self.anchor, self.mark = anchor, mark


def load_yaml(path: str | os.PathLike) -> Any:
    """The content of the YAML file ``path`` (safe types only, no aliases).

    ``ConfigError`` (one line naming the file) if it is missing, not a regular file, larger than
    ``MAX_BYTES``, not valid YAML, or uses an alias (``*name``).
    """
    path = Path(path)
    try:
        info = os.stat(path)  # follows a link (an input may be one) but opens nothing: never blocks
        if not stat.S_ISREG(info.st_mode):
            raise ConfigError(f"{path} is not a regular file (a FIFO, a device or a folder); "
                              "a YAML file is read from a regular file only")
        if info.st_size > MAX_BYTES:
            raise ConfigError(f"{path} is {info.st_size} bytes, more than the {MAX_BYTES} a YAML file "
                              "of this project may hold")
        with open(path, "rb") as handle:
            text = handle.read(MAX_BYTES + 1).decode("utf-8")
    except OSError as err:
        raise ConfigError(f"cannot read {path}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path} is not valid YAML: it is not UTF-8 text") from None
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader subclass
    except _AliasFound as found:
        raise ConfigError(f"{path}: line {found.mark.line + 1}: YAML aliases (*{found.anchor}) are not "
                          "accepted; write the value out in full") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
