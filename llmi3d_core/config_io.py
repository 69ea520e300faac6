"""Plain data (parsed YAML/JSON, ``key=value`` overrides) <-> checked dataclass configs.

The one home of config loading for the model, training and synthetic-data configs: every
dataclass is built by `dataclass_from_dict`, which rejects an unknown key with its dotted path
and the nearest valid name (``Unknown config key: model.heads.pointr; did you mean 'pointer'?``)
and type-checks every value, so a typo fails when the file is read, before any work is done.
Defaults live only in the dataclasses themselves.
"""

from __future__ import annotations

import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Iterable
from typing import Any, TypeVar

import yaml

from llmi3d_core.errors import ConfigError

__all__ = [
    "apply_overrides",
    "dataclass_from_dict",
    "merge",
    "parse_override",
    "unknown_key",
]

T = TypeVar("T")

# YAML 1.1 (PyYAML) reads "1e-3" as a string; a number is meant.
_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")


def unknown_key(where: str, key: object, allowed: Iterable[str]) -> ConfigError:
    """The error for `key` not being one of `allowed` at dotted path `where`.

    It names the full path, the nearest valid name when one is close, and every valid name.
    """
    allowed = sorted(allowed)
    dotted = f"{where}.{key}" if where else str(key)
    near = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
    hint = f"; did you mean {near[0]!r}?" if near else ""
    return ConfigError(f"Unknown config key: {dotted}{hint} (allowed here: {', '.join(allowed)})")


def _type_name(hint: Any) -> str:
    return getattr(hint, "__name__", str(hint))


def _coerce(value: Any, hint: Any, where: str) -> Any:
    """Check `value` against type hint `hint`; lists become tuples, ints and "1e-3" floats."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(hint)
        if value is None:
            if type(None) in args:
                return None
            raise ConfigError(f"{where}: must not be null")
        options = [a for a in args if a is not type(None)]
        return _coerce(value, options[0], where)
    if origin is tuple:
        if not isinstance(value, list | tuple):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        args = typing.get_args(hint)
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
        if len(value) != len(args):
            raise ConfigError(f"{where}: expected {len(args)} values, got {value!r}")
        return tuple(
            _coerce(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True))
        )
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(hint):
        return dataclass_from_dict(typing.cast("type[Any]", hint), value, where)
    if hint is Any or not isinstance(hint, type):
        return value  # Literal and the like: the dataclass's own checks decide
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if hint is float and isinstance(value, str) and _FLOAT.match(value.strip()):
        return float(value)
    if hint is str and isinstance(value, bool):  # a bare no/yes/off/on, read by YAML 1.1
        raise ConfigError(
            f"{where}: expected a string, got {value!r}: YAML reads an unquoted no, yes, off or"
            f" on as a boolean; quote it ('{'yes' if value else 'no'}')"
        )
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{where}: expected {_type_name(hint)}, got {value!r}")
    return value


def dataclass_from_dict(cls: type[T], data: Any, where: str = "") -> T:
    """Build dataclass `cls` from a mapping; missing keys keep their defaults.

    Args:
        cls: the dataclass.
        data: a mapping of its field names (nested dataclasses as nested mappings), or already
            an instance of `cls` (returned as is).
        where: dotted path of `data` in the whole config, for error messages.

    Raises:
        ConfigError: for an unknown key (with the nearest valid name), a value of the wrong
            type, or a value the dataclass's own checks refuse; the message starts with the path.
    """
    if isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'config'}: expected a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(typing.cast("Any", cls)) if f.init]
    for key in data:
        if key not in names:
            raise unknown_key(where, key, names)
    kwargs = {
        key: _coerce(value, hints[key], f"{where}.{key}" if where else str(key))
        for key, value in data.items()
    }
    try:
        return cls(**kwargs)
    except ConfigError as err:
        if where and not str(err).startswith(where):
            raise ConfigError(f"{where}: {err}") from None
        raise


def merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge `override` into a copy of `base` (override wins; mappings merge)."""
    out = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def parse_override(text: str) -> tuple[str, Any]:
    """Split one ``key=value`` override; the value is read as YAML ("1e-3" as a float too).

    Raises:
        ConfigError: when there is no '=' or the key is empty.
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"override {text!r} must look like key=value, e.g. optim.lr=1e-3")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError as err:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({err})") from None
    if isinstance(value, str) and _FLOAT.match(value.strip()):
        value = float(value)
    return key, value


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Return a copy of plain config `data` with ``key=value`` overrides applied.

    Intermediate mappings are created as needed (``data.synth.seed=3`` with no synth section);
    unknown keys are caught when the result is turned into its dataclass.

    Raises:
        ConfigError: for a malformed override or a path through a non-mapping value.
    """
    out = merge({}, data)
    for text in overrides:
        dotted, value = parse_override(text)
        *parents, leaf = dotted.split(".")
        node = out
        for depth, part in enumerate(parents):
            child = node.get(part)
            if child is None:
                child = {}
            elif not isinstance(child, dict):
                path = ".".join(parents[: depth + 1])
                raise ConfigError(
                    f"override {text!r}: {path} is {child!r}, not a section with keys"
                )
            else:
                child = dict(child)
            node[part] = child
            node = child
        node[leaf] = value
    return out
