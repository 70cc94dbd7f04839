"""Reading a study config file: PyYAML's SafeLoader, stricter where a study needs it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from cnnbench.config_schema import EXP_FLOAT, path_words
from cnnbench.errors import ConfigError

_MERGE_TAG = "tag:yaml.org,2002:merge"


class StrictLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, stricter where a study config needs it:

    - a key written twice in one mapping is an error naming both lines (PyYAML keeps the last one, so a
      variant written twice silently loses its first knobs); `<<:` merge keys still override;
    - YAML 1.2 floats (`1e-3`, `5E-4`, `1.0e3`) are floats, not strings.
    """

    def construct_document(self, node):
        self._check_mappings(node, [], set(), ())
        return super().construct_document(node)

    def _check_mappings(self, node, path: list, seen_nodes: set, ancestors: tuple) -> None:
        if id(node) in ancestors:
            raise ConfigError(f"{path_words(path) if path else 'top level'}: an alias refers to a node that "
                              f"contains it (line {node.start_mark.line + 1}), which no study needs; write the value out")
        if id(node) in seen_nodes:  # an alias: checked where its anchor is
            return
        seen_nodes.add(id(node))
        ancestors = (*ancestors, id(node))
        if isinstance(node, yaml.MappingNode):
            first_line: dict = {}
            for key_node, value_node in node.value:
                if key_node.tag == _MERGE_TAG:
                    self._check_mappings(value_node, path, seen_nodes, ancestors)
                    continue
                key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
                line = key_node.start_mark.line + 1
                if key is not None:
                    ident = (key_node.tag, key)
                    if ident in first_line:
                        raise ConfigError(_duplicate_message(path, key, first_line[ident], line))
                    first_line[ident] = line
                self._check_mappings(value_node, [*path, key], seen_nodes, ancestors)
        elif isinstance(node, yaml.SequenceNode):
            for i, item in enumerate(node.value):
                self._check_mappings(item, [*path, i], seen_nodes, ancestors)


StrictLoader.add_implicit_resolver("tag:yaml.org,2002:float", EXP_FLOAT, list("-+0123456789."))


def _duplicate_message(path: list, key: str, first: int, line: int) -> str:
    what = f"top level: {key!r}" if not path else path_words([*path, key])  # e.g. variant 'x', field 'bn'
    what += " is written twice"
    return (f"{what} (lines {first} and {line}); YAML would keep only the last one and silently drop the "
            f"first, so merge the two into one entry or rename one")


def read_config(path: str | Path) -> Any:
    """Parse a config file with `StrictLoader`; every problem is one `ConfigError` naming the file."""
    where = str(path)
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such config file") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{where}: cannot read the config file ({e})") from None
    try:
        return yaml.load(text, Loader=StrictLoader)  # a SafeLoader subclass: safe
    except ConfigError as e:
        raise ConfigError(f"{where}: {e}") from None
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML: {_yaml_error(e)}") from None


def _yaml_error(e: yaml.YAMLError) -> str:
    """A PyYAML error on one line: what is wrong and where."""
    if isinstance(e, yaml.MarkedYAMLError):
        mark = e.problem_mark or e.context_mark
        what = "; ".join(x for x in (e.context, e.problem) if x)
        if mark is not None:
            return f"{what} (line {mark.line + 1}, column {mark.column + 1})"
        return what
    return " ".join(str(e).split())


def with_typed_overrides(config: dict, overrides: dict | None) -> dict:
    """Snakemake's parsed config with the `--config KEY=VALUE` overrides given their YAML types.

    Snakemake reads a nested override as text (`--config "execution={runs_per_job: 1}"` gives '1', with
    YAML's BaseLoader), so every string inside an override is read again the way a config file's would
    be; strings the user quoted stay strings only where YAML agrees."""
    def typed(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: typed(v) for k, v in value.items()}
        if isinstance(value, list):
            return [typed(v) for v in value]
        if isinstance(value, str) and value.strip():
            try:
                return yaml.load(value, Loader=StrictLoader)
            except (yaml.YAMLError, ConfigError):
                return value
        return value

    def merge(base: Any, over: Any) -> Any:
        if isinstance(base, dict) and isinstance(over, dict):
            return {**base, **{k: merge(base.get(k), v) for k, v in over.items()}}
        return over

    return merge(config, typed(overrides or {}))
