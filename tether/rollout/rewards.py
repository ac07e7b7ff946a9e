"""Where sequence scores come from: Python functions, trained reward models and reward servers,
alone or several combined with weights.

Each source turns a ``Rollout`` into scores (B,):

- a function, named ``module:function`` (or, from Python, any callable), called as
  ``fn(prompts: list[str], responses: list[str]) -> list[float]``; prompts are passed as text
  (the last user message for chats);
- a scalar-head reward model (a folder from ``tether train-rm``, an alias, or a Hub id);
- a reward server: ``http(s)://host:port/path``, a JSON POST (tether.rollout.remote_reward,
  wire format in docs/rewards.md).

Several sources are summed with weights (TRL's ``reward_funcs`` + ``reward_weights``):
``score = Σ_i w_i · score_i``; ``CombinedReward`` keeps each component of its latest call so
that the loop logs them as ``reward/<name>``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Callable, Protocol
from urllib.parse import urlparse

import torch

from tether.data.templates import prompt_text
from tether.errors import ConfigError, TetherError
from tether.models.forward import build_inputs
from tether.models.loading import same_vocabulary
from tether.rollout.reward_values import checked_scores
from tether.types import Rollout
from tether.utils.imports import load_function as load_user_function

# module:function (dotted module path, identifier): anything else that is not a URL is a model
FUNCTION_SPEC = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


class RewardSource(Protocol):
    def __call__(self, rollout: Rollout) -> torch.Tensor:  # (B,) float32
        ...


def load_function(spec: str, what: str = "reward function") -> Callable:
    """Import ``module:function`` (the current folder included); errors say which part failed."""
    return load_user_function(spec, what)


# ----------------------------------------------------------------------------------------------
# the sources


class FunctionReward:
    """Scores from ``fn(prompts, responses)``: a ``module:function`` name or a callable."""

    def __init__(self, fn: str | Callable, name: str | None = None):
        self.spec = fn if isinstance(fn, str) else _callable_name(fn)
        self.fn = load_function(fn) if isinstance(fn, str) else fn
        self.who = f"reward function {name if name and not isinstance(fn, str) else self.spec}"

    def __call__(self, rollout: Rollout) -> torch.Tensor:
        prompts = [prompt_text(p) for p in rollout.prompts]
        try:
            values = self.fn(prompts, list(rollout.responses))
        except SystemExit as exc:  # never let a reward end the run as if it had finished (exit 0, no policy)
            raise TetherError(f"{self.who} called sys.exit({exc.code!r}); a reward function must return "
                              "scores, not end the process") from None
        except Exception as exc:  # the user's code: report it on one line, not as a traceback
            raise TetherError(f"{self.who} raised {type(exc).__name__}: {exc}") from None
        scores = checked_scores(values, len(rollout), self.who)
        return torch.tensor(scores, dtype=torch.float32, device=rollout.response_ids.device)


class ModelReward:
    """Scores from a scalar-head reward model, read at each response's last real token.

    When the reward model shares the policy's vocabulary the policy's token ids are reused
    (no re-tokenisation); otherwise prompt and response text are re-encoded with the reward
    model's own tokenizer and chat template.
    """

    def __init__(self, model, tokenizer, policy_tokenizer, batch_size: int = 16, use_chat_template="auto"):
        self.model = model
        self.tokenizer = tokenizer
        self.batch_size = batch_size
        self.use_chat_template = use_chat_template
        self.same_vocab = same_vocabulary(tokenizer, policy_tokenizer)

    @torch.no_grad()
    def __call__(self, rollout: Rollout) -> torch.Tensor:
        if self.same_vocab:
            parts = (rollout.prompt_ids, rollout.prompt_mask, rollout.response_ids, rollout.response_mask)
        else:
            parts = self._retokenize(rollout)
        scores = []
        for start in range(0, len(rollout), self.batch_size):
            rows = slice(start, start + self.batch_size)
            inputs = build_inputs(*(p[rows] for p in parts))
            last = inputs.prompt_width + parts[3][rows].sum(1) - 1
            scores.append(self.model.sequence_scores(inputs, last))
        return torch.cat(scores).float()

    def _retokenize(self, rollout: Rollout):
        from tether.data.templates import encode_prompt, encode_response
        from tether.rollout.generation import left_pad, right_pad

        device = rollout.response_ids.device
        pad = self.tokenizer.pad_token_id
        prompt_tokens = [encode_prompt(self.tokenizer, p, self.use_chat_template) for p in rollout.prompts]
        response_tokens = [
            encode_response(self.tokenizer, text, add_eos=bool(ended))
            for text, ended in zip(rollout.responses, rollout.ended_with_eos.tolist())
        ]
        response_tokens = [t if t else [self.tokenizer.eos_token_id] for t in response_tokens]
        return (*left_pad(prompt_tokens, pad, device), *right_pad(response_tokens, pad, device))


class CombinedReward:
    """``Σ_i w_i · score_i`` over named sources. ``components`` holds each source's (B,) scores
    from the latest call (unweighted), for the loop's ``reward/<name>`` metrics."""

    def __init__(self, sources: list[tuple[str, RewardSource, float]]):
        self.sources = sources
        self.components: dict[str, torch.Tensor] = {}

    @property
    def models(self) -> list[torch.nn.Module]:
        """The reward models among the sources (offload_frozen moves them to the device to score)."""
        return [source.model for _, source, _ in self.sources if isinstance(source, ModelReward)]

    def __call__(self, rollout: Rollout) -> torch.Tensor:
        components = {name: source(rollout).float() for name, source, _ in self.sources}
        self.components = components
        total = sum(weight * components[name] for name, _, weight in self.sources)
        return total.float()


