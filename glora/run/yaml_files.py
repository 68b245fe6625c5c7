"""Reading a YAML file safely: the one loader for configs, sweep plans and subnet files.

``yaml.safe_load`` builds no Python objects, but it does expand aliases: a few hundred bytes of
nested ``&a [*b, *b, ...]`` (a "billion laughs") become a structure that is small in memory, as
the aliases share their nodes, and that explodes wherever it is serialised or printed (``json.dumps``
of a plan, an error message naming a value). Aliases themselves are legitimate (``yaml.safe_dump``
writes one for every object it meets twice), so :func:`load_yaml` keeps them but counts the values
the document holds once every alias is expanded, from the composed nodes and before anything is
built, and refuses a document above ``MAX_VALUES`` (or one that contains itself), naming the file.
It also refuses a file that is not a regular file (a FIFO would block the reader) or is larger
than ``MAX_BYTES``.
"""
from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

from glora.errors import ConfigError

MAX_BYTES = 16 * 2**20  # far above any config, plan or subnet file (a 7B LLM's subnet is ~30 kB)
MAX_VALUES = 10**6  # values once aliases are expanded; a 7B LLM's subnet file holds a few thousand


class AliasBombError(ConfigError):
    """A YAML document whose aliases expand beyond ``MAX_VALUES`` values (one line naming the file)."""


def expanded_size(node: yaml.Node, limit: int) -> int:
    """The number of values (scalars, sequences, mappings) of ``node`` with every alias expanded;
    counting stops above ``limit``. A node that contains itself counts as unbounded."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()

    def size(item: yaml.Node) -> int:
        key = id(item)
        if key in sizes:
            return sizes[key]
        if key in open_nodes:
            return limit + 1  # a recursive alias: no finite expansion
        open_nodes.add(key)
        total = 1
        if isinstance(item, yaml.SequenceNode):
            children = item.value
        elif isinstance(item, yaml.MappingNode):
            children = [part for pair in item.value for part in pair]
        else:
            children = []
        for child in children:
            total += size(child)
            if total > limit:
                break
        open_nodes.discard(key)
        sizes[key] = total
        return total

    return size(node)


def load_yaml(path: str | os.PathLike) -> Any:
    """The content of the YAML file ``path`` (safe types only; aliases expanded under a bound).

    ``ConfigError`` (one line naming the file) if it is missing, not a regular file, larger than
    ``MAX_BYTES``, not valid YAML, or holds more than ``MAX_VALUES`` values once its aliases are
    expanded.
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
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is not None and expanded_size(node, MAX_VALUES) > MAX_VALUES:
            raise AliasBombError(f"{path}: its aliases (*name) expand to more than {MAX_VALUES:,} values "
                              "(an alias bomb, or a document that contains itself); write the values out")
        return None if node is None else loader.construct_document(node)
    except yaml.YAMLError as err:
        raise ConfigError(f"{path} is not valid YAML: {str(err).splitlines()[0]}") from None
    except RecursionError:
        raise ConfigError(f"{path} is nested too deeply to be a file of this project") from None
    finally:
        loader.dispose()
