"""Reading a YAML file a user hands over, with the limits that keep it cheap and unambiguous.

yaml.safe_load builds no objects but plain data, yet it still trusts the document's size: a 2 kB
"billion laughs" (aliases of aliases) expands to gigabytes, and a key written twice silently keeps
the second value. `load_yaml` parses to YAML's node graph first, where an alias is one shared
node, counts what the document would expand to (linear in the nodes written, whatever they expand
to), checks depth and duplicate keys, and only then builds the Python values.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import yaml

MAX_BYTES = 1 << 20  # a params file is a few kB
MAX_NODES = 100_000  # scalars, lists and mappings once every alias is expanded
MAX_DEPTH = 64  # params files nest three deep


class YamlError(ValueError):
    """A YAML file refused before its values are built; the message names the file."""


def load_yaml(path: Path | str) -> Any:
    """The plain data of the YAML file at `path` (None for an empty file); YamlError naming the
    file when it is not a regular file, too big, not YAML, or expands past the limits."""
    path = Path(path)
    text = _read(path)
    loader = yaml.SafeLoader(text)
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _Walk(path).size(node, 0)
        return loader.construct_document(node)
    except yaml.YAMLError as exc:
        raise YamlError(f"{path}: not valid YAML: {exc}") from None
    except RecursionError:
        raise YamlError(f"{path}: nested more than {MAX_DEPTH} levels deep (refused)") from None
    finally:
        loader.dispose()


def _read(path: Path) -> str:
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: file not found") from None
    except OSError as exc:
        raise YamlError(f"{path}: cannot read ({exc.strerror})") from None
    if not stat.S_ISREG(info.st_mode):  # a FIFO or a device would block or never end
        raise YamlError(f"{path}: not a regular file")
    if info.st_size > MAX_BYTES:
        raise YamlError(f"{path}: {info.st_size:,} bytes; a params file is at most "
                        f"{MAX_BYTES:,} (refused)")
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise YamlError(f"{path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    except OSError as exc:
        raise YamlError(f"{path}: cannot read ({exc.strerror})") from None


class _Walk:
    """One pass over the node graph: expanded size per node (memoised: an alias is the node it
    names), depth, recursive aliases and repeated keys."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sizes: dict[int, int] = {}
        self.open: set[int] = set()

    def size(self, node: yaml.Node, depth: int) -> int:
        key = id(node)
        if key in self.sizes:
            return self.sizes[key]
        where = f"{self.path}, line {node.start_mark.line + 1}"
        if key in self.open:
            raise YamlError(f"{where}: an alias refers to itself (refused)")
        if depth > MAX_DEPTH:
            raise YamlError(f"{where}: nested more than {MAX_DEPTH} levels deep (refused)")
        self.open.add(key)
        if isinstance(node, yaml.MappingNode):
            self._no_repeated_keys(node, where)
            children = [n for pair in node.value for n in pair]
        else:
            children = node.value if isinstance(node, yaml.SequenceNode) else []
        total = 1 + sum(self.size(child, depth + 1) for child in children)
        self.open.discard(key)
        if total > MAX_NODES:
            raise YamlError(f"{where}: expands to more than {MAX_NODES:,} values once its "
                            "aliases are resolved (a YAML alias bomb?): refused")
        self.sizes[key] = total
        return total

    def _no_repeated_keys(self, node: yaml.MappingNode, where: str) -> None:
        seen: set[str] = set()
        for key_node, _ in node.value:
            if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":
                continue
            if key_node.value in seen:
                line = key_node.start_mark.line + 1
                raise YamlError(f"{self.path}, line {line}: key {key_node.value!r} appears twice "
                                "in one mapping (YAML would silently keep the last)")
            seen.add(key_node.value)
