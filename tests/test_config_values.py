"""Every configured value is checked before anything runs: each numeric field of every config
declares its range (tether/config.py), and a value out of it, NaN, inf or of the wrong type is
one line naming the file, the line and the field, exit code 2, with nothing trained or written.

The bad values are derived from each field's annotation, so a new field is covered without
touching this file; a new int or float field without a declared range fails the first test."""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import io
import json
import math
import pkgutil
import shutil
import tempfile
import types
import typing
from pathlib import Path
from typing import Annotated
from unittest import mock

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import tether
from tether.cli import main
from tether.config import INT64_MAX, Range, check_ranges, load_config
from tether.demo.config import DemoConfig
from tether.errors import ConfigError
from tether.train.ppo_config import PPOConfig

ROOT = Path(__file__).resolve().parents[1]
FAST = settings(max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


# ----- which classes are configs, and which of their fields are numeric ------------------------

def config_classes() -> list[type]:
    """Every dataclass named ``*Config`` in the tether package (modules whose optional
    dependencies are missing are skipped)."""
    found = {}
    for module_info in pkgutil.walk_packages(tether.__path__, "tether."):
        if module_info.name.endswith(".__main__"):  # runs a command on import
            continue
        try:
            module = importlib.import_module(module_info.name)
        except ImportError:
            continue
        for obj in vars(module).values():
            if (isinstance(obj, type) and dataclasses.is_dataclass(obj) and obj.__name__.endswith("Config")
                    and obj.__module__.startswith("tether.")):
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [found[name] for name in sorted(found)]


CONFIGS = config_classes()
REQUIRED = {"PPOConfig": {"reward_function": "tether.rollout.rules:vowel_fraction"},
            "SFTConfig": {"data": "data.jsonl"}, "RewardModelConfig": {"data": "data.jsonl"},
            "DPOConfig": {"data": "data.jsonl"}}


def arms(annotation) -> list:
    """The alternatives of ``X | Y | None`` (None left out); one item for a plain annotation."""
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(annotation) if a is not type(None)]
    return [annotation]


def declared_range(arm) -> Range | None:
    if typing.get_origin(arm) is Annotated:
        return next((m for m in typing.get_args(arm)[1:] if isinstance(m, Range)), None)
    return None


def base_type(arm):
    return typing.get_args(arm)[0] if typing.get_origin(arm) is Annotated else arm


def is_numeric(arm) -> bool:
    return base_type(arm) in (int, float)


def undeclared_numeric_fields(cls) -> list[str]:
    """Fields of ``cls`` with an int or float (also inside ``X | None`` or ``list[X]``) that
    carries no ``Range``."""
    hints = typing.get_type_hints(cls, include_extras=True)
    missing = []
    for f in dataclasses.fields(cls):
        for arm in arms(hints[f.name]):
            inner = typing.get_args(arm)[0] if typing.get_origin(arm) in (list, tuple) else arm
            if is_numeric(inner) and declared_range(inner) is None:
                missing.append(f.name)
    return missing


def test_the_walk_finds_every_command_config():
    names = {cls.__name__ for cls in CONFIGS}
    assert {"PPOConfig", "SFTConfig", "RewardModelConfig", "DPOConfig", "DemoConfig"} <= names


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_numeric_field_declares_its_range(cls):
    assert undeclared_numeric_fields(cls) == [], f"declare a Range on these {cls.__name__} fields (tether/config.py)"
    defaults = cls(**REQUIRED.get(cls.__name__, {}))
    check_ranges(defaults)  # the defaults lie in the declared ranges


def test_a_new_numeric_field_without_a_range_is_caught():
    @dataclasses.dataclass(frozen=True)
    class NewConfig:
        declared: Annotated[float, Range(gt=0)] = 1.0
        forgotten: float = 0.5
        forgotten_optional: int | None = None
        forgotten_list: list[float] | None = None
        text: str = "x"
        flag: bool = True

    assert undeclared_numeric_fields(NewConfig) == ["forgotten", "forgotten_optional", "forgotten_list"]


