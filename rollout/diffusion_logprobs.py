"""Log-prob estimators for masked-diffusion LMs, registered in `rollout.logprobs.ESTIMATORS`: `diffu_grpo` (d1)
and `cj_grpo` (EOSER-ASS-RL's CJ-GRPO). Formulas: `../shared/specs/ALGORITHMS.md` section 2.

A masked-diffusion LM has no tractable log pi(completion | prompt); RL estimates it:
- `diffu_grpo` (d1 `diffu_grpo_trainer._get_per_token_logps`): ONE forward pass with the whole completion
  masked and each prompt token masked with probability p = 0.15; log pi(o_k | q) ~= log softmax(f(q~, MASK^L))_k[o_k]
  (mean field, x_T -> x_0). The prompt mask is drawn from a seed fixed by the inner iteration (mu) and the row's
  tokens, so the old, reference and current passes of one iteration share it and every iteration draws a fresh
  one (`mask_per_iteration`: the GRPO update computes old/ref log-probs once per iteration).
- `cj_grpo`: the per-step likelihood along the rollout trajectory the `diffusion` engine recorded: the token
  revealed at step s is scored given the state x_{s-1} (the canvas with every position revealed at step >= s
  masked), no prompt masking. S forwards per sample. Its values are the same quantity as the engine's behaviour
  log-probs (same contexts, same temperature), so the ratio pi_theta / pi_behav is meaningful.

What the GRPO loss then does (and what the papers' code leaves out):
- the ratio is per token; for `cj_grpo` every token of a step shares its state, so this is the paper's per-step
  ratio. Each estimator's `loss_weights(batch, eos_ids)` multiplies the response mask before the update, and the
  GRPO aggregation reads the mask's values as token weights: `cj_grpo` weights the token revealed at step s by
  1/|U_s| (`step_weights`), so seq_mean_token_mean is CJ-GRPO's (1/S) sum_s (1/|U_s|) sum_{k in U_s} (with ASS the
  one-token first step weighs as much as the half-canvas last one, as in the paper, not 1/L of it);
- the choice of *positions* (top-k confidence) is outside the likelihood, as in both papers' code;
- post-EOS canvas positions: `cj_grpo` keeps them in the loss (as CJ-GRPO's U_s), because they are part of the
  states x_s the later steps are conditioned on; `diffu_grpo` stops at the first EOS, as d1 does
  (its `loss_weights` is `until_first_eos`). Either way the forward passes see the whole canvas.

Both estimators' plain `logprobs(model, input_ids, attention_mask, prompt_len, temperature)` (what the
weight-sync probe and `engine.score` call: no trajectory) is deterministic: `cj_grpo` scores every completion token
from the fully masked completion, `diffu_grpo` its iteration-0 estimate.

Models load with `AutoModelForCausalLM` (a Llama/Qwen2 with `is_causal: false` in its config runs bidirectionally
in transformers 5.19). LLaDA/Dream checkpoints ship their own modelling code: their directories carry `auto_map`
in config.json, and load with `trust_remote_code=True` only when `ORCHARD_TRUST_REMOTE_CODE=1` is set (untested
here: no hub access).
"""
from __future__ import annotations

import json
import os
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch

from rl.errors import ConfigError
from rollout.logprobs import ESTIMATORS, position_ids, torch_dtype

P_MASK_PROMPT = 0.15
"""d1's `p_mask_prompt`: the probability of masking each prompt token in diffu-GRPO's one-step estimate."""


def mask_token_id(model, tokenizer=None, where: str = "model.path") -> int:
    """The mask token's id: the model config's `mask_token_id`, else the tokenizer's; a named error if neither."""
    config = getattr(getattr(model, "module", model), "config", None)  # DDP wraps the model in `.module`
    mid = getattr(config, "mask_token_id", None)
    if mid is None and tokenizer is not None:
        mid = tokenizer.mask_token_id
    if mid is None:
        raise ConfigError(f"{where}: the model has no mask token (neither config.json `mask_token_id` nor a tokenizer "
                          f"mask_token): it is not a masked-diffusion LM (rollout.engine=diffusion and the cj_grpo / "
                          f"diffu_grpo estimators need one, e.g. the zoo's tiny-mdlm)")
    return int(mid)


