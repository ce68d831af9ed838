"""HF transformers rollout engine: a KV-cached sampling loop over its own copy of the model, in process.

Why our own loop rather than `model.generate(output_logits=True)`: on random-3m (2 CPU cores) both run at the
same speed within noise (128 prompts x 8 tokens and 64 x 32), but the loop takes each behaviour log-prob from
the very logits its token was sampled from (no [B, N, V] logits kept for a post-hoc pass), applies exactly our
temperature/top-p semantics, and stops a chunk as soon as every row has produced EOS.

Reproducible: a `generate` call seeds its own torch.Generator (from `sampling.seed`, or from the engine seed and
a call counter), so the same prompts, seed and `max_batch` give the same samples.
"""
from __future__ import annotations

import gc
from pathlib import Path
from typing import Iterable

import torch
from pydantic import Field

from rl.config import Section
from rollout.logprobs import ESTIMATORS, left_pad, position_ids
from rollout.types import Sample, SamplingParams, samples_from_rows


class HFOptions(Section):
    """Options of the `hf` engine (`rollout.hf.*`)."""

    max_batch: int = Field(256, ge=1)
    """Largest batch the engine generates (and scores) at once."""
    device: str | None = None
    """Torch device of the engine's model copy (None: cuda if available, else cpu)."""


def top_p_filter(logp: torch.Tensor, top_p: float) -> torch.Tensor:
    """[B, V] log-probs restricted to the nucleus (smallest set with mass >= top_p) and renormalised."""
    sorted_lp, idx = logp.sort(dim=-1, descending=True)  # [B, V]
    p = sorted_lp.exp()
    drop = p.cumsum(-1) - p > top_p  # mass before this token already reaches top_p: keep the token that crosses it
    sorted_lp = sorted_lp.masked_fill(drop, float("-inf"))
    out = torch.full_like(logp, float("-inf")).scatter(-1, idx, sorted_lp)  # [B, V]
    return torch.log_softmax(out, dim=-1)


def eos_token_ids(model_path: str, tokenizer) -> set[int]:
    """The tokenizer's EOS plus the generation config's (vLLM stops on both)."""
    from transformers import GenerationConfig

    ids = {tokenizer.eos_token_id} if tokenizer.eos_token_id is not None else set()
    try:
        eos = GenerationConfig.from_pretrained(model_path).eos_token_id
    except OSError:  # no generation_config.json
        eos = None
    ids.update([eos] if isinstance(eos, int) else (eos or []))
    return ids


def copy_weights(model: torch.nn.Module, named_tensors: Iterable[tuple[str, torch.Tensor]],
                 peft_hint: bool = True) -> None:
    """Copy named tensors (full HF names) into `model`'s parameters and buffers in place, each name and shape
    checked (call under no_grad). `peft_hint`: an unknown name that looks like a LoRA / peft one says to merge and
    strip first."""
    targets = model.state_dict()  # name -> tensor sharing storage with the live parameters and buffers
    n = 0
    for name, t in named_tensors:
        target = targets.get(name)
        if target is None:
            hint = " (full HF names expected: merge LoRA and strip peft prefixes first)" if peft_hint and (
                "lora" in name or name.startswith("base_model.")) else ""
            raise KeyError(f"update_weights: the engine's model has no parameter '{name}'{hint}")
        if target.shape != t.shape:
            raise ValueError(f"update_weights: '{name}' has shape {tuple(t.shape)}, the model's is {tuple(target.shape)}")
        target.copy_(t)
        n += 1
    if n == 0:
        raise ValueError("update_weights: no tensors given")