# ----- bad values, derived from a field's annotation -------------------------------------------

def accepts(arm, value) -> bool:
    """Whether one annotation arm takes ``value`` as the loader documents it (tether/config.py):
    str takes numbers too, float takes ints and float spellings, list[str] any list."""
    kind = base_type(arm)
    origin = typing.get_origin(kind)
    if origin is typing.Literal:
        return any(value == choice and type(value) is type(choice) for choice in typing.get_args(kind))
    if origin in (list, tuple):
        return isinstance(value, list)
    if kind is dict or origin is dict:
        return isinstance(value, dict)
    if kind is bool:
        return isinstance(value, bool)
    if kind is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if kind is float:
        return (isinstance(value, (int, float)) and not isinstance(value, bool)) or (isinstance(value, str) and _float_spelling(value))
    if kind is str:
        return isinstance(value, (str, int, float)) and not isinstance(value, bool)
    return True


def _float_spelling(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def refused(annotation, value) -> bool:
    """No arm takes the value, or a numeric arm takes it but its range refuses it."""
    if value is None:
        return type(None) not in typing.get_args(annotation)
    for arm in arms(annotation):
        if accepts(arm, value):
            bounds = declared_range(arm)
            if bounds is None or not is_numeric(arm):
                return False
            number = float(value) if base_type(arm) is float else value
            return bounds.problem(number) is not None
    return True


WRONG_TYPES = ["fast", 1.5, 3, True, [1, 2], {"a": 1}]


def out_of_range(bounds: Range, integer: bool) -> list:
    step = 1 if integer else 0.5
    values = []
    for low in (bounds.ge, bounds.gt):
        if low is not None:
            values += [low - step] + ([] if integer or low != bounds.gt else [low])
    for high in (bounds.le, bounds.lt):
        if high is not None:
            values += [high + step] + ([] if integer or high != bounds.lt else [high])
    if integer and bounds.gt is not None:
        values.append(int(bounds.gt))
    if integer and bounds.lt is not None:
        values.append(int(bounds.lt))
    if integer:  # past an int64, whatever the declared bounds
        values += [INT64_MAX + 1, 10**300]
    return [int(v) if integer else float(v) for v in values]


def bad_values(annotation) -> list:
    values = [v for v in WRONG_TYPES if refused(annotation, v)]
    for arm in arms(annotation):
        bounds = declared_range(arm)
        if bounds is not None:
            values += out_of_range(bounds, base_type(arm) is int) + [math.nan, math.inf, -math.inf]
    return values


CASES = [(cls, f.name) for cls in CONFIGS for f in dataclasses.fields(cls) if f.init]


def hint(cls, name):
    return typing.get_type_hints(cls, include_extras=True)[name]


def write_config(folder: Path, cls, name: str, value) -> tuple[Path, int]:
    """A YAML file with the class's required fields, then ``name: value`` on the last line."""
    base = {k: v for k, v in REQUIRED.get(cls.__name__, {}).items() if k != name}
    lines = [yaml.safe_dump({k: v}, width=10**9).strip() for k, v in base.items()]
    lines.append(yaml.safe_dump({name: value}, width=10**9, default_flow_style=True).strip().removeprefix("{").removesuffix("}"))
    path = folder / "config.yaml"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path, len(lines)


def assert_refused_at(cls, name, value, folder: Path) -> str:
    path, line = write_config(folder, cls, name, value)
    with pytest.raises(ConfigError) as caught:
        load_config(cls, path)
    message = str(caught.value)
    assert message.startswith(f'{path}:{line}: field "{name}": '), message
    assert len(message.splitlines()) == 1, message
    return message


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_every_field_refuses_each_kind_of_bad_value(cls, tmp_path):
    """Each field of the class, each value kind its annotation refuses: out of range (just past
    each bound), NaN, ±inf, and every wrong type. All fields together, so no field is skipped."""
    for _, name in [c for c in CASES if c[0] is cls]:
        values = bad_values(hint(cls, name))
        assert values, f"no bad value derived for {name}"
        for value in values:
            message = assert_refused_at(cls, name, value, tmp_path)
            if isinstance(value, float) and not math.isfinite(value) and float in map(base_type, arms(hint(cls, name))):
                assert "must be a finite number" in message


def random_bad_value(annotation):
    """A strategy of values the field's annotation refuses: any type it does not take, numbers
    past its declared bounds, NaN and ±inf."""
    scalars = st.one_of(st.text(max_size=12), st.booleans(), st.integers(), st.floats(), st.none())
    anything = st.recursive(scalars, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
                            max_leaves=6)
    numbers = st.one_of(st.integers(), st.floats(), st.integers(min_value=-(10**40), max_value=10**40))
    return st.one_of(anything, numbers).filter(lambda v: refused(annotation, v))


@FAST
@given(case=st.sampled_from(CASES), data=st.data())
def test_random_bad_values_are_one_line_naming_file_line_and_field(case, data):
    cls, name = case
    annotation = hint(cls, name)
    if not bad_values(annotation):
        return  # a field of Any: nothing is refused
    value = data.draw(random_bad_value(annotation), label=name)
    with tempfile.TemporaryDirectory() as folder:
        assert_refused_at(cls, name, value, Path(folder))


NUMERIC_CASES = [(cls, name) for cls, name in CASES if any(declared_range(a) for a in arms(hint(cls, name)))]


@FAST
@given(case=st.sampled_from(NUMERIC_CASES), data=st.data())
def test_out_of_range_overrides_and_configs_built_in_code_are_refused(case, data):
    cls, name = case
    annotation = hint(cls, name)
    integer = any(base_type(a) is int and declared_range(a) for a in arms(annotation))
    value = data.draw((st.integers() if integer else st.floats()).filter(lambda v: refused(annotation, v)))
    with pytest.raises(ConfigError) as caught:
        load_config(cls, None, [*(f"{k}={v}" for k, v in REQUIRED.get(cls.__name__, {}).items()), f"{name}={value}"])
    assert str(caught.value).startswith(f"override '{name}={value}': field \"{name}\": ")
    with pytest.raises(ConfigError, match=f'^field "{name}": must be'):  # built in code: the same bounds
        cls(**{**REQUIRED.get(cls.__name__, {}), name: value})


# ----- through the command line: exit 2, one line, nothing trained or written -------------------

COMMANDS = {"ppo": "PPOConfig", "train-rm": "RewardModelConfig", "sft": "SFTConfig", "dpo": "DPOConfig",
            "demo": "DemoConfig"}
ENTRY_POINTS = ["tether.train.ppo.train_ppo", "tether.train.sft.train_sft", "tether.train.reward_model.train_reward_model",
                "tether.train.dpo.train_dpo", "tether.demo.pipeline.run_demo"]


@contextlib.contextmanager
def nothing_may_run():
    """Every training entry point, and the run directory's creation, replaced by a tripwire."""
    from tether.train.run_dir import RunDirectory

    def tripwire(*args, **kwargs):
        raise AssertionError("a bad config reached training")

    with contextlib.ExitStack() as stack:
        for target in ENTRY_POINTS:
            stack.enter_context(mock.patch(target, tripwire))
        stack.enter_context(mock.patch.object(RunDirectory, "create", tripwire))
        yield


def run_cli(*argv: str) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = main(list(argv))
    return code, err.getvalue().strip()


CLI_CASES = [(command, name) for command, cls_name in COMMANDS.items() for cls, name in CASES
             if cls.__name__ == cls_name and name not in ("output_dir", "algorithm")]


@settings(max_examples=60, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(case=st.sampled_from(CLI_CASES), data=st.data())
def test_commands_exit_2_with_one_line_and_write_nothing(case, data):
    command, name = case
    cls = next(c for c in CONFIGS if c.__name__ == COMMANDS[command])
    annotation = hint(cls, name)
    if not bad_values(annotation):
        return
    value = data.draw(st.sampled_from(bad_values(annotation)) | random_bad_value(annotation), label=name)
    with tempfile.TemporaryDirectory() as folder, nothing_may_run():
        folder = Path(folder)
        path, line = write_config(folder, cls, name, value)
        code, err = run_cli(command, "--config", str(path), f"output_dir={folder / 'runs'}")
        assert code == 2, err
        assert err.startswith(f'error: {path}:{line}: field "{name}": ') and len(err.splitlines()) == 1, err
        assert not (folder / "runs").exists()


@pytest.mark.parametrize("override, message", [
    ("max_grad_norm=-1", 'field "max_grad_norm": must be > 0, got -1.0'),  # updates would go the wrong way
    ("max_grad_norm=0", 'field "max_grad_norm": must be > 0, got 0.0'),
    ("max_prompt_tokens=0", 'field "max_prompt_tokens": must be >= 1, got 0'),
    ("max_prompt_tokens=-5", 'field "max_prompt_tokens": must be >= 1, got -5'),
    ("kl_coef=inf", 'field "kl_coef": must be a finite number, got inf'),  # every update skipped
    ("learning_rate=nan", 'field "learning_rate": must be a finite number, got nan'),
    ("temperature=nan", 'field "temperature": must be a finite number, got nan'),
    ("top_k=-1", 'field "top_k": must be >= 0, got -1'),
    ("weight_decay=-0.1", 'field "weight_decay": must be >= 0, got -0.1'),
    ("kl_horizon=0", 'field "kl_horizon": must be >= 1, got 0'),
    ("batch_size=1e3", "field \"batch_size\": expected an int, got '1e3'"),
    ("seed=-1", 'field "seed": must be in [0, 4294967296), got -1'),
    (f"batch_size={10**300}",
     'field "batch_size": must be in [-2**63, 2**63 - 1] (an int64), got an int of 301 digits'),
    (f"total_iterations={2**63}", 'field "total_iterations": must be in [-2**63, 2**63 - 1] (an int64), '
                                  f"got {2**63}"),
    (f"max_new_tokens=-{10**30}", 'field "max_new_tokens": must be >= 1, got a negative int of 31 digits'),
])
def test_values_the_online_trainers_used_to_accept(override, message, tmp_path):
    with nothing_may_run():
        code, err = run_cli("ppo", "--config", str(ROOT / "configs" / "ppo-tiny.yaml"), f"output_dir={tmp_path}", override)
    assert code == 2 and err == f"error: override '{override}': {message}"
    assert list(tmp_path.iterdir()) == []


# ----- the YAML file itself ---------------------------------------------------------------------

def test_a_key_written_twice_names_both_lines(tmp_path):
    path = tmp_path / "ppo.yaml"
    path.write_text("reward_function: tether.rollout.rules:vowel_fraction\nkl_coef: 0.1\nseed: 1\nkl_coef: 0.5\n")
    with pytest.raises(ConfigError) as caught:
        load_config(PPOConfig, path)
    assert str(caught.value) == f'{path}:4: key "kl_coef" is also set at line 2; keep one of them'


def test_a_key_written_twice_inside_a_nested_mapping_is_caught_too(tmp_path):
    path = tmp_path / "demo.yaml"
    path.write_text("labeler:\n  a: 1\n  a: 2\n")
    with pytest.raises(ConfigError, match=r"demo.yaml:3: key \"a\" is also set at line 2"):
        load_config(DemoConfig, path)


def test_a_yaml_file_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "ppo.yaml"
    path.write_bytes("kl_coef: 0.1  # café\n".encode("latin-1"))  # é is one byte, 0xe9, in Latin-1
    with pytest.raises(ConfigError) as caught:
        load_config(PPOConfig, path)
    assert str(caught.value) == f"{path}: not UTF-8 text (byte 0xe9 at offset 19); save the file as UTF-8"


def test_an_override_that_is_not_yaml_is_one_line():
    with pytest.raises(ConfigError, match=r"^override 'lora_target_modules=\[q_proj': invalid YAML value"):
        load_config(PPOConfig, None, ["lora_target_modules=[q_proj"])


def test_an_int_too_large_for_a_float_is_one_line(tmp_path):
    path = tmp_path / "ppo.yaml"
    path.write_text("reward_function: a:b\nkl_coef: " + "9" * 400 + "\n")
    with pytest.raises(ConfigError, match=r'ppo.yaml:2: field "kl_coef": must be a finite number, got an int of 400 digits'):
        load_config(PPOConfig, path)


@pytest.mark.timeout(60)
def test_nested_aliases_are_not_expanded_when_looking_for_duplicate_keys(tmp_path):
    """A "billion laughs" file: nine levels of ten aliases, 10^9 leaves if walked naively."""
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 10)}]" for i in range(1, 10)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(ConfigError, match='bomb.yaml:1: unknown config key "l0"'):
        load_config(DemoConfig, path)


