"""Typed configs: one dataclass per command, filled from a YAML file and then ``key=value``
overrides, validated once, frozen afterwards.

Errors name where the bad value came from: ``ppo.yaml:12: field "learning_rate": expected a
float, got 'fast'`` or ``override 'ppo_epochs=x': expected an int``.
"""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from pathlib import Path
from typing import Any, TypeVar

import yaml

from tether.errors import ConfigError

T = TypeVar("T")

__all__ = ["load_config", "config_to_dict", "parse_overrides"]


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Build ``cls`` from a YAML mapping at ``path`` (optional) and ``key=value`` overrides.

    Each value is checked against the field's type annotation; unknown keys are errors with
    a suggestion. ``cls.__post_init__`` runs the command's own validation.
    """
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(f"config file not found: {path}")
        try:
            text = path.read_text()
            node = yaml.compose(text)
            data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f"{path}:{mark.line + 1}" if mark else str(path)
            raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', exc)}") from None
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
        lines = {}
        if node is not None and isinstance(node, yaml.MappingNode):
            for key_node, _ in node.value:
                lines[key_node.value] = key_node.start_mark.line + 1
        for key, value in data.items():
            values[str(key)] = value
            origins[str(key)] = f"{path}:{lines.get(key, '?')}"
    for key, raw in parse_overrides(overrides or []):
        values[key] = yaml.safe_load(raw) if raw != "" else ""
        origins[key] = f"override '{key}={raw}'"

    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            close = difflib.get_close_matches(key, fields, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else ""
            raise ConfigError(f'{origins[key]}: unknown config key "{key}"{hint}')
        try:
            kwargs[key] = _coerce(value, hints[key])
        except (TypeError, ValueError) as exc:
            raise ConfigError(f'{origins[key]}: field "{key}": {exc}') from None
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        where = f"{path}" if path else "config"
        raise ConfigError(f"{where}: {exc}") from None


def parse_overrides(items: list[str]) -> list[tuple[str, str]]:
    out = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override '{item}' must look like key=value")
        key, raw = item.split("=", 1)
        out.append((key.strip(), raw.strip()))
    return out


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def _coerce(value: Any, annotation: Any) -> Any:
    """Check ``value`` against a type annotation (int, float, str, bool, Literal, Optional,
    list[...] and dict), converting only where no information is lost (int -> float)."""
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if annotation is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg)
            except (TypeError, ValueError) as exc:
                errors.append(str(exc))
        raise ValueError(errors[0] if len(errors) == 1 else "; ".join(errors))
    if origin is typing.Literal:
        if value not in args:
            raise ValueError(f"expected one of {', '.join(repr(a) for a in args)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"expected a list, got {value!r}")
        inner = args[0] if args else Any
        return [_coerce(v, inner) for v in value]
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise ValueError(f"expected a mapping, got {value!r}")
        return dict(value)
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise ValueError(f"expected true or false, got {value!r}")
    if annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ValueError(f"expected an int, got {value!r}")
    if annotation is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            # YAML 1.1 reads "1e-3" (no dot) as a string; accept any exact float spelling
            try:
                return float(value)
            except ValueError:
                pass
        raise ValueError(f"expected a float, got {value!r}")
    if annotation is str:
        if isinstance(value, str):
            return value
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        raise ValueError(f"expected a string, got {value!r}")
    return value
