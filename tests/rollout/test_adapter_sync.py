"""LoRA adapter weight sync (`rollout.lora_sync: adapter`): only the adapter travels, the worker's engine serves base
+ adapter and reproduces the trainer's log-probs (the probe check), a sync that loses the adapter is caught, and the
setting resolves and validates as documented."""
import json

import pytest
import torch

from rl.cli import main
from rl.config import load_config
from rl.errors import ConfigError
from rl.zoo import resolve_model_path
from rollout.adapters import AdapterWeights
from rollout.engine import EngineSpec
from rollout.runners import RUNNERS
from rollout.types import SamplingParams
from rollout.workers import RolloutWorker
from trainers.grpo.policy import build_policy
from trainers.grpo.update import probe_logprobs

LORA = ["model.path=random-3m", "model.lora.enabled=true", "model.lora.r=4"]


def test_lora_sync_resolves_and_validates():
    cfg = lambda *o: load_config("configs/grpo_tiny.yaml", list(o)).rollout.lora_sync
    assert cfg(*LORA, "rollout.engine=vllm") == "adapter" and cfg(*LORA) == "merged" and cfg() == "merged"
    assert cfg(*LORA, "rollout.lora_sync=adapter") == "adapter"
    with pytest.raises(ConfigError, match="rollout.lora_sync=adapter needs model.lora.enabled=true"):
        load_config("configs/grpo_tiny.yaml", ["rollout.lora_sync=adapter"])


def _trained_policy():
    cfg = load_config("configs/grpo_tiny.yaml", [*LORA, "rollout.lora_sync=adapter"])
    torch.manual_seed(0)
    policy = build_policy(cfg, resolve_model_path("random-3m"), torch.device("cpu"))
    with torch.no_grad():  # a non-trivial adapter: lora_B starts at zero
        for n, p in policy.model.named_parameters():
            if "lora_B" in n:
                p.normal_(0, 0.05)
    return cfg, policy


def test_adapter_is_small_and_the_worker_serves_base_plus_adapter(tmp_path):
    cfg, policy = _trained_policy()
    adapter = AdapterWeights.from_peft(policy.model)
    merged = policy.merged_state_dict()
    merged_bytes = sum(t.numel() * t.element_size() for t in merged.values())
    assert 0 < adapter.nbytes * 10 < merged_bytes and all("lora_" in k for k in adapter.tensors)
    assert AdapterWeights.read(adapter.write(tmp_path / "a")).tensors.keys() == adapter.tensors.keys()
    worker = RolloutWorker(0, EngineSpec("hf", str(resolve_model_path("random-3m")), lora=True),
                           RUNNERS.get("single_turn").from_config(cfg.rollout))
    try:
        tok = policy.tokenizer
        prompts = [tok(p)["input_ids"] for p in ("12+34=", "56+7=")]
        probe = worker.generate(prompts, SamplingParams(max_new_tokens=5, temperature=1.0, seed=0))
        worker.update_weights(adapter, version=1, probe=([s.prompt_ids for s in probe],
                                                         [s.completion_ids for s in probe]))
        got = worker.check(1).logprobs
        want = probe_logprobs(policy, probe)
        base_lp = [s.logprobs for s in probe]  # scored by the base model before the adapter arrived
        for g, w, b in zip(got, want, base_lp):
            assert max(abs(x - y) for x, y in zip(g, w)) < 1e-5
        assert max(abs(x - y) for g, b in zip(got, base_lp) for x, y in zip(g, b)) > 1e-3  # the adapter matters
    finally:
        worker.close()


TINY = ["reward=[exact_match, {fn: length_penalty, kwargs: {target: 1, scale: 4}}]", "data.train_size=16",
        "data.eval_size=4", "rollout.prompts_per_step=4", "rollout.num_generations=4", "rollout.max_new_tokens=5",
        "eval.max_new_tokens=5", "log.progress=false", "log.tensorboard=false", "cluster.backend=local",
        "trainer.lr=1e-2", "trainer.kl_coef=0"]


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["hf", "vllm"])
def test_lora_job_syncs_adapters_verified_by_the_probe(tmp_path, engine):
    run_dir = tmp_path / "run"
    assert main(["train", "configs/grpo_tiny.yaml", *LORA, *TINY, f"rollout.engine={engine}",
                 "rollout.lora_sync=adapter", "max_steps=3", f"run_dir={run_dir}"]) == 0
    assert "lora_sync: adapter" in (run_dir / "config.yaml").read_text()
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()][1:]
    checked = [r for r in rows if "sync/checks" in r]
    assert sum(r["sync/checks"] for r in checked) == 3
    assert all(r["sync/probe_max_abs_err"] < 1e-4 for r in checked)


@pytest.mark.slow
def test_an_adapter_sync_that_loses_the_adapter_stops_the_job(tmp_path, monkeypatch, capsys):
    from rollout.adapters import AdapterDir

    real = AdapterDir.load

    def stale(self, engine, adapter, version):  # the engine keeps serving the first adapter it got
        if not self._dirs:
            real(self, engine, adapter, version)
        else:
            engine.version = version

    monkeypatch.setattr(AdapterDir, "load", stale)
    code = main(["train", "configs/grpo_tiny.yaml", *LORA, *TINY, "rollout.lora_sync=adapter", "max_steps=3",
                 f"run_dir={tmp_path}"])
    assert code == 2
    assert "weight sync check failed for policy version 1" in capsys.readouterr().err