# ----- model folders and plain command-line options ---------------------------------------------

@pytest.fixture
def broken_models(tmp_path):
    from tether.models.registry import resolve_model

    invalid = tmp_path / "invalid-config"
    invalid.mkdir()
    (invalid / "config.json").write_text("{not json")
    no_weights = tmp_path / "no-weights"
    shutil.copytree(resolve_model("tiny-llama"), no_weights, ignore=shutil.ignore_patterns("*.safetensors"))
    return {"invalid": (invalid, "config.json is not valid JSON"),
            "no-weights": (no_weights, "has a config.json but no weights")}


@pytest.mark.parametrize("kind", ["invalid", "no-weights"])
@pytest.mark.parametrize("command, field", [("train-rm", "model"), ("sft", "model"), ("dpo", "model"), ("ppo", "policy")])
def test_a_broken_model_folder_is_one_line_naming_it(broken_models, kind, command, field, tmp_path):
    folder, problem = broken_models[kind]
    data = tmp_path / "data.jsonl"
    data.write_text(json.dumps({"prompt": "p", "chosen": "a", "rejected": "b", "completion": "c"}) + "\n")
    config = ["--config", str(ROOT / "configs" / "ppo-tiny.yaml")] if command == "ppo" else [f"data={data}"]
    with mock.patch("tether.train.ppo.build_roles", side_effect=AssertionError("models loaded")):
        code, err = run_cli(command, *config, f"{field}={folder}", f"output_dir={tmp_path / 'runs'}", "quiet=true")
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f'error: field "{field}": ') and str(folder) in err and problem in err
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("argv, message", [
    (["label", "serve", "--port", "99999"], "--port must be in [1, 65535], got 99999"),
    (["label", "serve", "--port", "0"], "--port must be in [1, 65535], got 0"),
    (["label", "make-tasks", "--policy", "tiny-llama", "--prompts", "p.txt", "--out", "t.jsonl", "--temperature", "nan"],
     "--temperature must be a finite number, got nan"),
    (["label", "make-tasks", "--policy", "tiny-llama", "--prompts", "p.txt", "--out", "t.jsonl", "--max-new-tokens", "0"],
     "--max-new-tokens must be >= 1, got 0"),
    (["label", "simulate", "--labeler", "tether.labeling.simulated:prefer_shorter", "--limit", "-1"],
     "--limit must be >= 0, got -1"),
    (["eval-rm", "--model", "m", "--data", "d.jsonl", "--bins", "0"], "--bins must be >= 1, got 0"),
])
def test_plain_options_out_of_range_are_one_line(argv, message, tmp_path):
    db = tmp_path / "labels.sqlite"
    if argv[0] == "label" and argv[1] in ("serve", "simulate"):
        argv = [*argv, "--db", str(db)]
    code, err = run_cli(*argv)
    assert code == 2 and err == f"error: {message}"
    assert not db.exists()  # refused before the store is created
