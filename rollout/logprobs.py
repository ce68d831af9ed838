"""Log-prob estimators: how a policy model of one kind is loaded and how it scores the tokens of a batch.

One estimator per model kind, registered by name in `ESTIMATORS` (`causal`: left-to-right causal LMs, sharing
the forward pass of a prompt among the rows that repeat it; `causal_full`: the same, one full pass per row). The
trainer's update, its reference model, the weight-sync probe and the HF engine's `score` all go through the
estimator the config names, so they agree by construction, and a new model kind (e.g. a masked-diffusion LM, whose
log-probs are estimated over random maskings) is one new estimator in a new file, not an edit of the update code.

An estimator provides:
- `model_class`: the transformers Auto class that loads the model directory (`load_model` uses it);
- `peft_task_type`: the peft `TaskType` of LoRA adapters on it;
- `logprobs(model, input_ids, attention_mask, prompt_len, temperature) -> [B, L]`: log pi(completion token |
  context) at `temperature` for the batch layout below. Differentiable.

Batch layout (shared with `rollout.types.RolloutBatch` and the engines): prompts left-padded to P = `prompt_len`,
completions right-padded to L, so completion token j of every row sits at input position P + j.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from rl.registry import Registry

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def torch_dtype(name: str) -> torch.dtype:
    try:
        return DTYPES[name]
    except KeyError:
        raise ValueError(f"unknown dtype '{name}' (one of: {', '.join(DTYPES)})") from None


def position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """[B, S] positions counting only real tokens, so left padding does not shift them (pads get 0)."""
    return (attention_mask.long().cumsum(-1) - 1).clamp(min=0)


def left_pad(prompt_ids: list[list[int]], completion_ids: list[list[int]], pad_id: int
             ) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Prompts left-padded to P, completions right-padded to L: (input_ids [B, P+L], attention_mask [B, P+L], P)."""
    B = len(prompt_ids)
    P = max(len(p) for p in prompt_ids)
    L = max(1, max(len(c) for c in completion_ids))
    input_ids = torch.full((B, P + L), pad_id, dtype=torch.long)  # [B, P+L]
    attention_mask = torch.zeros((B, P + L), dtype=torch.long)  # [B, P+L]
    for i, (p, c) in enumerate(zip(prompt_ids, completion_ids)):
        input_ids[i, P - len(p):P + len(c)] = torch.tensor(list(p) + list(c), dtype=torch.long)
        attention_mask[i, P - len(p):P + len(c)] = 1
    return input_ids, attention_mask, P


@dataclass(frozen=True)
class CausalEstimator:
    """Left-to-right causal LMs (`AutoModelForCausalLM`): the exact log-prob of each completion token given the
    prompt and the completion tokens before it.

    `share_prompts` (the registered `causal`): rows that repeat a prompt, as GRPO's G samples per prompt do, run
    that prompt through the model once. The prompt pass returns its keys/values (with gradients), they are indexed
    out to every row of the group, and the completions run over them; the backward pass sums each group's
    gradients into its one prompt pass. The log-probs and gradients are those of one full forward per row (up to
    float rounding; `tests/rollout/test_shared_prompts.py`) at a fraction of the cost when prompts are a large part
    of the sequence. Falls back to the full forward when no prompt repeats, under gradient checkpointing (which
    turns the cache off), inside DDP/FSDP wrappers (whose hooks expect one forward per backward), and for models
    whose cache cannot be re-indexed. `causal_full`: always the full forward."""

    model_class: str = "AutoModelForCausalLM"
    peft_task_type: str = "CAUSAL_LM"
    share_prompts: bool = True

    def load_model(self, path, dtype: str = "float32", **kwargs) -> torch.nn.Module:
        import transformers

        return getattr(transformers, self.model_class).from_pretrained(path, dtype=torch_dtype(dtype), **kwargs)

    def logprobs(self, model, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int,
                 temperature: float) -> torch.Tensor:
        """[B, L] log pi(completion token | prefix) at `temperature` (0 means 1: greedy scores the raw
        distribution). Values at padded completion positions are meaningless (mask them with the response mask)."""
        T = temperature if temperature > 0 else 1.0
        groups = prompt_groups(input_ids, attention_mask, prompt_len) if self.share_prompts and _can_share(model) \
            else None
        logits = None
        if groups is not None:
            logits = _shared_prompt_logits(model, input_ids, attention_mask, prompt_len, *groups)  # [B, L, V]
        if logits is None:
            logits = model(input_ids=input_ids, attention_mask=attention_mask,
                           position_ids=position_ids(attention_mask), use_cache=False).logits  # [B, P+L, V]
            logits = logits[:, prompt_len - 1:-1]  # [B, L, V] position t predicts token t+1
        targets = input_ids[:, prompt_len:]  # [B, L]
        return torch.log_softmax(logits.float() / T, dim=-1).gather(-1, targets[..., None]).squeeze(-1)  # [B, L]


