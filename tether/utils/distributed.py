"""Data parallelism under ``torchrun`` (or ``accelerate launch``): one process per device,
each holding the four roles, each generating and scoring its own shard of every batch.

What makes N ranks compute the update of one process with the same global batch:

- data     every rank draws the same global batch from one identically seeded PromptStream and
           keeps its rank's contiguous slice (whole prompts, so GRPO/RLOO groups never straddle
           ranks); the stream's state is therefore the same on every rank (resume needs one copy).
- sampling per-rank seeds (``seed + rank``) after the models are built from the shared seed:
           identical initial weights, different samples.
- whitening mean and variance of advantages/rewards from all-reduced sums over the global
           batch (``whiten``), not per rank.
- losses   token/sequence counts of the global minibatch (``all_sum``), so each rank's loss is
           its share of the global token-mean; DDP and FSDP2 average gradients over ranks,
           hence ``grad_scale`` = world size restores the sum.
- metrics  averaged over ranks (every rank holds the same number of responses).
- writing  only rank 0 writes the run directory, checkpoints and final models.

Backends: NCCL on CUDA, gloo on CPU (the tests run 2 CPU ranks with gloo).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass, field

import torch

from tether.errors import ConfigError
from tether.utils.blocks import decoder_blocks
from tether.utils.checkpoint import Checkpointer


@dataclass(frozen=True)
class DistContext:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    strategy: str = "none"  # none | ddp | fsdp2

    @property
    def active(self) -> bool:
        return torch.distributed.is_available() and torch.distributed.is_initialized()

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def grad_scale(self) -> float:
        """Factor on each rank's loss: the strategies average gradients over ranks, while the
        loss is already normalised by the global token count, so the sum is what is wanted."""
        return float(self.world_size) if self.strategy in ("ddp", "fsdp2") else 1.0

    def all_sum(self, x: torch.Tensor) -> torch.Tensor:
        """Sum of ``x`` over ranks (a new tensor; ``x`` itself unchanged)."""
        x = x.detach().clone()
        if self.active and self.world_size > 1:
            torch.distributed.all_reduce(x, op=torch.distributed.ReduceOp.SUM)
        return x

    def all_true(self, flag: bool) -> bool:
        """True when ``flag`` holds on every rank (so all ranks take the same branch)."""
        return bool(self.all_sum(torch.tensor([0.0 if flag else 1.0])).item() == 0.0)

    def any_true(self, flag: bool) -> bool:
        """True when ``flag`` holds on some rank (e.g. a signal reached one of them)."""
        return not self.all_true(not flag)

    def mean_metrics(self, metrics: dict[str, float]) -> dict[str, float]:
        """Each metric averaged over ranks (one all-reduce for the whole dict)."""
        if not (self.active and self.world_size > 1):
            return metrics
        keys = sorted(metrics)
        summed = self.all_sum(torch.tensor([float(metrics[k]) for k in keys], dtype=torch.float64))
        return {k: v / self.world_size for k, v in zip(keys, summed.tolist())}

    def shard(self, rows: list, batch_rows: int) -> list:
        """This rank's contiguous slice of a global batch's rows (``batch_rows`` per rank)."""
        return rows[self.rank * batch_rows : (self.rank + 1) * batch_rows]

    def barrier(self) -> None:
        if self.active and self.world_size > 1:
            torch.distributed.barrier()


def world_size_from_env() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_rank_zero() -> bool:
    """True in a single process and in rank 0 under torchrun: the one that prints for the run."""
    return int(os.environ.get("RANK", "0")) == 0


def init_distributed(strategy: str = "auto", device: str = "auto") -> tuple[DistContext, str]:
    """Join the process group torchrun set up (RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR/PORT in
    the environment); returns (context, device spec for this rank). One process without torchrun
    gives an inactive context, unless ``strategy=fsdp2`` asks for a one-rank group."""
    world = world_size_from_env()
    resolved = {"auto": "none" if world == 1 else "ddp"}.get(strategy, strategy)
    if world > 1 and resolved == "none":
        raise ConfigError(f"strategy=none under {world} processes would train {world} unrelated models; use ddp or fsdp2")
    if resolved == "none":
        return DistContext(), device
    use_cuda = torch.cuda.is_available() and device in ("auto", "cuda")
    rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = f"cuda:{local_rank}"
    if not torch.distributed.is_initialized():
        backend = "nccl" if use_cuda else "gloo"
        timeout = datetime.timedelta(minutes=30)  # generation on one rank may lag another's
        if world == 1:  # one rank without torchrun (fsdp2 on one device, tests)
            store = torch.distributed.HashStore()
            torch.distributed.init_process_group(backend, store=store, rank=0, world_size=1, timeout=timeout)
        else:
            torch.distributed.init_process_group(backend, timeout=timeout)
    return DistContext(rank, world, local_rank, resolved), device


def shutdown_distributed(ctx: DistContext, clean: bool = True) -> None:
    """Leave the process group. After a clean finish every rank first meets the others (a rank
    tearing gloo down while a peer still talks to it can abort the peer); after an error, not
    (the others may never arrive)."""
    if ctx.active:
        if clean and ctx.world_size > 1:
            torch.distributed.barrier()
        torch.distributed.destroy_process_group()


def rank_seed(seed: int, ctx: DistContext) -> int:
    """Seed of this rank's sampling RNG: rank 0 keeps the run's seed (a one-process run is rank 0)."""
    return seed + 1_000_003 * ctx.rank


def whiten(x: torch.Tensor, mask: torch.Tensor, ctx: DistContext, shift_mean: bool = True, eps: float = 1e-8) -> torch.Tensor:
    """``tether.ops.masking.masked_whiten`` over the global batch: mean and (Bessel-corrected)
    variance of the real tokens of every rank, from all-reduced sums. x, mask: (B, R)."""
    m = mask.to(x.dtype)
    n = ctx.all_sum(m.sum())
    mean = ctx.all_sum((x * m).sum()) / n.clamp(min=1.0)
    var = ctx.all_sum((((x - mean) ** 2) * m).sum()) / n.clamp(min=1.0)
    if n > 1:
        var = var * n / (n - 1)
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return whitened * m


# ---- wrapping the trained roles --------------------------------------------------------------


def wrap_trained(module: torch.nn.Module, ctx: DistContext, device: torch.device) -> torch.nn.Module:
    """DDP or FSDP2 around a trained role's forward module (see ``tether.train.roles``), or the
    module itself with one process. FSDP2 shards every decoder block, then the rest (embeddings,
    norm, LM head, value head) as the root unit: tied embeddings stay in one unit."""
    if ctx.strategy == "ddp" and ctx.world_size > 1:
        from torch.nn.parallel import DistributedDataParallel

        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)
    if ctx.strategy == "fsdp2":
        from torch.distributed.fsdp import fully_shard

        mesh = torch.distributed.device_mesh.init_device_mesh(device.type, (ctx.world_size,))
        for layer in decoder_blocks(module):  # each block its own FSDP2 unit
            fully_shard(layer, mesh=mesh)
        # The root reshards after its forward too (FSDP2's default keeps the root unsharded):
        # with the root left unsharded by a no-grad scoring forward, the next training step gave
        # wrong gradients for the root's parameters (torch 2.13, CPU/gloo; the first-update test).
        fully_shard(module, mesh=mesh, reshard_after_forward=True)
    return module


def unwrap(module: torch.nn.Module) -> torch.nn.Module:
    return getattr(module, "module", module)


def fsdp_modules(module: torch.nn.Module | None) -> list:
    if module is None:
        return []
    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover
        return []
    return [m for m in module.modules() if isinstance(m, FSDPModule)]


class full_weights:
    """Context in which FSDP2-sharded modules hold their full (unsharded) parameters, for
    generation (``model.generate`` calls the decoder blocks, not the wrapped root) and saving;
    a no-op for anything else. Every rank must enter it: this is the only all-gather. Inside,
    no unit reshards after its forward, so ranks may run different numbers of decoding steps
    (their responses end at different lengths) without any collective in between."""

    def __init__(self, *modules: torch.nn.Module | None):
        self.roots = [fsdp_modules(m)[0] for m in modules if fsdp_modules(m)]
        self.units = [u for m in modules for u in fsdp_modules(m)]

    def __enter__(self):
        for root in self.roots:
            # FSDP2 initialises its root state lazily at the root's first forward; generation
            # would reach a block first and make it a root of its own (torch 2.13 raises then).
            root._get_fsdp_state()._lazy_init()
        for unit in self.units:
            unit.set_reshard_after_forward(False, recurse=False)
            unit.unshard()
        return self

    def __exit__(self, *exc):
        for unit in reversed(self.units):
            unit.reshard()
            unit.set_reshard_after_forward(True, recurse=False)
        return False


def full_state_dicts(roles, ctx: DistContext) -> dict | None:
    """FSDP2: every trained role's full state dict, gathered on every rank (a collective: all
    ranks call it), keyed as ``save_pretrained`` expects; None for the other strategies, whose
    modules hold full weights already. Tied weights stay one tensor."""
    if ctx.strategy != "fsdp2":
        return None
    modules = {"policy": roles.policy, "critic": roles.critic.hf_model if roles.critic is not None else None,
               "value_head": roles.value_head}
    gathered: dict[int, torch.Tensor] = {}

    def full(v):
        if id(v) not in gathered:
            gathered[id(v)] = (v.full_tensor() if hasattr(v, "full_tensor") else v).detach().cpu()
        return gathered[id(v)]

    return {name: {k: full(v) for k, v in m.state_dict(keep_vars=True).items()}
            for name, m in modules.items() if m is not None}


@dataclass
class RankZeroCheckpointer(Checkpointer):
    """Checkpoints written by rank 0 only (every rank holds the same weights, optimizer and data
    position); the other ranks wait at a barrier so none races past a half-written one.

    FSDP2 (``sharded``: the wrapped forward modules): weights and optimizer state are gathered
    as full state dicts (``torch.distributed.checkpoint.state_dict``, every rank takes part) and
    written by rank 0 like any other checkpoint; restore broadcasts them from rank 0 and
    re-shards. Such a checkpoint resumes FSDP2 runs (any world size), not DDP ones."""

    ctx: DistContext = field(default_factory=DistContext)
    sharded: tuple = ()  # FSDP2 only: the sharded modules (their parameters are in stateful["optimizer"])

    def __post_init__(self) -> None:
        self._container = None
        if self.ctx.strategy == "fsdp2":
            self._container = torch.nn.ModuleList([m for m in self.sharded if m is not None])
            self._optimizer = self.stateful.pop("optimizer")
            self.modules = {}  # inside the container

    def _options(self, **kw):
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        return StateDictOptions(full_state_dict=True, **kw)

    def save(self, iteration: int, counters: dict, history: list):
        if self._container is not None:
            from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

            # Parameters by their canonical names (named_parameters drops the aliases that
            # ScalarHeadModel's backbone/head attributes add to state_dict()).
            full = {"model": {n: (p.full_tensor() if hasattr(p, "full_tensor") else p).detach().cpu()
                              for n, p in self._container.named_parameters()},
                    "optimizer": get_optimizer_state_dict(self._container, self._optimizer,
                                                          options=self._options(cpu_offload=True))}
            self.stateful["fsdp2"] = _Constant(full)
        try:
            path = super().save(iteration, counters, history) if self.ctx.is_main else None
        finally:
            self.stateful.pop("fsdp2", None)
        self.last_saved = iteration
        self.ctx.barrier()
        return path

    def restore(self, state: dict) -> tuple[int, dict]:
        if self._container is not None:
            from torch.distributed.checkpoint.state_dict import set_optimizer_state_dict
            from torch.distributed.tensor import distribute_tensor

            if "fsdp2" not in state["stateful"]:
                raise ConfigError("this checkpoint was not written by an FSDP2 run; resume it with its own strategy")
            full = state["stateful"]["fsdp2"]
            with torch.no_grad():  # every rank read the file: each cuts its own shard
                for name, p in self._container.named_parameters():
                    value = full["model"][name].to(p.device, p.dtype)
                    p.copy_(distribute_tensor(value, p.device_mesh, p.placements) if hasattr(p, "device_mesh") else value)
            set_optimizer_state_dict(self._container, self._optimizer, full["optimizer"],
                                     options=self._options(broadcast_from_rank0=True))
        return super().restore(state)


class _Constant:
    """A gathered state dict in the ``stateful`` slot of a checkpoint (written, never loaded back
    through here)."""

    def __init__(self, state: dict):
        self.state = state

    def state_dict(self) -> dict:
        return self.state

    def load_state_dict(self, state: dict) -> None:
        pass
