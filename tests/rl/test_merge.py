"""`rl merge`: each method produces the formula it names, on tiny Llamas written here (mergekit for full
checkpoints, peft add_weighted_adapter for LoRA experts), and bad requests fail naming the directory or option."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from rl.merge import MergeError, MergeSpec, merge
from rl.zoo import ArchSpec, build_tokenizer, init_random_model

TINY = ArchSpec(hidden=64, layers=1, heads=1, intermediate=64, max_positions=32)


def weights_of(d) -> dict[str, torch.Tensor]:
    out = {}
    for f in sorted(d.glob("*.safetensors")):
        out.update(load_file(f))
    return out


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    """A base and two experts: the base plus a random task vector each (the same architecture)."""
    root = tmp_path_factory.mktemp("merge")
    tok = build_tokenizer()
    base = init_random_model(TINY, tok, seed=0)
    dirs = {"base": root / "base"}
    base.save_pretrained(dirs["base"])
    tok.save_pretrained(dirs["base"])
    for i in (1, 2):
        m = init_random_model(TINY, tok, seed=0)
        g = torch.Generator().manual_seed(i)
        with torch.no_grad():
            for p in m.parameters():
                p.add_(0.1 * torch.randn(p.shape, generator=g))
        dirs[f"e{i}"] = root / f"e{i}"
        m.save_pretrained(dirs[f"e{i}"])
        tok.save_pretrained(dirs[f"e{i}"])
    return root, dirs, {k: weights_of(v) for k, v in dirs.items()}


def run(root, dirs, name, **kw):
    out = root / name
    merge(MergeSpec(experts=(str(dirs["e1"]), str(dirs["e2"])), **kw), out)
    return weights_of(out)


def test_linear_is_the_mean(models):
    root, dirs, W = models
    got = run(root, dirs, "linear", method="linear")
    for k, v in got.items():
        torch.testing.assert_close(v, 0.5 * (W["e1"][k] + W["e2"][k]), rtol=0, atol=1e-6)


def test_weighted_is_the_normalised_weighted_mean(models):
    root, dirs, W = models
    got = run(root, dirs, "weighted", method="weighted", weights=(3.0, 1.0))
    for k, v in got.items():
        torch.testing.assert_close(v, 0.75 * W["e1"][k] + 0.25 * W["e2"][k], rtol=0, atol=1e-6)


def test_task_arithmetic_adds_scaled_task_vectors(models):
    root, dirs, W = models
    got = run(root, dirs, "ta", method="task_arithmetic", base=str(dirs["base"]), weights=(1.0, 0.5), lam=0.8)
    for k, v in got.items():
        b = W["base"][k]
        want = b + 0.8 * (1.0 * (W["e1"][k] - b) + 0.5 * (W["e2"][k] - b))
        torch.testing.assert_close(v, want, rtol=0, atol=1e-6)


def ties_reference(base, t1, t2, density):
    """TIES by hand on one tensor: trim each task vector to its top-density magnitudes, elect the sign of the
    sum, average the agreeing entries (weights 1)."""
    def trim(t):
        k = max(1, int(density * t.numel()))
        keep = torch.zeros(t.numel())
        keep[torch.argsort(t.abs().reshape(-1).float(), descending=True)[:k]] = 1
        return t * keep.reshape(t.shape)

    d = torch.stack([trim(t1), trim(t2)])
    sign = torch.where(d.sum(0) >= 0, 1.0, -1.0)
    agree = (d.sign() == sign).float()
    num, den = (d * agree).sum(0), agree.sum(0)
    return base + num / torch.where(den == 0, torch.ones_like(den), den)


def test_ties_is_trim_elect_disjoint_mean(models):
    root, dirs, W = models
    got = run(root, dirs, "ties", method="ties", base=str(dirs["base"]), density=0.3)
    for k, v in got.items():
        b = W["base"][k]
        torch.testing.assert_close(v, ties_reference(b, W["e1"][k] - b, W["e2"][k] - b, 0.3), rtol=0, atol=1e-6)


def test_dare_drops_and_rescales_each_task_vector(models):
    """With one expert, DARE's result minus the base is τ ⊙ m · (|τ|_1 / |τ ⊙ m|_1) for a random 0/1 mask m keeping
    about `density` of the entries: every entry is 0 or τ times one common rescale factor per tensor."""
    root, dirs, W = models
    out = root / "dare1"
    merge(MergeSpec(method="dare", experts=(str(dirs["e1"]),), base=str(dirs["base"]), density=0.4, seed=3), out)
    got = weights_of(out)
    kept_total = n_total = 0
    for k, v in got.items():
        tau = W["e1"][k] - W["base"][k]
        delta = v - W["base"][k]
        kept = delta.abs() > 1e-7
        scale = tau.abs().sum() / tau[kept].abs().sum()
        torch.testing.assert_close(delta[kept], tau[kept] * scale, rtol=1e-4, atol=1e-6)
        kept_total += int(kept.sum())
        n_total += kept.numel()
    assert 0.35 < kept_total / n_total < 0.45  # Bernoulli(0.4) over ~40k entries


def test_dare_is_seeded(models):
    root, dirs, W = models
    a = run(root, dirs, "dare_a", method="dare", base=str(dirs["base"]), density=0.5, seed=7)
    b = run(root, dirs, "dare_b", method="dare", base=str(dirs["base"]), density=0.5, seed=7)
    for k in a:
        assert torch.equal(a[k], b[k])


def test_lora_task_arithmetic_is_the_sum_of_adapter_deltas(models, tmp_path):
    """peft's `cat` (what linear/weighted/task_arithmetic use on LoRA experts) gives exactly Σ w_i s_i B_i A_i."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    root, dirs, W = models
    adapters = []
    for i in (1, 2):
        m = AutoModelForCausalLM.from_pretrained(dirs["base"])
        torch.manual_seed(10 + i)
        pm = get_peft_model(m, LoraConfig(r=2, lora_alpha=4, target_modules=["q_proj"], init_lora_weights=False))
        pm.save_pretrained(tmp_path / f"lora{i}")
        sd = pm.state_dict()
        key = "base_model.model.model.layers.0.self_attn.q_proj.lora_{}.default.weight"
        adapters.append((sd[key.format("A")], sd[key.format("B")]))
    out = tmp_path / "merged"
    merge(MergeSpec(method="task_arithmetic", experts=(str(tmp_path / "lora1"), str(tmp_path / "lora2")),
                    base=str(dirs["base"]), weights=(1.0, 0.5)), out)
    got = weights_of(out)["model.layers.0.self_attn.q_proj.weight"]
    scaling = 4 / 2
    want = W["base"]["model.layers.0.self_attn.q_proj.weight"] + sum(
        w * scaling * (B @ A) for w, (A, B) in zip((1.0, 0.5), adapters))
    torch.testing.assert_close(got, want, rtol=0, atol=1e-5)


