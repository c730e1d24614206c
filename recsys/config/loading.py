"""Reading a config: YAML file + `a.b=value` overrides -> a frozen `Config`, strictly.

An unknown key, a value of the wrong type or out of its range is a `ConfigError` naming the
dotted key; a YAML syntax error names the file (or the override), line and column.
"""

from __future__ import annotations

import copy
import dataclasses
import types
import typing
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from annotated_types import Interval, MinLen

from recsys.config.sections import Config, ConfigError, _Invalid


def load_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Read a YAML experiment file, apply `a.b=value` overrides, and build a frozen Config."""
    raw = read_yaml(path, "config file") or {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    for item in overrides:
        apply_override(raw, item)
    return config_from_dict(raw)


def read_yaml(path: str | Path, what: str) -> Any:
    """The YAML document in `path`; a missing file or bad syntax is one ConfigError line."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{what} not found: {path}")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as err:
        raise ConfigError(f"{path}: not UTF-8 text ({err.reason} at byte {err.start})") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: invalid YAML: {_yaml_problem(err)}") from None


def _yaml_problem(err: yaml.YAMLError) -> str:
    """One line: the parser's problem and where (1-based line and column)."""
    mark = getattr(err, "problem_mark", None)
    problem = getattr(err, "problem", None) or str(err).splitlines()[0]
    where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
    return f"{problem}{where}"


def config_from_dict(raw: dict[str, Any]) -> Config:
    """Build a Config from plain data (as read from YAML); strict about keys and types."""
    return _build(Config, raw, "")


def config_to_dict(config: Any) -> dict[str, Any]:
    """Plain nested dict (tuples as lists) that YAML/JSON can store and `config_from_dict` reads."""
    plain = _plain(dataclasses.asdict(config))
    if isinstance(config, Config):  # only the run's own model section is written and logged
        plain["model"] = {key: value for key, value in plain["model"].items() if value is not None}
    return plain


def apply_override(raw: dict[str, Any], item: str) -> None:
    """Set `a.b.c=value` in nested dict `raw`; the value is parsed as YAML (3e-4, true, [1,2])."""
    key, sep, text = item.partition("=")
    if not sep or not key:
        raise ConfigError(f"override {item!r} must look like section.key=value")
    *parents, leaf = key.strip().split(".")
    node = raw
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"override {item!r}: {part!r} is not a section")
    try:
        node[leaf] = yaml.safe_load(text)
    except yaml.YAMLError as err:
        raise ConfigError(f"override {item!r}: invalid YAML value: {_yaml_problem(err)}") \
            from None


# Keys that moved, old -> new: a config written before the move gets told where to put them.
MOVED = {
    "model.two_tower.temperature": "train.loss.temperature",
    "model.two_tower.uniform_negatives": "train.loss.uniform_negatives",
    "model.two_tower.logq": "train.loss.logq",
    "model.two_tower.masking": "train.loss.masking",
    "model.two_tower.text_lr": "train.lr_groups",
    "model.reranker.list_size": "train.loss.list_size",
    "model.recformer.temperature": "train.loss.temperature",
}
TEXT_ENCODER = "model.item_tower.text_encoder"  # a fine-tuned text encoder: its lr_groups prefix


def stored_config(raw: dict[str, Any]) -> Config:
    """A run's own config as an earlier version may have written it: keys that moved since are
    read at their new place (a user's config file is told instead, by `config_from_dict`)."""
    raw = copy.deepcopy(raw)
    for old, new in MOVED.items():
        *parents, leaf = old.split(".")
        section = raw
        for part in parents:
            section = section.get(part) if isinstance(section, dict) else None
        if not isinstance(section, dict) or leaf not in section:
            continue
        value = section.pop(leaf)
        if leaf == "text_lr":  # a rate of its own only where the encoder was trained
            if not section.get("finetune_text"):
                continue
            value = {TEXT_ENCODER: value}
        *to_parents, to_leaf = new.split(".")
        node = raw
        for part in to_parents:
            node = node.setdefault(part, {})
        node.setdefault(to_leaf, value)
    return config_from_dict(raw)


def _build(cls: type, raw: Any, where: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {raw!r}")
    hints = typing.get_type_hints(cls, include_extras=True)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - names)
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        if key in MOVED:
            raise ConfigError(f"config key '{key}' moved to '{MOVED[key]}' (loss and optimizer "
                              "settings live in the train section)")
        raise ConfigError(f"unknown config key '{key}' (allowed here: {', '.join(sorted(names))})")
    values = {}
    for name, value in raw.items():
        values[name] = _coerce(hints[name], value, _dotted(where, name))
    try:
        return cls(**values)
    except _Invalid as err:
        raise ConfigError(f"config key '{_dotted(where, err.key)}': {err}") from None


def _dotted(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _coerce(hint: Any, value: Any, key: str) -> Any:
    origin = typing.get_origin(hint)
    if origin is Annotated:
        base, *constraints = typing.get_args(hint)
        value = _coerce(base, value, key)
        _check_range(value, constraints, key)
        return value
    if dataclasses.is_dataclass(hint):
        return _build(hint, value or {}, key)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _coerce(option, value, key)
            except ConfigError as err:
                errors.append(str(err))
        raise ConfigError(errors[0])
    if origin is Literal:
        if value not in typing.get_args(hint):
            allowed = ", ".join(map(repr, typing.get_args(hint)))
            raise ConfigError(f"config key '{key}': {value!r} is not one of {allowed}")
        return value
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"config key '{key}': expected a list, got {value!r}")
        item = typing.get_args(hint)[0]
        return tuple(_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"config key '{key}': expected a mapping, got {value!r}")
        keys, values = typing.get_args(hint) or (Any, Any)
        return {_coerce(keys, k, key): _coerce(values, v, f"{key}.{k}") for k, v in value.items()}
    if hint is Any:
        return value
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str):  # YAML 1.1 reads 3e-4 as a string
        try:
            return float(value)
        except ValueError:
            pass
    if not isinstance(value, hint) or (hint is not bool and isinstance(value, bool)):
        raise ConfigError(f"config key '{key}': expected {hint.__name__}, got {value!r}")
    return value


_COMPARE = {"gt": (lambda v, b: v > b, ">"), "ge": (lambda v, b: v >= b, ">="),
            "lt": (lambda v, b: v < b, "<"), "le": (lambda v, b: v <= b, "<=")}


def _check_range(value: Any, constraints: list, key: str) -> None:
    """Raise ConfigError naming `key` unless `value` meets every annotated-types constraint."""
    for constraint in constraints:
        parts = constraint if isinstance(constraint, Interval) else (constraint,)
        for part in parts:
            if isinstance(part, MinLen) and len(value) < part.min_length:
                raise ConfigError(f"config key '{key}': needs at least {part.min_length} "
                                  f"value(s), got {list(value)}")
            for name, (holds, sign) in _COMPARE.items():
                bound = getattr(part, name, None)
                if bound is not None and not holds(value, bound):
                    raise ConfigError(f"config key '{key}': {value!r} is out of range "
                                      f"(must be {sign} {bound})")


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value