def denoiser_logits(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, mask_id: int) -> torch.Tensor:
    """[B, S, V] float logits of the bidirectional model at every position, the MASK token's set to -inf (the
    model never proposes MASK: MDLM's SUBS parameterisation). Shared by the engine and the estimators."""
    out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids(attention_mask),
                use_cache=False)
    logits = out.logits.float()  # [B, S, V]
    logits[..., mask_id] = float("-inf")
    return logits


def row_seed(ids: torch.Tensor, iteration: int) -> int:
    """A seed fixed by one row's real tokens and the inner iteration (the same row gets the same prompt mask in the
    old, reference and current passes of an iteration, whatever the micro-batch it sits in)."""
    return zlib.crc32(ids.cpu().numpy().astype("int64").tobytes()) * 131 + iteration


def prompt_mask(input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int, iteration: int,
                p: float = P_MASK_PROMPT) -> torch.Tensor:
    """[B, P] bool: which real prompt tokens diffu-GRPO masks in `iteration` (each with probability p)."""
    B = input_ids.shape[0]
    out = torch.zeros((B, prompt_len), dtype=torch.bool)
    for i in range(B):
        real = attention_mask[i].bool()
        g = torch.Generator().manual_seed(row_seed(input_ids[i][real], iteration))
        in_prompt = real[:prompt_len].nonzero().squeeze(-1)  # the real prompt columns, whatever the left padding
        out[i, in_prompt] = torch.rand(len(in_prompt), generator=g) < p
    return out.to(input_ids.device)


def gather_logprobs(logits: torch.Tensor, targets: torch.Tensor, temperature: float) -> torch.Tensor:
    """[B, L] log softmax(logits / T)[target] (T = 0 means 1, as greedy scores the raw distribution)."""
    T = temperature if temperature > 0 else 1.0
    return torch.log_softmax(logits / T, -1).gather(-1, targets[..., None]).squeeze(-1)


@dataclass(frozen=True)
class MaskedDiffusionEstimator:
    """What both masked-diffusion estimators share: loading and the one-step (fully masked completion) estimate."""

    model_class: str = "AutoModelForCausalLM"
    peft_task_type: str = "CAUSAL_LM"
    p_mask_prompt: float = 0.0
    mask_per_iteration: bool = False
    """True: the GRPO update scores old / ref / current with a fresh mask per inner iteration (d1)."""
    behav_comparable: bool = True
    """Whether the engine's behaviour log-probs estimate the same quantity (False: the update recomputes old ones)."""

    def load_model(self, path, dtype: str = "float32", **kwargs) -> torch.nn.Module:
        import transformers

        cfg = json.loads((Path(path) / "config.json").read_text())
        if cfg.get("auto_map"):
            if os.environ.get("ORCHARD_TRUST_REMOTE_CODE") != "1":
                raise ConfigError(f"model.path={path}: the model ships its own code (config.json auto_map, e.g. "
                                  f"LLaDA/Dream); set ORCHARD_TRUST_REMOTE_CODE=1 to load it with trust_remote_code")
            kwargs["trust_remote_code"] = True
        return getattr(transformers, self.model_class).from_pretrained(path, dtype=torch_dtype(dtype), **kwargs)

    def logprobs(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int,
                 temperature: float, iteration: int = 0) -> torch.Tensor:
        """[B, L] log-probs of the completion tokens from one forward pass with the completion fully masked (and,
        with p_mask_prompt > 0, prompt tokens masked by `iteration`'s seed)."""
        mid = mask_token_id(model)
        x = input_ids.clone()  # [B, P+L]
        x[:, prompt_len:] = mid
        if self.p_mask_prompt > 0:
            pm = prompt_mask(input_ids, attention_mask, prompt_len, iteration, self.p_mask_prompt)  # [B, P]
            x[:, :prompt_len] = torch.where(pm, mid, x[:, :prompt_len])
        attn = attention_mask.clone()
        attn[:, prompt_len:] = 1  # the model sees every canvas position, as when it generated
        logits = denoiser_logits(model, x, attn, mid)[:, prompt_len:]  # [B, L, V]
        return gather_logprobs(logits, input_ids[:, prompt_len:], temperature)


