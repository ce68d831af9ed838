"""The `btm_ensemble` rollout engine: Branch-Train-Merge's ensemble of expert LMs, generating like one model.

At each step the next-token distribution is the posterior-weighted mixture of the experts' (hadasah/btm,
`ensemble_eval_lm.py`; ALGORITHMS.md section 3):

    p(x_t | x_<t) = Σ_j p_j(x_t | x_<t) · P(j | x_<t),     P(j | x_<t) ∝ p_j(x_<t) · P(j)

where p_j(x_<t) is expert j's likelihood of everything so far (the prompt's tokens after the first, then the
completion), so the posterior sharpens as the sequence reveals its domain. The prior P(j) is estimated on a few dev
sequences of the target domain as an exponential moving average of their posteriors (α = 0.3 in BTM,
`estimate_prior`) and then frozen. `top_k` keeps only the k experts with the largest posterior at each step
(renormalised). Temperature scales each expert's logits before mixing; the posterior always uses the experts'
temperature-1 likelihoods.

The engine's model directory is an ensemble directory (written by `write_ensemble_dir`): `ensemble.json` (expert
directories, prior, top_k), the experts' tokenizer and a copy of the first expert's config.json (so jobs that read a
model directory's tokenizer and position limit accept it). It generates and scores; it has no weights of its own to
update (`update_weights` raises): use it for evaluation and as a fixed rollout policy.
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from pydantic import Field

from rl.config import Section
from rl.errors import OrchardError
from rollout.logprobs import ESTIMATORS, left_pad, position_ids
from rollout.types import Sample, SamplingParams, samples_from_rows

ENSEMBLE_FILE = "ensemble.json"


class EnsembleOptions(Section):
    """Options of the `btm_ensemble` engine (`rollout.btm_ensemble.*`)."""

    top_k: int | None = Field(None, ge=1)
    """Mix only the k experts with the largest posterior at each step (None: the ensemble.json value, else all)."""
    prior: list[float] | None = None
    """A frozen prior over the experts (None: `prior_of`'s, else the ensemble.json `prior`, else uniform)."""
    prior_of: str | None = None
    """Use the prior the BTM job estimated on this domain's dev sequences (a key of ensemble.json `priors`)."""
    max_batch: int = Field(256, ge=1)
    """Largest batch generated at once."""


# --- the math (pure functions) -----------------------------------------------------------------------------------
def log_posterior(log_prior: torch.Tensor, seq_loglik: torch.Tensor) -> torch.Tensor:
    """[B, J] log P(j | x_<t) from a [J] log prior and [B, J] experts' log-likelihoods of the sequences so far."""
    return torch.log_softmax(log_prior[None, :] + seq_loglik, dim=-1)


def mixture_logprobs(expert_logp: torch.Tensor, log_post: torch.Tensor, top_k: int | None = None) -> torch.Tensor:
    """[B, V] log Σ_j P(j|x_<t) p_j(x_t|x_<t) from [J, B, V] expert log-probs and a [B, J] log posterior; with
    `top_k`, only the k most probable experts per row, their posterior renormalised."""
    if top_k is not None and top_k < log_post.shape[1]:
        keep = torch.zeros_like(log_post, dtype=torch.bool).scatter(1, log_post.topk(top_k, dim=1).indices, True)
        log_post = torch.log_softmax(log_post.masked_fill(~keep, float("-inf")), dim=-1)  # [B, J]
    return torch.logsumexp(log_post.T[:, :, None] + expert_logp, dim=0)  # [B, V]


def estimate_prior(seq_loglik: torch.Tensor, alpha: float = 0.3, init: torch.Tensor | None = None) -> torch.Tensor:
    """BTM's prior from dev sequences: starting from `init` (uniform), for each sequence n in order,
    prior <- (1 - alpha) * prior + alpha * P(j | x^n), the posterior of the whole sequence under the current prior.
    `seq_loglik`: [N, J] experts' log-likelihoods of the N dev sequences. Returns the [J] prior (then frozen)."""
    J = seq_loglik.shape[1]
    prior = torch.full((J,), 1.0 / J, dtype=torch.float64) if init is None else init.double()
    for ll in seq_loglik.double():
        post = torch.softmax(prior.log() + ll, dim=0)
        prior = (1 - alpha) * prior + alpha * post
    return (prior / prior.sum()).float()


def write_ensemble_dir(out: Path, experts: list[str], prior: list[float] | None = None, top_k: int | None = None,
                       extra: dict | None = None) -> Path:
    """An ensemble directory for `experts` (HF model directories of one tokenizer and architecture)."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    first = Path(experts[0])
    for f in first.iterdir():
        if f.name == "config.json" or f.name.startswith(("tokenizer", "special_tokens")) or f.name == "generation_config.json":
            shutil.copy(f, out / f.name)
    (out / ENSEMBLE_FILE).write_text(json.dumps({"experts": [str(Path(e).resolve()) for e in experts],
                                                 "prior": prior, "top_k": top_k, **(extra or {})}, indent=2))
    return out


# --- the engine --------------------------------------------------------------------------------------------------
class EnsembleEngine:
    """The `btm_ensemble` engine over an ensemble directory (see the module docstring)."""

    Options = EnsembleOptions

    def __init__(self, model_path: str, *, dtype: str = "float32", seed: int = 0, lora: str | bool | None = None,
                 options: EnsembleOptions | None = None, estimator: str = "causal"):
        from transformers import AutoTokenizer

        from rollout.hf_engine import eos_token_ids

        o = options or EnsembleOptions()
        spec_file = Path(model_path) / ENSEMBLE_FILE
        if not spec_file.is_file():
            raise OrchardError(f"rollout.engine=btm_ensemble: {model_path} is not an ensemble directory (no "
                               f"{ENSEMBLE_FILE}; `rl train configs/btm_tiny.yaml` writes them under <run>/ensemble/)")
        if lora:
            raise OrchardError("rollout.engine=btm_ensemble does not load LoRA adapters (merge them into the experts)")
        spec = json.loads(spec_file.read_text())
        self.experts = [str(e) for e in spec["experts"]]
        est = ESTIMATORS.get(estimator)
        self.models = [est.load_model(e, dtype).eval().requires_grad_(False) for e in self.experts]
        J = len(self.models)
        priors = spec.get("priors") or {}
        if o.prior_of is not None and o.prior_of not in priors:
            raise OrchardError(f"rollout.btm_ensemble.prior_of={o.prior_of}: {spec_file} has priors for "
                               f"{', '.join(priors) or 'no domain'}")
        prior = (o.prior if o.prior is not None else priors[o.prior_of] if o.prior_of is not None
                 else spec.get("prior") or [1.0 / J] * J)
        if len(prior) != J or min(prior) < 0 or sum(prior) <= 0:
            raise OrchardError(f"btm_ensemble prior {prior}: needs {J} non-negative weights (one per expert) with a "
                               f"positive sum ({spec_file})")
        self.log_prior = torch.tensor(prior, dtype=torch.float32).div(sum(prior)).log()  # [J]
        self.top_k = o.top_k if o.top_k is not None else spec.get("top_k")
        tok = AutoTokenizer.from_pretrained(model_path)
        self.eos_ids = eos_token_ids(model_path, tok)
        self.pad_id = next(i for i in (tok.pad_token_id, tok.eos_token_id, 0) if i is not None)
        self.max_batch, self.seed, self.version, self._calls = o.max_batch, seed, 0, 0

    def _forward(self, ids, attn, pos, past=None):
        outs = [m(input_ids=ids, attention_mask=attn, position_ids=pos, past_key_values=p, use_cache=True)
                for m, p in zip(self.models, past or [None] * len(self.models))]
        return torch.stack([o.logits.float() for o in outs]), [o.past_key_values for o in outs]  # [J, B, S, V]

    @torch.inference_mode()
    def sequence_loglik(self, prompt_ids: list[list[int]], completion_ids: list[list[int]]) -> torch.Tensor:
        """[B, J] each expert's log-likelihood of prompt + completion (every token after the first)."""
        ids, attn, _ = left_pad(prompt_ids, completion_ids, self.pad_id)
        logits, _ = self._forward(ids, attn, position_ids(attn))  # [J, B, S, V]
        lp = torch.log_softmax(logits[:, :, :-1], dim=-1).gather(-1, ids[None, :, 1:, None].expand(
            len(self.models), -1, -1, 1)).squeeze(-1)  # [J, B, S-1]
        mask = (attn[:, 1:] * attn[:, :-1]).float()  # [B, S-1]: a real token after a real token
        return (lp * mask[None]).sum(-1).T  # [B, J]

    def generate(self, prompts: list[list[int]], sampling: SamplingParams) -> list[Sample]:
        if any(len(p) == 0 for p in prompts):
            raise ValueError("EnsembleEngine.generate: empty prompt (every prompt needs at least one token)")
        seed = sampling.seed if sampling.seed is not None else self.seed * 1_000_003 + self._calls
        self._calls += 1
        gen = torch.Generator().manual_seed(seed)
        out: list[Sample] = []
        for start in range(0, len(prompts), self.max_batch):
            out += self._generate_chunk(prompts[start:start + self.max_batch], sampling, gen)
        return out

    @torch.inference_mode()
    def _generate_chunk(self, prompts: list[list[int]], sp: SamplingParams, gen: torch.Generator) -> list[Sample]:
        B, N, J = len(prompts), sp.max_new_tokens, len(self.models)
        ids, attn, P = left_pad(prompts, [[]] * B, self.pad_id)
        ids, attn = ids[:, :P], attn[:, :P]  # [B, P]
        pos = position_ids(attn)
        logits, past = self._forward(ids, attn, pos)  # [J, B, P, V]
        lp_all = torch.log_softmax(logits[:, :, :-1], dim=-1)
        prompt_lp = lp_all.gather(-1, ids[None, :, 1:, None].expand(J, -1, -1, 1)).squeeze(-1)  # [J, B, P-1]
        loglik = (prompt_lp * (attn[:, 1:] * attn[:, :-1]).float()[None]).sum(-1).T  # [B, J] p_j(prompt)
        step_logits = logits[:, :, -1]  # [J, B, V]
        next_pos = pos[:, -1:] + 1
        eos = torch.tensor(sorted(self.eos_ids), dtype=torch.long)
        tokens = torch.full((B, N), self.pad_id, dtype=torch.long)
        logps = torch.zeros((B, N))
        lengths = torch.full((B,), N, dtype=torch.long)
        done = torch.zeros(B, dtype=torch.bool)
        for t in range(N):
            expert_lp1 = torch.log_softmax(step_logits, dim=-1)  # [J, B, V] temperature 1: the likelihoods
            post = log_posterior(self.log_prior, loglik)  # [B, J]
            if sp.temperature > 0:
                mix = mixture_logprobs(torch.log_softmax(step_logits / sp.temperature, dim=-1), post, self.top_k)
                if sp.top_p < 1.0:
                    from rollout.hf_engine import top_p_filter

                    mix = top_p_filter(mix, sp.top_p)
                tok = torch.multinomial(mix.exp(), 1, generator=gen).squeeze(-1)  # [B]
            else:
                mix = mixture_logprobs(expert_lp1, post, self.top_k)  # [B, V]
                tok = mix.argmax(-1)
            tok = tok.masked_fill(done, self.pad_id)
            tokens[:, t] = tok
            logps[:, t] = mix.gather(-1, tok[:, None]).squeeze(-1)
            loglik = loglik + torch.where(done[:, None], 0.0, expert_lp1.gather(-1, tok[None, :, None].expand(
                J, -1, 1)).squeeze(-1).T)  # [B, J]
            stopped = torch.isin(tok, eos) & ~done
            lengths = torch.where(stopped, t + 1, lengths)
            done |= stopped
            if t == N - 1 or bool(done.all()):
                break
            attn = torch.cat([attn, torch.ones((B, 1), dtype=attn.dtype)], dim=1)
            logits, past = self._forward(tok[:, None], attn, next_pos, past)
            step_logits = logits[:, :, -1]
            next_pos = next_pos + 1
        return samples_from_rows(prompts, tokens, logps, self.version, self.eos_ids, lengths.tolist())

    @torch.inference_mode()
    def score(self, prompt_ids, completion_ids, temperature: float) -> list[list[float]]:
        """Mixture log-probs of the given completion tokens (the posterior updated token by token)."""
        out = []
        for p, c in zip(prompt_ids, completion_ids):
            lps = []
            for k in range(len(c)):
                ll = self.sequence_loglik([p], [c[:k]]) if k else self.sequence_loglik([p], [[]])
                ids, attn, _ = left_pad([p], [c[:k]], self.pad_id)
                ids, attn = ids[:, :len(p) + k], attn[:, :len(p) + k]
                logits, _ = self._forward(ids, attn, position_ids(attn))
                t = temperature if temperature > 0 else 1.0
                mix = mixture_logprobs(torch.log_softmax(logits[:, :, -1] / t, -1), log_posterior(self.log_prior, ll),
                                       self.top_k)
                lps.append(mix[0, c[k]].item())
            out.append(lps)
        return out

    def update_weights(self, named_tensors, version: int) -> None:
        raise OrchardError("the btm_ensemble engine holds fixed experts: it cannot take trained weights (use it for "
                           "evaluation or as a fixed rollout policy; train a merged model with the hf engine)")

    def load_lora(self, adapter_dir: str, version: int) -> None:
        raise OrchardError("the btm_ensemble engine does not load LoRA adapters")

    def close(self) -> None:
        self.models = []
