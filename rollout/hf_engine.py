"""HF transformers rollout engine: a KV-cached sampling loop over its own copy of the model, in process.

Log-probs come from the same logits the token was sampled from (log_softmax(logits / T)), so they are exact
behaviour log-probs. Reproducible: each `generate` call seeds its own torch.Generator.
"""
from __future__ import annotations

from typing import Iterable

import torch

from rollout.engine import position_ids
from rollout.types import Sample, SamplingParams

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _top_p_filter(logp: torch.Tensor, top_p: float) -> torch.Tensor:
    """Set log-probs outside the nucleus to -inf and renormalise."""
    sorted_lp, idx = logp.sort(dim=-1, descending=True)
    cum = sorted_lp.exp().cumsum(-1)
    drop = cum - sorted_lp.exp() > top_p  # keep the token that crosses top_p
    sorted_lp = sorted_lp.masked_fill(drop, float("-inf"))
    out = torch.full_like(logp, float("-inf")).scatter(-1, idx, sorted_lp)
    return torch.log_softmax(out, dim=-1)


class HFEngine:
    def __init__(self, model_path: str, dtype: str = "float32", seed: int = 0, max_batch: int = 256):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=DTYPES[dtype]).to(self.device).eval()
        self.model.requires_grad_(False)
        tok = AutoTokenizer.from_pretrained(model_path)
        self.eos_id = tok.eos_token_id
        self.pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        self.max_batch, self.seed, self.version, self._calls = max_batch, seed, 0, 0

    # --- generation ------------------------------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Sample]:
        seed = sampling.seed if sampling.seed is not None else self.seed * 7919 + self._calls
        self._calls += 1
        gen = torch.Generator(device=self.device).manual_seed(seed)
        out: list[Sample] = []
        for start in range(0, len(prompts), self.max_batch):
            out += self._generate_chunk(prompts[start:start + self.max_batch], sampling, gen)
        return out

    def _generate_chunk(self, prompts, sp: SamplingParams, gen) -> list[Sample]:
        B, P = len(prompts), max(len(p) for p in prompts)
        ids = torch.full((B, P), self.pad_id, dtype=torch.long)  # [B, P] left-padded
        attn = torch.zeros((B, P), dtype=torch.long)
        for i, p in enumerate(prompts):
            ids[i, P - len(p):] = torch.tensor(p)
            attn[i, P - len(p):] = 1
        ids, attn = ids.to(self.device), attn.to(self.device)
        pos = position_ids(attn)
        res = self.model(input_ids=ids, attention_mask=attn, position_ids=pos, use_cache=True)
        past, logits = res.past_key_values, res.logits[:, -1]  # [B, V]
        next_pos = pos[:, -1] + 1  # [B]
        tokens = torch.zeros((B, sp.max_new_tokens), dtype=torch.long)  # [B, N]
        logps = torch.zeros((B, sp.max_new_tokens))
        lengths = torch.full((B,), sp.max_new_tokens)
        done = torch.zeros(B, dtype=torch.bool, device=self.device)
        for t in range(sp.max_new_tokens):
            if sp.temperature > 0:
                lp = torch.log_softmax(logits.float() / sp.temperature, dim=-1)  # [B, V]
                if sp.top_p < 1.0:
                    lp = _top_p_filter(lp, sp.top_p)
                tok = torch.multinomial(lp.exp(), 1, generator=gen).squeeze(-1)  # [B]
            else:
                lp = torch.log_softmax(logits.float(), dim=-1)
                tok = lp.argmax(-1)
            tok = torch.where(done, torch.full_like(tok, self.pad_id), tok)
            tokens[:, t] = tok.cpu()
            logps[:, t] = lp.gather(-1, tok[:, None]).squeeze(-1).cpu()
            newly = (tok == self.eos_id) & ~done
            lengths[newly.cpu()] = t + 1
            done |= newly
            if bool(done.all()) or t == sp.max_new_tokens - 1:
                break
            attn = torch.cat([attn, torch.ones((B, 1), dtype=attn.dtype, device=self.device)], dim=1)
            res = self.model(input_ids=tok[:, None], attention_mask=attn, position_ids=next_pos[:, None],
                             past_key_values=past, use_cache=True)
            past, logits = res.past_key_values, res.logits[:, -1]
            next_pos = next_pos + 1
        samples = []
        for i, p in enumerate(prompts):
            n = int(lengths[i])
            ids_i = tokens[i, :n].tolist()
            samples.append(Sample(prompt_ids=list(p), completion_ids=ids_i, logprobs=logps[i, :n].tolist(),
                                  versions=[self.version] * n,
                                  finish_reason="stop" if n and ids_i[-1] == self.eos_id else "length"))
        return samples

    # --- weights and scoring ---------------------------------------------------------------------------------------
    @torch.no_grad()
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        params = dict(self.model.named_parameters())
        buffers = dict(self.model.named_buffers())
        seen = 0
        for name, t in named_tensors:
            target = params.get(name, buffers.get(name))
            if target is None:
                if name == "lm_head.weight" and self.model.config.tie_word_embeddings:
                    continue
                raise KeyError(f"update_weights: the engine's model has no parameter '{name}'")
            target.copy_(t.to(target.device, target.dtype))
            seen += 1
        if seen == 0:
            raise ValueError("update_weights: no tensors given")
        self.version = version

    @torch.no_grad()
    def score(self, prompt_ids, completion_ids, temperature: float) -> list[list[float]]:
        from rollout.engine import policy_logprobs
        from trainers.grpo.batch import collate

        samples = [Sample(p, c, [0.0] * len(c), [0] * len(c)) for p, c in zip(prompt_ids, completion_ids)]
        z = torch.zeros(len(samples))
        b = collate(samples, z, z, z.long(), self.pad_id)
        lp = policy_logprobs(self.model, b.input_ids.to(self.device), b.attention_mask.to(self.device), b.prompt_len, temperature)
        return [lp[i, :len(c)].tolist() for i, c in enumerate(completion_ids)]

    def close(self) -> None:
        self.model = None
