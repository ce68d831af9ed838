"""`trainer.gradient_checkpointing`: the update recomputes activations in the backward pass (each decoder layer runs
forward twice) and gives the same losses, gradients and updated weights as without it, full fine-tuning and LoRA."""
import pytest
import torch

from rl.config import load_config
from rl.zoo import resolve_model_path
from rollout.types import Sample
from trainers.grpo.batch import collate
from trainers.grpo.policy import build_policy
from trainers.grpo.update import update, whole


def _batch(pad_id: int, vocab: int):
    g = torch.Generator().manual_seed(0)
    samples = []
    for i in range(6):
        p = torch.randint(4, vocab, (3 + i % 3,), generator=g).tolist()
        c = torch.randint(4, vocab, (2 + i % 4,), generator=g).tolist()
        samples.append(Sample(prompt_ids=p, completion_ids=c, logprobs=[-3.0] * len(c), versions=[0] * len(c)))
    adv = torch.tensor([1.0, -1.0, 0.5, -0.5, 2.0, -2.0])
    return collate(samples, adv, adv.clone(), torch.arange(6) // 2, pad_id)


def _run(overrides: list[str]):
    cfg = load_config("configs/grpo_tiny.yaml", ["model.path=random-3m", "trainer.micro_batch_size=4",
                                                 "trainer.lr=1e-2", *overrides])
    torch.manual_seed(0)  # the same LoRA init either way
    policy = build_policy(cfg, resolve_model_path("random-3m"), torch.device("cpu"))
    layer = policy.model.get_decoder().layers[0] if not cfg.model.lora.enabled else \
        policy.model.base_model.model.model.layers[0]
    calls = []
    layer.register_forward_pre_hook(lambda *a: calls.append(1))  # a pre-hook: the recompute may stop early
    batch = _batch(policy.tokenizer.pad_token_id, len(policy.tokenizer))
    metrics = update(policy, whole(batch), cfg)
    trained = {k: v.detach().clone() for k, v in policy.model.named_parameters() if v.requires_grad}
    return metrics, trained, len(calls), policy.model


@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_same_update_with_and_without_checkpointing(lora):
    extra = ["model.lora.enabled=true", "model.lora.r=4"] if lora else []
    m0, w0, calls0, model0 = _run(extra)
    m1, w1, calls1, model1 = _run([*extra, "trainer.gradient_checkpointing=true"])
    assert not model0.is_gradient_checkpointing and model1.is_gradient_checkpointing
    assert calls0 == 2 and calls1 == 4  # 2 micro-batches; with checkpointing each layer forward runs again in backward
    for k in ("loss/pg", "actor/grad_norm", "actor/clipfrac"):
        assert m1[k] == pytest.approx(m0[k], rel=1e-5, abs=1e-7), k
    assert w0.keys() == w1.keys() and len(w0) > 0
    for k in w0:
        assert torch.allclose(w0[k], w1[k], atol=1e-6, rtol=1e-5), k