def prompt_groups(input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int
                  ) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(first [U], inverse [B]) when some of the B rows share a (left-padded) prompt: `first[u]` is a row holding
    distinct prompt u and `inverse[i]` the prompt of row i; None when every prompt is distinct (nothing to share)."""
    P = prompt_len
    if P == 0 or len(input_ids) < 2:
        return None
    key = torch.where(attention_mask[:, :P].bool(), input_ids[:, :P], -1)  # [B, P] pads differ from every token id
    uniq, inverse = torch.unique(key, dim=0, return_inverse=True)
    if len(uniq) == len(input_ids):
        return None
    rows = torch.arange(len(inverse))
    first = torch.full((len(uniq),), len(inverse), dtype=torch.long).scatter_reduce(0, inverse, rows, "amin")
    return first, inverse


def _can_share(model) -> bool:
    from torch.nn.parallel import DistributedDataParallel

    try:
        from torch.distributed.fsdp import FSDPModule
    except ImportError:  # pragma: no cover - older torch
        FSDPModule = ()
    return not (isinstance(model, (DistributedDataParallel, FSDPModule))
                or getattr(model, "is_gradient_checkpointing", False))


def _shared_prompt_logits(model, input_ids, attention_mask, P: int, first: torch.Tensor, inverse: torch.Tensor
                          ) -> torch.Tensor | None:
    """[B, L, V] completion logits (position j predicts completion token j) from one pass over the distinct prompts
    and one over the completions on their re-indexed keys/values; None if the model returns no re-indexable cache."""
    first, inverse = first.to(input_ids.device), inverse.to(input_ids.device)
    p_mask = attention_mask[first, :P]  # [U, P]
    out = model(input_ids=input_ids[first, :P], attention_mask=p_mask, position_ids=position_ids(p_mask),
                use_cache=True)
    cache = getattr(out, "past_key_values", None)
    if cache is None or not hasattr(cache, "reorder_cache"):
        return None
    cache.reorder_cache(inverse)  # [U, ...] -> [B, ...]: index_select, differentiable
    rest = model(input_ids=input_ids[:, P:], attention_mask=attention_mask,
                 position_ids=position_ids(attention_mask)[:, P:], past_key_values=cache, use_cache=True).logits
    return torch.cat([out.logits[:, -1:][inverse], rest[:, :-1]], dim=1)  # [B, L, V]


ESTIMATORS: Registry = Registry("log-prob estimator", providers=("rollout.diffusion_logprobs",))
ESTIMATORS.register("causal")(CausalEstimator())
ESTIMATORS.register("causal_full")(CausalEstimator(share_prompts=False))


def batch_logprobs(est, model, batch, device, temperature: float, iteration: int = 0) -> torch.Tensor:
    """[b, L] the estimator's log-probs of a `RolloutBatch`: its `batch_logprobs` if it has one (masked-diffusion
    estimators read the batch's trajectory and the inner iteration), else `logprobs` on the padded ids."""
    if hasattr(est, "batch_logprobs"):
        return est.batch_logprobs(model, batch, device, temperature, iteration)
    return est.logprobs(model, batch.input_ids.to(device), batch.attention_mask.to(device), batch.prompt_len,
                        temperature)


def policy_logprobs(model, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_len: int,
                    temperature: float) -> torch.Tensor:
    """The `causal` estimator's log-probs (kept as a plain function for tests and the causal engines)."""
    return ESTIMATORS.get("causal").logprobs(model, input_ids, attention_mask, prompt_len, temperature)
