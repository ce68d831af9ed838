"""Weight sync: the Ray object store against a collective broadcast (`cluster.weight_sync`), side by side.

For each model size, one trainer (in this process, as with `cluster.trainer_ranks=1`) publishes `--repeats` policy
versions to `--workers` rollout workers (Ray actors, HF engine) through the real controller, once per transport,
each with fresh actors. Per publish it measures:

- `trainer_s`: how long the trainer is blocked (object store: merging the state dict and putting it into the
  store; broadcast: the collective itself, until every worker has received);
- `verified_s`: from the publish until every worker has loaded the version and scored the probe batch, i.e. until
  the sync is verified (the probe check's log-prob error is reported too, and must be 0 on one machine).

Medians over the repeats after one warm-up publish (the group's first broadcast also sends the manifest). On CPU the
broadcast runs over gloo (TCP); on GPUs it is NCCL, where the two transports differ most.
"""
from __future__ import annotations

import statistics
import time

import torch

from rl.bench.common import write_report


def add_arguments(p) -> None:
    p.add_argument("--models", default="random-3m,random-30m,random-100m", help="model zoo names or local HF dirs")
    p.add_argument("--workers", type=int, default=2, help="rollout workers (Ray actors)")
    p.add_argument("--repeats", type=int, default=5, help="measured publishes per model and transport")
    p.add_argument("--transports", default="object_store,broadcast",
                   help="object_store, broadcast, and for a LoRA policy (r=8 on q/k/v/o) lora_merged (merged full "
                        "weights through the object store) and lora_adapter (only the adapter: rollout.lora_sync)")
    p.add_argument("--engine", default="hf", help="rollout engine of the workers (hf or vllm)")


def _measure(cfg, trainer, model_dir, transport: str, repeats: int) -> dict:
    from rollout.controller import RolloutController
    from rollout.launch import start_workers, sync_hub
    from rollout.types import Sample, SamplingParams
    from trainers.grpo.batch import PromptSampler

    c = cfg.cluster
    hub = sync_hub(c, trainer.device, "object_store" if transport.startswith("lora_") else transport)
    pool = start_workers(c, cfg.rollout, model_dir=model_dir, dtype=cfg.model.dtype, seed=cfg.seed,
                         weights_thread=hub is not None, lora=transport == "lora_adapter")

    def no_scoring(task, trajectories):  # never called: this bench generates nothing (last_step 0)
        raise RuntimeError("rl bench sync generates nothing")

    ctrl = RolloutController(pool, prompt_ids=[[1]], sampler=PromptSampler(1, 0), score_fn=no_scoring, group_size=1,
                             groups_per_step=1, max_staleness=0, prompts_per_task=1,
                             sampling=SamplingParams(max_new_tokens=1), seed=0, last_step=0, sync_hub=hub)
    g = torch.Generator().manual_seed(0)
    vocab = trainer.rank.policy.model.config.vocab_size
    probe = [Sample(prompt_ids=torch.randint(3, vocab, (12,), generator=g).tolist(),
                    completion_ids=torch.randint(3, vocab, (6,), generator=g).tolist(), logprobs=[0.0] * 6,
                    versions=[0] * 6) for _ in range(4)]
    lps = trainer.probe_logprobs(probe)
    trainer_s, verified_s, errs = [], [], []
    try:
        for v in range(repeats + 1):
            t0 = time.perf_counter()
            blocked = ctrl.publish(trainer, v, probe, lps)
            m: dict = {}
            ctrl.drain_checks(m)
            if v > 0:  # the first publish warms up (actors' first fetch, the group's rendezvous and manifest)
                trainer_s.append(blocked)
                verified_s.append(time.perf_counter() - t0)
                errs.append(m["sync/probe_max_abs_err"])
            if m.get("sync/checks") != c.rollout_workers:
                raise RuntimeError(f"{transport}: version {v} verified on {m.get('sync/checks')} of "
                                   f"{c.rollout_workers} workers")
        return {"trainer_s": statistics.median(trainer_s), "verified_s": statistics.median(verified_s),
                "probe_max_abs_err": max(errs), "tensors": ctrl.n_tensors,
                "backend": hub.backend if hub else "ray object store"}
    finally:
        ctrl.close()


def run(a) -> dict:
    from rl.cluster import check_resources, init_ray
    from rl.zoo import resolve_model_path
    from trainers.grpo.config import GRPOConfig
    from trainers.grpo.ranks import InProcessTrainer

    rows = []
    transports = [t for t in a.transports.split(",") if t]
    for name in [m for m in a.models.split(",") if m]:
        model_dir = resolve_model_path(name)
        cfg = GRPOConfig.model_validate({"model": {"path": str(model_dir)}, "rollout": {"engine": a.engine},
                                         "cluster": {"backend": "ray", "rollout_workers": a.workers}})
        started = init_ray(cfg.cluster)
        try:
            check_resources(cfg.cluster)
            trainer = InProcessTrainer(cfg, model_dir)
            sd = trainer.rank.policy.merged_state_dict()
            mb = sum(t.numel() * t.element_size() for t in sd.values()) / 2**20
            params = sum(t.numel() for t in sd.values())
            base = None
            for tr in transports:
                t_cfg, t_trainer = cfg, trainer
                if tr.startswith("lora_"):  # a LoRA policy whose sync ships merged weights or only the adapter
                    t_cfg = GRPOConfig.model_validate({**cfg.model_dump(mode="json"), "model": {
                        "path": str(model_dir), "lora": {"enabled": True, "r": 8}}, "rollout": {
                        "engine": a.engine, "lora_sync": tr.removeprefix("lora_")}})
                    t_trainer = InProcessTrainer(t_cfg, model_dir)
                payload, _ = t_trainer.weights()
                sync_mb = (payload.nbytes if hasattr(payload, "nbytes") else
                           sum(t.numel() * t.element_size() for t in payload.values())) / 2**20
                r = _measure(t_cfg, t_trainer, model_dir, tr, a.repeats)
                if t_trainer is not trainer:
                    t_trainer.close()
                row = {"model": name, "params_m": params / 1e6, "weights_mb": mb, "transport": tr,
                       "sync_mb": sync_mb, **r}
                if tr == transports[0]:
                    base = row
                row["trainer_s_vs_first"] = row["trainer_s"] / base["trainer_s"]
                row["verified_s_vs_first"] = row["verified_s"] / base["verified_s"]
                rows.append(row)
                print(f"{name} {tr}: trainer blocked {r['trainer_s']:.3f} s, verified after {r['verified_s']:.3f} s",
                      flush=True)
            trainer.close()
        finally:
            if started:
                import ray

                ray.shutdown()
    notes = (f"{a.workers} rollout workers ({a.engine} engine, Ray actors), trainer in this process; medians of {a.repeats} "
             f"publishes after one warm-up. `*_vs_first`: ratio to the first transport listed ({transports[0]}) "
             "for the same model, measured in the same run.\n")
    md = write_report("sync", rows, a.out, notes=notes,
                      columns=["model", "params_m", "weights_mb", "transport", "sync_mb", "backend", "trainer_s", "verified_s",
                               "trainer_s_vs_first", "verified_s_vs_first", "probe_max_abs_err"])
    print(md.read_text())
    return {"rows": rows}
