"""The `diffusion` rollout engine: the LLaDA denoising sampler for masked-diffusion LMs, with its schedules.

A masked-diffusion LM (a bidirectional transformer that predicts the token under every `[MASK]`) generates by
starting from `[prompt, MASK^L]` and revealing a few positions per forward pass (LLaDA `generate.py`, copied into
d1 and EOSER-ASS-RL; `../shared/specs/ALGORITHMS.md` sections 2 and 7):

- blocks: the L canvas positions are decoded block by block (block_length = L: full diffusion; smaller:
  semi-autoregressive), each block with its share of the steps;
- per step: logits at every position, a token proposal x0 = argmax(logits / T + Gumbel) (a sample of
  softmax(logits / T); greedy when T = 0), a confidence per masked position in the current block (the proposal's
  probability under softmax(logits) for `low_confidence`, uniform noise for `random`), and the top-k confident
  positions are committed;
- schedules of k: `uniform` (k = masks / steps, the remainder to the early steps), `ass` (EOSER-ASS-RL: step i
  reveals 2^i tokens, the last 2^(S-1) + 1, so L = 2^S positions take S = log2 L steps), `threshold` (Fast-dLLM:
  commit every position whose confidence is >= tau, and at least the most confident one) and `credit`
  (CreditDecoding: a decayed credit per position and token, accumulated from past top-1 probabilities, is fused
  into the logits, then threshold decoding on the fused logits);
- EOSER (`eoser: true`): the confidence of EOS proposals is multiplied by a gamma rising over the steps, so the
  model does not settle on an early end of sequence before it has written the answer.

The MASK token's own logit is set to -inf (SUBS parameterisation: the model never proposes MASK).

Every sample carries its whole trajectory: `completion_ids` is the full canvas of L tokens (post-EOS tokens
included, as d1 decodes them), `reveal_steps[j]` the denoising step that revealed canvas position j (so state
x_s is the canvas with the positions revealed after step s masked), and `logprobs[j]` the behaviour log-prob of
that choice, log softmax(logits / T)[token] at that step (the credit schedule: of the fused logits). The *position*
choice is outside the likelihood (as in the paper's code). Reproducible: a call seeds its own generator.

`score` (the weight-sync probe) and the trainer's log-probs go through the log-prob estimator (`cj_grpo` or
`diffu_grpo`, `rollout/diffusion_logprobs.py`); this engine serves only masked-diffusion estimators.
"""
from __future__ import annotations

import gc
import math
from dataclasses import dataclass
from typing import Iterable, Literal

import torch
from pydantic import Field, model_validator

from rl.config import Section
from rl.errors import ConfigError
from rollout.diffusion_logprobs import denoiser_logits, mask_token_id
from rollout.logprobs import ESTIMATORS, left_pad
from rollout.types import Sample, SamplingParams, samples_from_rows


class DecodingOptions(Section):
    """Options of the `diffusion` engine (`rollout.decoding.*`). The canvas length L is the sampling budget
    (`rollout.max_new_tokens`, `eval.max_new_tokens`)."""

    schedule: Literal["uniform", "ass", "threshold", "credit"] = "uniform"
    """How many positions each step reveals: uniform (L/steps), ass (2^i at step i: log2 of the block length steps),
    threshold (Fast-dLLM: every position with confidence >= `threshold`), credit (CreditDecoding + threshold)."""
    steps: int | None = Field(None, ge=1)
    """Denoising steps in all (uniform only; split evenly over the blocks). None: one per canvas position (L)."""
    block_length: int | None = Field(None, ge=1)
    """Positions per block (semi-autoregressive decoding when < L; L must be a multiple). None: one block (L)."""
    remasking: Literal["low_confidence", "random"] = "low_confidence"
    """Which masked positions a step commits: the most confident proposals, or uniformly random ones."""
    eoser: bool = False
    """EOSER: multiply the confidence of EOS proposals by gamma rising from eos_gamma_min to eos_gamma_max."""
    eos_gamma_min: float | None = Field(None, gt=0, le=1)
    """EOSER's first gamma. None: 0.4 for uniform, 0.01 for ass (the paper's code)."""
    eos_gamma_max: float = Field(1.0, gt=0, le=1)
    """EOSER's last gamma."""
    threshold: float = Field(0.9, gt=0, le=1)
    """threshold / credit: commit every masked position of the block whose confidence is >= this (Fast-dLLM 0.9)."""
    credit_beta: float = Field(0.8, ge=0, le=1)
    """credit: decay of the accumulated credit per step (dInfer 0.8)."""
    credit_gamma: float = Field(0.2, gt=0)
    """credit: the credit added to a position's top-1 token is p_top1 ** gamma (dInfer 0.2)."""
    credit_alpha: float = Field(0.7, ge=0)
    """credit: fused logits = logits + alpha * log(1 + credit) (dInfer 0.7)."""
    max_batch: int = Field(256, ge=1)
    """Largest batch decoded (and scored) at once."""
    device: str | None = None
    """Torch device of the engine's model copy (None: cuda if available, else cpu)."""

    @model_validator(mode="after")
    def _steps_only_for_uniform(self):
        if self.steps is not None and self.schedule != "uniform":
            raise ValueError(f"rollout.decoding.steps is set but schedule={self.schedule} decides its own step count "
                             f"(ass: log2 of the block length; threshold/credit: until every position passes)")
        return self


