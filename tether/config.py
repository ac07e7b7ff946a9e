"""Typed configs: one dataclass per command, filled from a YAML file and then ``key=value``
overrides, validated once, frozen afterwards.

Errors name where the bad value came from: ``ppo.yaml:12: field "learning_rate": expected a
float, got 'fast'`` or ``override 'ppo_epochs=x': expected an int``.

Every numeric field declares the values it accepts in its annotation, and ``load_config``
checks each value against it before anything else runs (``ppo.yaml:3: field "kl_coef": must
be >= 0, got -1``); NaN and inf are refused everywhere, and so is an int beyond an int64. A
new int or float field follows the same convention (tests/test_config_values.py fails on one
without a ``Range``):

    batch_size: PositiveInt = 16                               # an int >= 1
    learning_rate: NonNegative = 1e-5                          # a float >= 0
    kl_target: Positive | None = None                          # null allowed: say so in the type
    top_p: Annotated[float, Range(gt=0, le=1)] = 1.0           # any other bounds
    missing_eos_penalty: Finite | None = None                  # any finite number

Rules that relate two fields stay in the class's ``__post_init__``, which starts with
``check_ranges(self)`` so that a config built in code is held to the same bounds.
"""

from __future__ import annotations

import dataclasses
import difflib
import functools
import math
import types
import typing
from pathlib import Path
from typing import Annotated, Any, TypeVar

import yaml

from tether.errors import ConfigError

T = TypeVar("T")

__all__ = ["load_config", "config_to_dict", "parse_overrides", "check_ranges", "check_option", "Range", "INT64_MAX",
           "PositiveInt", "Count", "Positive", "NonNegative", "Fraction", "Finite", "Seed"]


@dataclasses.dataclass(frozen=True)
class Range:
    """Bounds of a numeric config field: ``ge``/``gt`` below, ``le``/``lt`` above (each optional).
    The value must be finite too; ``why`` (optional) is added to the message."""

    ge: float | None = None
    gt: float | None = None
    le: float | None = None
    lt: float | None = None
    why: str = ""

    def problem(self, value: float) -> str | None:
        """Why ``value`` is refused (``must be > 0, got -1``), or None when it is accepted. An int
        must also fit an int64 whatever its declared bounds: every int field is a count, size or
        seed that ends up in a tensor, a NumPy array or a checkpoint as one, so a larger value
        (``batch_size: 1000...0`` with 300 zeros) can only be a mistake."""
        if isinstance(value, float) and not math.isfinite(value):
            return f"must be a finite number, got {value}"
        shown = _int_text(value) if isinstance(value, int) else value
        low = (self.ge is None or value >= self.ge) and (self.gt is None or value > self.gt)
        high = (self.le is None or value <= self.le) and (self.lt is None or value < self.lt)
        if not (low and high):
            why = f" ({self.why})" if self.why else ""
            return f"must be {self.describe()}{why}, got {shown}"
        if isinstance(value, int) and not INT64_MIN <= value <= INT64_MAX:
            return f"must be in [-2**63, 2**63 - 1] (an int64), got {shown}"
        return None

    def describe(self) -> str:
        """``>= 1``, ``> 0``, ``in (0, 1]``, or ``finite`` without bounds."""
        low = f"[{_number(self.ge)}" if self.ge is not None else f"({_number(self.gt)}" if self.gt is not None else ""
        high = f"{_number(self.le)}]" if self.le is not None else f"{_number(self.lt)})" if self.lt is not None else ""
        if low and high:
            return f"in {low}, {high}"
        if low:
            return (">= " if self.ge is not None else "> ") + low[1:]
        if high:
            return ("<= " if self.le is not None else "< ") + high[:-1]
        return "finite"