def test_named_errors(models, tmp_path):
    root, dirs, W = models
    e = (str(dirs["e1"]), str(dirs["e2"]))
    with pytest.raises(MergeError, match="--method ties .*needs --base"):
        merge(MergeSpec(method="ties", experts=e), tmp_path / "x")
    with pytest.raises(MergeError, match="unknown merge method.*did you mean 'ties'"):
        merge(MergeSpec(method="tiez", experts=e), tmp_path / "x")
    with pytest.raises(MergeError, match="2 weights for 1 experts"):
        merge(MergeSpec(method="weighted", experts=e[:1], weights=(1.0, 2.0)), tmp_path / "x")
    other = tmp_path / "other"
    tok = build_tokenizer()
    init_random_model(ArchSpec(hidden=128, layers=1, heads=2, intermediate=64, max_positions=32), tok).save_pretrained(other)
    with pytest.raises(MergeError, match=f"EXPERT_DIR {other}: its architecture differs .*hidden_size: 64 vs 128"):
        merge(MergeSpec(method="linear", experts=(e[0], str(other))), tmp_path / "x")
    with pytest.raises(MergeError, match="EXPERT_DIR .*nowhere: no such directory"):
        merge(MergeSpec(method="linear", experts=(e[0], str(tmp_path / "nowhere"))), tmp_path / "x")
    assert not (tmp_path / "x").exists()


def test_merge_record(models):
    root, dirs, W = models
    out = root / "rec"
    merge(MergeSpec(method="linear", experts=(str(dirs["e1"]), str(dirs["e2"]))), out)
    rec = json.loads((out / "merge.json").read_text())
    assert rec["library"] == "mergekit" and rec["library_method"] == "linear" and rec["weights"] == [0.5, 0.5]
    assert (out / "tokenizer.json").is_file()