def block_plan(L: int, o: DecodingOptions) -> tuple[int, list[int] | None]:
    """(block length, tokens revealed per step within one block; None for the dynamic threshold/credit schedules).
    Named errors for a length the schedule cannot split."""
    Bl = o.block_length or L
    if L % Bl:
        raise ConfigError(f"decoding length {L} (rollout.max_new_tokens / eval.max_new_tokens) is not divisible by "
                          f"rollout.decoding.block_length={Bl}")
    n_blocks = L // Bl
    if o.schedule == "uniform":
        steps = o.steps or L
        if steps % n_blocks:
            raise ConfigError(f"rollout.decoding.steps={steps} is not divisible by the {n_blocks} blocks of "
                              f"{Bl} positions (L={L})")
        per = steps // n_blocks
        if per > Bl:
            raise ConfigError(f"rollout.decoding.steps={steps} gives {per} steps per block of {Bl} positions "
                              f"(at most one step per position)")
        return Bl, uniform_schedule(Bl, per)
    if o.schedule == "ass":
        if Bl & (Bl - 1) or Bl < 2:
            raise ConfigError(f"rollout.decoding.schedule=ass needs a block length that is a power of two >= 2, got "
                              f"{Bl} (decoding length {L}, rollout.decoding.block_length={o.block_length})")
        return Bl, ass_schedule(Bl)
    return Bl, None


def uniform_schedule(n: int, steps: int) -> list[int]:
    """LLaDA `get_num_transfer_tokens`: n positions over `steps` steps, floor(n / steps) each, the remainder to the
    early steps. uniform_schedule(10, 4) == [3, 3, 2, 2]."""
    base, rem = divmod(n, steps)
    return [base + (1 if i < rem else 0) for i in range(steps)]


def ass_schedule(n: int) -> list[int]:
    """EOSER-ASS-RL `ass_sampling`: n = 2^S positions in S steps, step i reveals 2^i and the last 2^(S-1) + 1.
    ass_schedule(32) == [1, 2, 4, 8, 17]."""
    S = int(math.log2(n))
    return [2 ** i for i in range(S - 1)] + [2 ** (S - 1) + 1]


def eos_gamma(step: int, total: int, o: DecodingOptions) -> float:
    """EOSER's gamma at `step` of `total`: uniform gmin + (gmax - gmin) i / (T - 1); ass gmin + (gmax - gmin)
    (2^(i+1) - 1) / 2^S (both from the paper's code)."""
    if o.schedule == "ass":
        gmin = 0.01 if o.eos_gamma_min is None else o.eos_gamma_min
        return gmin + (o.eos_gamma_max - gmin) * (2 ** (step + 1) - 1) / 2 ** total
    gmin = 0.4 if o.eos_gamma_min is None else o.eos_gamma_min
    return gmin + (o.eos_gamma_max - gmin) * step / max(1, total - 1)


@dataclass
class Denoised:
    """One batch's decoding: the canvas and its trajectory. Shapes: B rows, L canvas positions."""

    tokens: torch.Tensor  # [B, L] final canvas
    reveal_steps: torch.Tensor  # [B, L] the step that revealed each position
    logprobs: torch.Tensor  # [B, L] behaviour log-prob of each revealed token at its step
    forwards: torch.Tensor  # [B] denoising forward passes this row took part in (while it had masks)