class HFEngine:
    """The `hf` engine. The model is loaded, and `score` computed, by the log-prob estimator `estimator`
    (`rollout.logprobs.ESTIMATORS`); the sampling loop itself is left-to-right with a KV cache, so it serves
    causal estimators only."""

    Options = HFOptions

    def __init__(self, model_path: str, *, dtype: str = "float32", seed: int = 0, lora: str | bool | None = None,
                 options: HFOptions | None = None, estimator: str = "causal"):
        from transformers import AutoTokenizer

        o = options or HFOptions()
        self.estimator = ESTIMATORS.get(estimator)
        self.device = torch.device(o.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.base = self.estimator.load_model(model_path, dtype).to(self.device).eval()
        self.base.requires_grad_(False)
        self.model = self.base  # the base, or a peft wrapper around it while an adapter is loaded
        tok = AutoTokenizer.from_pretrained(model_path)
        self.eos_ids = eos_token_ids(model_path, tok)
        self.pad_id = next(i for i in (tok.pad_token_id, tok.eos_token_id, 0) if i is not None)
        self.max_batch, self.seed, self.version, self._calls = o.max_batch, seed, 0, 0
        if isinstance(lora, (str, Path)):
            self.load_lora(str(lora), version=0)

    # --- generation ------------------------------------------------------------------------------------------------
    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Sample]:
        if any(len(p) == 0 for p in prompts):
            raise ValueError("HFEngine.generate: empty prompt (every prompt needs at least one token)")
        seed = sampling.seed if sampling.seed is not None else self.seed * 1_000_003 + self._calls
        self._calls += 1
        gen = torch.Generator(device=self.device).manual_seed(seed)
        out: list[Sample] = []
        for start in range(0, len(prompts), self.max_batch):
            out += self._generate_chunk(prompts[start:start + self.max_batch], sampling, gen)
        return out

    def _generate_chunk(self, prompts: list[list[int]], sp: SamplingParams, gen: torch.Generator) -> list[Sample]:
        B, N, dev = len(prompts), sp.max_new_tokens, self.device
        ids, attn, P = left_pad(prompts, [[]] * B, self.pad_id)
        ids, attn = ids[:, :P].to(dev), attn[:, :P].to(dev)  # [B, P] prompts only, left-padded
        pos = position_ids(attn)  # [B, P]
        res = self.model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True)
        past, logits = res.past_key_values, res.logits[:, -1]  # [B, V]
        next_pos = pos[:, -1:] + 1  # [B, 1]
        eos = torch.tensor(sorted(self.eos_ids), device=dev, dtype=torch.long)
        tokens = torch.full((B, N), self.pad_id, dtype=torch.long, device=dev)  # [B, N]
        logps = torch.zeros((B, N), device=dev)  # [B, N]
        lengths = torch.full((B,), N, dtype=torch.long, device=dev)  # [B]
        done = torch.zeros(B, dtype=torch.bool, device=dev)  # [B]
        for t in range(N):
            if sp.temperature > 0:
                lp = torch.log_softmax(logits.float() / sp.temperature, dim=-1)  # [B, V]
                if sp.top_p < 1.0:
                    lp = top_p_filter(lp, sp.top_p)
                tok = torch.multinomial(lp.exp(), 1, generator=gen).squeeze(-1)  # [B]
            else:
                lp = torch.log_softmax(logits.float(), dim=-1)  # [B, V]
                tok = lp.argmax(-1)  # [B]
            tok = tok.masked_fill(done, self.pad_id)
            tokens[:, t] = tok
            logps[:, t] = lp.gather(-1, tok[:, None]).squeeze(-1)
            stopped = torch.isin(tok, eos) & ~done  # [B]
            lengths = torch.where(stopped, t + 1, lengths)
            done |= stopped
            if t == N - 1 or bool(done.all()):
                break
            attn = torch.cat([attn, torch.ones((B, 1), dtype=attn.dtype, device=dev)], dim=1)  # [B, P+t+1]
            res = self.model(input_ids=tok[:, None], attention_mask=attn, position_ids=next_pos,
                             past_key_values=past, use_cache=True)
            past, logits = res.past_key_values, res.logits[:, -1]
            next_pos = next_pos + 1
        return samples_from_rows(prompts, tokens.cpu(), logps.cpu(), self.version, self.eos_ids, lengths.tolist())

    # --- weights, adapters and scoring -----------------------------------------------------------------------------
    @torch.no_grad()
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        if self.model is not self.base:
            self._drop_lora()
        copy_weights(self.base, named_tensors)
        self.version = version

    def load_lora(self, adapter_dir: str, version: int) -> None:
        from peft import PeftModel

        if self.model is not self.base:
            self._drop_lora()
        self.model = PeftModel.from_pretrained(self.base, adapter_dir).to(self.device).eval()
        self.model.requires_grad_(False)
        self.version = version

    def _drop_lora(self) -> None:
        self.base = self.model.unload()  # removes the adapter layers, restoring the base modules
        self.model = self.base

    @torch.inference_mode()
    def score(self, prompt_ids: list[list[int]], completion_ids: list[list[int]], temperature: float) -> list[list[float]]:
        out: list[list[float]] = []
        for s in range(0, len(prompt_ids), self.max_batch):
            ps, cs = prompt_ids[s:s + self.max_batch], completion_ids[s:s + self.max_batch]
            ids, attn, P = left_pad(ps, cs, self.pad_id)
            lp = self.estimator.logprobs(self.model, ids.to(self.device), attn.to(self.device), P, temperature).cpu()  # [b, L]
            out += [lp[i, :len(c)].tolist() for i, c in enumerate(cs)]
        return out

    def close(self) -> None:
        self.model = self.base = None
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
