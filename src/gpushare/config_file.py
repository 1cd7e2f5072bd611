"""A config file read the way every gpushare file is (scenario, plan): a regular UTF-8 file of
bounded size holding one YAML mapping, read safely, with a key given twice refused rather than
silently overwritten; every failure one line naming the option that gave the file. Below the
schemas (config.py, plan_config.py), which validate what it returns.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


MAX_CONFIG_BYTES = 1 << 20
"""A scenario is a few kilobytes; anything far bigger is a wrong path, not a config."""


class DuplicateKeyError(yaml.constructor.ConstructorError):
    def __init__(self, key: Any, key_node: yaml.Node):
        super().__init__(problem=f"key {key!r} is given twice", problem_mark=key_node.start_mark)
        self.key = key


class UniqueKeyLoader(yaml.SafeLoader):
    """PyYAML's safe loader, except that a key given twice in one mapping is an error: the
    safe loader keeps the last value, silently. Keys a merge (<<) brings in may still be
    overridden; that is what a merge is for."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[Any] = set()
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                if key in seen:
                    raise DuplicateKeyError(key, key_node)
                seen.add(key)
            except TypeError:  # an unhashable key: the safe loader's own error says so
                pass
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str) -> Any:
    """YAML as the project reads every config: safely, and refusing keys given twice."""
    return yaml.load(text, Loader=UniqueKeyLoader)


def read_config_file(path: Path, flag: str = "--config") -> dict[str, Any]:
    """The YAML mapping in `path`; an error is one line naming `flag` (the option that gave it)."""
    try:
        found = Path(path).stat()
        if not stat.S_ISREG(found.st_mode):
            raise ConfigError(f"{flag}: {path} is not a regular file")
        if found.st_size > MAX_CONFIG_BYTES:
            raise ConfigError(f"{flag}: {path} is {found.st_size} bytes; a config is at most "
                              f"{MAX_CONFIG_BYTES} bytes")
        text = Path(path).read_bytes().decode("utf-8")
    except OSError as err:
        raise ConfigError(f"{flag}: cannot read {path}: {err.strerror}") from None
    except UnicodeDecodeError as err:
        raise ConfigError(f"{flag}: {path} is not UTF-8 text (near byte {err.start})") from None
    try:
        raw = load_yaml(text)
    except DuplicateKeyError as err:
        assert err.problem_mark is not None
        raise ConfigError(f"{flag}: {path}: key {err.key!r} is given twice in one mapping "
                          f"(again at line {err.problem_mark.line + 1})") from None
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{flag}: {path} is not valid YAML{where}") from None
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{flag}: {path} must hold a mapping of keys, not {type(raw).__name__}")
    return raw


def apply_overrides(raw: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """Set dotted keys (`load.concurrency`) on a copy of `raw`; None values are skipped."""
    merged = yaml.safe_load(yaml.safe_dump(raw))  # deep copy of plain data
    for dotted, value in overrides.items():
        if value is None:
            continue
        node = merged
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
            if not isinstance(node, dict):
                raise ConfigError(f"config: {key} must be a mapping")
        node[leaf] = value
    return merged