# ----------------------------------------------------------------------------------------------
# from the config (and the Python API) to the sources


@dataclass(frozen=True)
class RewardSpec:
    """One named, weighted reward source: ``module:function`` or a callable ("function"), a
    reward model's folder, alias or Hub id ("model"), or a reward server's URL ("http")."""

    name: str  # the metric is reward/<name>
    source: str | Callable
    kind: str  # "function", "model" or "http"
    weight: float = 1.0


def source_kind(source: str | Callable) -> str:
    """What an entry of ``rewards`` (or ``reward=``) names: ``http(s)://...`` a server,
    ``module:function`` (or a callable) a function, anything else a reward model."""
    if callable(source) or FUNCTION_SPEC.match(source):
        return "function"
    if source.startswith(("http://", "https://")):
        return "http"
    return "model"


@dataclass(frozen=True)
class RewardSettings:
    """The reward section of an online run's config (``PPOConfig.reward_settings``): the sources,
    their weights, and how they are called."""

    reward_model: str | None  # a scalar-head reward model
    reward_function: str | None  # module:function
    rewards: tuple[str, ...]  # more sources, each told apart by its form (source_kind)
    reward_weights: tuple[float, ...] | None  # one per source, in order; None: 1 each
    reward_timeout: float  # seconds a reward server may take to answer
    reward_retries: int  # further tries after a reward server fails
    forward_batch_size: int  # responses per reward-model forward
    chat_template: bool | str  # how a reward model reads the prompt (ModelReward)
    precision: str  # dtype reward models are frozen in


def config_sources(settings: RewardSettings) -> list[tuple[str, str]]:
    """The config's reward sources as (source, kind), in order: ``reward_model`` (a model),
    ``reward_function`` (a function), then each of ``rewards`` (told apart by its form)."""
    sources = [(settings.reward_model, "model")] if settings.reward_model is not None else []
    if settings.reward_function is not None:
        sources.append((settings.reward_function, "function"))
    return sources + [(s, source_kind(s)) for s in settings.rewards]


def reward_specs(settings: RewardSettings, python: Any = None) -> list[RewardSpec]:
    """The run's named, weighted sources: the config's, or those passed from Python
    (``tether.PPO(config, reward=...)``: a callable, a source string, a list of them, or a dict
    name -> source), never both. Weights: ``reward_weights``, else 1 each."""
    given = config_sources(settings)
    if python is not None and given:
        raise ConfigError("the reward is given twice: in the config (reward_model, reward_function or rewards) and "
                          "as reward=; keep one")
    named = _named(python) if python is not None else [(None, source, kind) for source, kind in given]
    if not named:
        raise ConfigError("no reward: set reward_model (a folder), reward_function (module:function) or rewards "
                          "(functions, reward models, http:// reward servers); from Python, reward=")
    weights = list(settings.reward_weights) if settings.reward_weights is not None else [1.0] * len(named)
    if len(weights) != len(named):
        raise ConfigError(f'field "reward_weights" has {len(weights)} weight(s) for {len(named)} reward source(s); '
                          "give one per source, in the same order")
    names = _unique([name or default_name(source, kind) for name, source, kind in named])
    return [RewardSpec(n, source, kind, float(w)) for n, (_, source, kind), w in zip(names, named, weights)]