def _number(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


def _int_text(value: int) -> str:
    """An int as typed, or its length when it is too long to read on one line."""
    digits = len(str(abs(value)))
    return str(value) if digits <= 24 else f"{'a negative' if value < 0 else 'an'} int of {digits} digits"


INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1  # the bounds of every int field (Range.problem)


# the ranges most fields need
PositiveInt = Annotated[int, Range(ge=1)]  # counts of things that must exist: steps, batch sizes
Count = Annotated[int, Range(ge=0)]  # counts where 0 means none / off
Positive = Annotated[float, Range(gt=0)]
NonNegative = Annotated[float, Range(ge=0)]
Fraction = Annotated[float, Range(ge=0, le=1)]
Finite = Annotated[float, Range()]  # any finite number
Seed = Annotated[int, Range(ge=0, lt=2**32)]  # NumPy's legacy seeding takes 32 bits


def load_config(cls: type[T], path: str | Path | None = None, overrides: list[str] | None = None) -> T:
    """Build ``cls`` from a YAML mapping at ``path`` (optional) and ``key=value`` overrides.

    Each value is checked against the field's type annotation and declared ``Range``; unknown
    keys are errors with a suggestion. ``cls.__post_init__`` runs the cross-field checks.
    """
    values: dict[str, Any] = {}
    origins: dict[str, str] = {}
    if path is not None:
        for key, (value, line) in _read_yaml_mapping(Path(path)).items():
            values[key] = value
            origins[key] = f"{path}:{line}"
    for key, raw in parse_overrides(overrides or []):
        values[key] = _override_value(key, raw)
        origins[key] = f"override '{key}={raw}'"

    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    hints = _hints(cls)
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
        problem = _out_of_range(kwargs[key], hints[key])
        if problem:
            raise ConfigError(f'{origins[key]}: field "{key}": {problem}')
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (TypeError, ValueError) as exc:
        where = f"{path}" if path else "config"
        raise ConfigError(f"{where}: {exc}") from None


def check_ranges(config: Any) -> None:
    """Every numeric field of ``config`` against its declared ``Range``: the check ``load_config``
    makes per value, for configs built in code (``__post_init__`` calls it)."""
    hints = _hints(type(config))
    for f in dataclasses.fields(config):
        problem = _out_of_range(getattr(config, f.name), hints[f.name])
        if problem:
            raise ConfigError(f'field "{f.name}": {problem}')


def check_option(flag: str, value: float | None, bounds: Range) -> None:
    """A command-line option against its bounds, for the commands that take plain options:
    ``--port must be in [1, 65535], got 99999``. None (an option left unset) passes."""
    problem = None if value is None else bounds.problem(value)
    if problem:
        raise ConfigError(f"{flag} {problem}")


def _read_yaml_mapping(path: Path) -> dict[str, tuple[Any, int | str]]:
    """The top-level ``key: value`` pairs of a YAML file, each with its line. A key written twice
    (in any mapping of the file) is an error: YAML loaders keep the last one silently."""
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not UTF-8 text (byte {exc.object[exc.start]:#04x} at offset {exc.start}); "
                          "save the file as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read: {exc.strerror or exc}") from None
    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(exc, 'problem', None) or exc}") from None
    except (RecursionError, ValueError) as exc:  # nested too deeply; an int past Python's 4300 digits
        raise ConfigError(f"{path}: invalid YAML: {exc if isinstance(exc, ValueError) else 'nested too deeply'}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of config keys at the top level")
    _refuse_duplicate_keys(node, path)
    lines = {key_node.value: key_node.start_mark.line + 1 for key_node, _ in node.value
             if isinstance(key_node, yaml.ScalarNode)}
    return {str(key): (value, lines.get(key, lines.get(str(key), "?"))) for key, value in data.items()}


def _refuse_duplicate_keys(node: yaml.Node, path: Path) -> None:
    pending, seen = [node], set()
    while pending:
        node = pending.pop()
        if id(node) in seen:  # an alias: the anchored node is checked once (and a "billion laughs" file is no hang)
            continue
        seen.add(id(node))
        if isinstance(node, yaml.MappingNode):
            first_line: dict[str, int] = {}
            for key_node, value_node in node.value:
                pending.append(value_node)
                if not isinstance(key_node, yaml.ScalarNode) or key_node.value == "<<":  # "<<": a merge key
                    continue
                line = key_node.start_mark.line + 1
                if key_node.value in first_line:
                    raise ConfigError(f'{path}:{line}: key "{key_node.value}" is also set at line '
                                      f"{first_line[key_node.value]}; keep one of them")
                first_line[key_node.value] = line
        elif isinstance(node, yaml.SequenceNode):
            pending.extend(node.value)


def _override_value(key: str, raw: str) -> Any:
    if raw == "":
        return ""
    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError as exc:
        raise ConfigError(f"override '{key}={raw}': invalid YAML value: {getattr(exc, 'problem', None) or exc}") from None


@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls, include_extras=True)


def _out_of_range(value: Any, annotation: Any) -> str | None:
    """Why a (type-checked) value falls outside the ``Range`` its annotation declares, or None.
    Looks through ``X | None`` and ``list[X]``."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if value is None:
        return None
    if origin is Annotated:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            for bounds in args[1:]:
                if isinstance(bounds, Range) and (problem := bounds.problem(value)):
                    return problem
        return _out_of_range(value, args[0])
    if origin in (typing.Union, types.UnionType):
        return next((p for arg in args if (p := _out_of_range(value, arg))), None)
    if origin in (list, tuple) and args and isinstance(value, (list, tuple)):
        return next((f"item {i}: {p}" for i, v in enumerate(value) if (p := _out_of_range(v, args[0]))), None)
    return None


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
    if origin is Annotated:  # the Range is checked after coercion (_out_of_range)
        return _coerce(value, args[0])
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
            try:
                return float(value)
            except OverflowError:  # an int of hundreds of digits
                raise ValueError(f"must be a finite number, got an int of {len(str(value))} digits") from None
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