@dataclass(frozen=True)
class DiffuGRPOEstimator(MaskedDiffusionEstimator):
    """d1's one-step estimate with prompt masking; see the module docstring."""

    p_mask_prompt: float = P_MASK_PROMPT
    mask_per_iteration: bool = True
    behav_comparable: bool = False

    def loss_weights(self, batch, eos_ids) -> torch.Tensor:
        """[B, L] the canvas positions that train: up to and including the first EOS (d1's completion mask)."""
        return until_first_eos(batch.input_ids[:, batch.prompt_len:], eos_ids)

    def batch_logprobs(self, model, batch, device, temperature: float, iteration: int = 0) -> torch.Tensor:
        return self.logprobs(model, batch.input_ids.to(device), batch.attention_mask.to(device), batch.prompt_len,
                             temperature, iteration)


def until_first_eos(completion: torch.Tensor, eos_ids) -> torch.Tensor:
    """[B, L] float: 1 at canvas positions up to and including the row's first EOS, 0 after it (a row with no EOS is
    all 1). d1's `completion_mask`: diffu-GRPO's one-step estimate trains the answer, not the EOS fill after it."""
    is_eos = torch.isin(completion, torch.tensor(sorted(eos_ids), dtype=completion.dtype, device=completion.device))
    after = (is_eos.long().cumsum(-1) - is_eos.long()) > 0  # [B, L] strictly after the first EOS
    return (~after).float()


def step_weights(reveal_steps: torch.Tensor) -> torch.Tensor:
    """[B, L] 1/|U_s| for the token revealed at step s (U_s: the row's positions revealed at s), 0 where the reveal step
    is -1 (padding). A row's weighted token mean is then CJ-GRPO's (1/S) sum_s (1/|U_s|) sum_{k in U_s}."""
    S = int(reveal_steps.max()) + 1
    steps = reveal_steps.clamp(min=0)  # [B, L]
    counts = torch.zeros((reveal_steps.shape[0], max(S, 1)), device=reveal_steps.device)  # [B, S]
    counts.scatter_add_(1, steps, (reveal_steps >= 0).float())
    w = 1.0 / counts.gather(1, steps).clamp(min=1)  # [B, L]
    return torch.where(reveal_steps >= 0, w, torch.zeros_like(w))


def trajectory_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int,
                        reveal_steps: torch.Tensor, temperature: float) -> torch.Tensor:
    """[B, L] CJ-GRPO per-step log-probs: the token at completion position k, revealed at step s = reveal_steps[:, k],
    scored by log softmax(f(x_{s-1}) / T)_k, where x_{s-1} masks every position revealed at step >= s. One forward
    per step (S = max step + 1). Positions with reveal step -1 (padding) get 0."""
    mid = mask_token_id(model)
    P = prompt_len
    attn = attention_mask.clone()
    attn[:, P:] = 1
    out = torch.zeros(reveal_steps.shape, device=input_ids.device)  # [B, L]
    S = int(reveal_steps.max()) + 1
    for s in range(S):
        now = reveal_steps == s  # [B, L]
        if not bool(now.any()):
            continue
        x = input_ids.clone()  # [B, P+L]
        x[:, P:] = torch.where(reveal_steps >= s, mid, input_ids[:, P:])  # state x_{s-1}
        logits = denoiser_logits(model, x, attn, mid)[:, P:]  # [B, L, V]
        out = torch.where(now, gather_logprobs(logits, input_ids[:, P:], temperature), out)
    return out


def _reveal_steps(batch) -> torch.Tensor:
    """The batch's denoising trajectory [B, L] (what cj_grpo scores and weights), or a named error without one."""
    if batch.reveal_steps is None:
        raise ValueError("cj_grpo: the batch has no denoising trajectory (reveal_steps): generate it with "
                         "rollout.engine=diffusion")
    return batch.reveal_steps


@dataclass(frozen=True)
class CJGRPOEstimator(MaskedDiffusionEstimator):
    """CJ-GRPO's per-step likelihood along the stored trajectory; see the module docstring."""

    def loss_weights(self, batch, eos_ids) -> torch.Tensor:
        """[B, L] 1/|U_s| per token (`step_weights`): the loss is the mean over denoising steps of each step's mean."""
        return step_weights(_reveal_steps(batch))

    def batch_logprobs(self, model, batch, device, temperature: float, iteration: int = 0) -> torch.Tensor:
        return trajectory_logprobs(model, batch.input_ids.to(device), batch.attention_mask.to(device),
                                   batch.prompt_len, _reveal_steps(batch).to(device), temperature)


ESTIMATORS.register("diffu_grpo")(DiffuGRPOEstimator())
ESTIMATORS.register("cj_grpo")(CJGRPOEstimator())