def _named(python: Any) -> list[tuple[str | None, str | Callable, str]]:
    if isinstance(python, dict):
        items = list(python.items())
    elif isinstance(python, (list, tuple)):
        items = [(None, s) for s in python]
    else:
        items = [(None, python)]
    for name, source in items:
        if not (callable(source) or isinstance(source, str)):
            raise ConfigError(f"reward= takes callables fn(prompts, responses) -> list[float] or source strings "
                              f"(module:function, a reward-model folder, an http:// URL); got {type(source).__name__}")
    return [(name, source, source_kind(source)) for name, source in items]


def default_name(source: str | Callable, kind: str) -> str:
    """The metric name of a source: a function's name, a model folder's last part, a server's
    host_port_path; characters other than letters, digits, '.', '-' and '_' become '_'."""
    if kind == "function":
        name = _callable_name(source).rpartition(".")[2] if callable(source) else source.rpartition(":")[2]
    elif kind == "http":
        url = urlparse(source)
        name = f"{url.hostname}_{url.port}{url.path}" if url.port else f"{url.hostname}{url.path}"
    else:
        name = source.rstrip("/").rsplit("/", 1)[-1]
    return re.sub(r"[^\w.-]+", "_", name).strip("_") or "reward"


def _callable_name(fn: Callable) -> str:
    name = getattr(fn, "__qualname__", None) or getattr(type(fn), "__qualname__", "reward")
    return name.replace("<lambda>", "lambda").replace("<locals>.", "")


def _unique(names: list[str]) -> list[str]:
    out: list[str] = []
    for name in names:
        candidate, n = name, 2
        while candidate in out:
            candidate, n = f"{name}_{n}", n + 1
        out.append(candidate)
    return out


def check_reward_specs(specs: list[RewardSpec]) -> None:
    """What can be checked before any model loads: functions import, models resolve, URLs parse."""
    from tether.models.registry import resolve_model

    for spec in specs:
        if spec.kind == "function" and isinstance(spec.source, str):
            load_function(spec.source)
        elif spec.kind == "model":
            try:
                resolve_model(spec.source)
            except TetherError as exc:
                raise ConfigError(f"reward {spec.name!r}: {exc} (a function is written module:function, "
                                  "a reward server http://host:port/path)") from None
        elif spec.kind == "http" and not urlparse(spec.source).hostname:
            raise ConfigError(f"reward {spec.name!r}: {spec.source!r} is not a URL of the form http://host:port/path")


def build_reward(specs: list[RewardSpec], settings: RewardSettings, policy_tokenizer, device: torch.device) -> CombinedReward:
    """Each spec as a source: functions imported, reward models loaded frozen on ``device``,
    servers reached through ``RemoteReward`` (``reward_timeout``, ``reward_retries``)."""
    sources = []
    for spec in specs:
        if spec.kind == "function":
            source: RewardSource = FunctionReward(spec.source, spec.name)
        elif spec.kind == "http":
            from tether.rollout.remote_reward import RemoteReward

            source = RemoteReward(spec.source, settings.reward_timeout, settings.reward_retries)
        else:
            source = _model_reward(spec.source, settings, policy_tokenizer, device)
        sources.append((spec.name, source, spec.weight))
    return CombinedReward(sources)


def _model_reward(path: str, settings: RewardSettings, policy_tokenizer, device: torch.device) -> ModelReward:
    from tether.models.loading import freeze, load_tokenizer
    from tether.models.scalar_head import ScalarHeadModel

    model = freeze(ScalarHeadModel.from_pretrained(path, device), settings.precision)
    return ModelReward(model, load_tokenizer(path), policy_tokenizer, settings.forward_batch_size,
                       settings.chat_template)


def is_finite(scores: torch.Tensor) -> bool:
    return bool(torch.isfinite(scores).all()) if scores.numel() else True


def describe_nonfinite(scores: torch.Tensor) -> str:
    bad = (~torch.isfinite(scores)).nonzero().flatten().tolist()
    return f"{len(bad)} non-finite score(s) at rows {bad[:8]}" + ("..." if len(bad) > 8 else "")


__all__ = ["RewardSource", "FunctionReward", "ModelReward", "CombinedReward", "RewardSettings", "RewardSpec", "reward_specs",
           "check_reward_specs", "build_reward", "checked_scores", "load_function", "is_finite", "describe_nonfinite"]