@torch.no_grad()
def denoise(model, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor, L: int, o: DecodingOptions,
            temperature: float, mask_id: int, eos_ids: list[int], gen: torch.Generator) -> Denoised:
    """Decode L canvas positions after the left-padded prompts `prompt_ids` [B, P] (attention `prompt_mask`)."""
    B, P = prompt_ids.shape
    dev = prompt_ids.device
    Bl, plan = block_plan(L, o)
    x = torch.cat([prompt_ids, torch.full((B, L), mask_id, dtype=torch.long, device=dev)], 1)  # [B, P+L]
    attn = torch.cat([prompt_mask, torch.ones((B, L), dtype=prompt_mask.dtype, device=dev)], 1)  # [B, P+L]
    reveal = torch.full((B, L), -1, dtype=torch.long, device=dev)  # [B, L]
    logps = torch.zeros((B, L), device=dev)  # [B, L]
    forwards = torch.zeros(B, dtype=torch.long, device=dev)  # [B]
    eos = torch.tensor(eos_ids, dtype=torch.long, device=dev)
    credit = torch.zeros((B, L, 0), device=dev)  # [B, L, V] once the vocabulary is known
    pos = torch.arange(L, device=dev)  # [L]
    total_steps = len(plan) * (L // Bl) if plan is not None else None
    step = 0  # global step index (the trajectory's s)
    for b in range(L // Bl):
        in_block = (pos >= b * Bl) & (pos < (b + 1) * Bl)  # [L]
        i_blk = 0
        credit = credit.zero_() if credit.numel() else credit
        while True:
            masked = (x[:, P:] == mask_id) & in_block  # [B, L] still to decode in this block
            active = masked.any(-1)  # [B]
            if not bool(active.any()) or (plan is not None and i_blk == len(plan)):
                break
            logits = denoiser_logits(model, x, attn, mask_id)[:, P:]  # [B, L, V]
            if o.schedule == "credit":
                if credit.numel() == 0:
                    credit = torch.zeros_like(logits)
                elif i_blk > 0:
                    credit.mul_(o.credit_beta)
                p_top, i_top = torch.softmax(logits, -1).max(-1)  # [B, L]
                credit.scatter_add_(-1, i_top[..., None], (p_top ** o.credit_gamma * masked)[..., None])
                logits = logits + o.credit_alpha * torch.log1p(credit)  # [B, L, V] fused
            if temperature > 0:
                lp_all = torch.log_softmax(logits / temperature, -1)  # [B, L, V]
                u = torch.rand(lp_all.shape, generator=gen, device=dev, dtype=torch.float64)
                gumbel = -torch.log(-torch.log(u.clamp(min=1e-300)))
                x0 = (lp_all.double() + gumbel).argmax(-1)  # [B, L] a sample of softmax(logits / T)
            else:
                lp_all = torch.log_softmax(logits, -1)
                x0 = lp_all.argmax(-1)  # [B, L]
            lp_x0 = lp_all.gather(-1, x0[..., None]).squeeze(-1)  # [B, L]
            if o.remasking == "low_confidence":
                conf = torch.softmax(logits, -1).gather(-1, x0[..., None]).squeeze(-1)  # [B, L]
            else:
                conf = torch.rand((B, L), generator=gen, device=dev)
            if o.eoser and plan is not None:
                conf = torch.where(torch.isin(x0, eos), conf * eos_gamma(step, total_steps, o), conf)
            conf = torch.where(masked, conf, torch.full_like(conf, -math.inf))  # [B, L]
            if plan is not None:
                k = min(plan[i_blk], int(masked.sum(-1).max()))
                top = conf.topk(k, dim=-1).indices  # [B, k]
                chosen = torch.zeros_like(masked).scatter_(-1, top, True) & masked  # [B, L]
            else:
                best = torch.zeros_like(masked).scatter_(-1, conf.argmax(-1, keepdim=True), True)  # [B, L]
                chosen = ((conf >= o.threshold) | best) & masked & active[:, None]
            x[:, P:] = torch.where(chosen, x0, x[:, P:])
            reveal = torch.where(chosen, step, reveal)
            logps = torch.where(chosen, lp_x0.float(), logps)
            forwards += active.long()
            step += 1
            i_blk += 1
    return Denoised(tokens=x[:, P:], reveal_steps=reveal, logprobs=logps, forwards=forwards)


class DiffusionEngine:
    """The `diffusion` engine over a masked-diffusion LM directory (its tokenizer must have a mask token).
    `last_forwards` holds the forward passes per sample of the last `generate` call (for `rl bench diffusion`)."""

    Options = DecodingOptions

    def __init__(self, model_path: str, *, dtype: str = "float32", seed: int = 0, lora: str | bool | None = None,
                 options: DecodingOptions | None = None, estimator: str = "cj_grpo"):
        from transformers import AutoTokenizer

        from rollout.hf_engine import eos_token_ids

        self.options = options or DecodingOptions()
        self.estimator = ESTIMATORS.get(estimator)
        if not hasattr(self.estimator, "batch_logprobs"):
            raise ConfigError(f"rollout.engine=diffusion needs a masked-diffusion log-prob estimator (model.estimator="
                              f"cj_grpo or diffu_grpo), got model.estimator={estimator}")
        if lora not in (None, False):
            raise ConfigError("rollout.engine=diffusion does not serve LoRA adapters (use rollout.lora_sync=merged)")
        o = self.options
        self.device = torch.device(o.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        tok = AutoTokenizer.from_pretrained(model_path)
        self.model = self.estimator.load_model(model_path, dtype).to(self.device).eval()
        self.model.requires_grad_(False)
        self.mask_id = mask_token_id(self.model, tok, model_path)
        self.eos_ids = sorted(eos_token_ids(model_path, tok))
        self.pad_id = next(i for i in (tok.pad_token_id, tok.eos_token_id, 0) if i is not None)
        self.seed, self.version, self._calls = seed, 0, 0
        self.last_forwards: list[int] = []

    @torch.inference_mode()
    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Sample]:
        if any(len(p) == 0 for p in prompts):
            raise ValueError("DiffusionEngine.generate: empty prompt (every prompt needs at least one token)")
        if sampling.top_p < 1.0:
            raise ConfigError("rollout.engine=diffusion samples with Gumbel temperature only (rollout.top_p must be 1)")
        seed = sampling.seed if sampling.seed is not None else self.seed * 1_000_003 + self._calls
        self._calls += 1
        gen = torch.Generator(device=self.device).manual_seed(seed)
        out: list[Sample] = []
        self.last_forwards = []
        for s in range(0, len(prompts), self.options.max_batch):
            chunk = prompts[s:s + self.options.max_batch]
            ids, attn, _ = left_pad(chunk, [[]] * len(chunk), self.pad_id)
            P = max(len(p) for p in chunk)
            d = denoise(self.model, ids[:, :P].to(self.device), attn[:, :P].to(self.device), sampling.max_new_tokens,
                        self.options, sampling.temperature, self.mask_id, self.eos_ids, gen)
            self.last_forwards += d.forwards.tolist()
            out += samples_from_rows(chunk, d.tokens, d.logprobs, self.version, self.eos_ids,
                                     reveal_steps=d.reveal_steps)
        return out

    @torch.no_grad()
    def update_weights(self, named_tensors: Iterable[tuple[str, torch.Tensor]], version: int) -> None:
        from rollout.hf_engine import copy_weights

        copy_weights(self.model, named_tensors, peft_hint=False)  # this engine serves no LoRA
        self.version = version

    def load_lora(self, adapter_dir: str, version: int) -> None:
        raise ConfigError("rollout.engine=diffusion does not serve LoRA adapters (use rollout.lora_sync=merged)")

    @torch.inference_mode()
    def score(self, prompt_ids: list[list[int]], completion_ids: list[list[int]], temperature: float) -> list[list[float]]:
        """The estimator's trajectory-free log-probs (`logprobs`): what the weight-sync probe compares."""
        out: list[list[float]] = []
        for s in range(0, len(prompt_ids), self.options.max_batch):
            ps, cs = prompt_ids[s:s + self.options.max_batch], completion_ids[s:s + self.options.max_batch]
            ids, attn, P = left_pad(ps, cs, self.pad_id)
            lp = self.estimator.logprobs(self.model, ids.to(self.device), attn.to(self.device), P, temperature).cpu()
            out += [lp[i, :len(c)].tolist() for i, c in enumerate(cs)]
        return out

    def close(self) -> None:
        self.model = None
        gc.collect()
