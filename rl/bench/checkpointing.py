"""Gradient checkpointing (`trainer.gradient_checkpointing`): peak memory and seconds per GRPO update, off vs on.

Each setting runs in its own child process (one at a time), which builds the trainer's policy from the config (the
model, AdamW, optionally LoRA) and runs `--steps` GRPO updates (`trainers.grpo.update.update`, after one warm-up
update) on a fixed synthetic batch of `--batch` sequences of `--prompt-len` + `--completion-len` random tokens.
Only the update is measured, not generation. Reported per setting: the child's peak RSS (`getrusage` of the child,
what `/usr/bin/time -v` calls "Maximum resident set size"), on CUDA also `torch.cuda.max_memory_allocated`, and the
median seconds per update.
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

from rl.bench.common import write_report


def add_arguments(p) -> None:
    p.add_argument("--model", default="random-100m", help="zoo name or local HF model directory")
    p.add_argument("--batch", type=int, default=8, help="sequences per update")
    p.add_argument("--micro-batch", type=int, default=8, help="trainer.micro_batch_size")
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--completion-len", type=int, default=224)
    p.add_argument("--steps", type=int, default=3, help="measured updates per setting (after one warm-up)")
    p.add_argument("--lora", action="store_true", help="train a LoRA adapter (model.lora.enabled)")
    p.add_argument("--threads", type=int, default=0, help="torch threads in the child (0: torch's default)")


def child(a: dict) -> dict:
    """One setting, in this (child) process: build the policy, time the updates."""
    import torch

    from rl.config import load_config
    from rl.zoo import resolve_model_path
    from rollout.types import Sample
    from trainers.grpo.batch import collate
    from trainers.grpo.policy import build_policy
    from trainers.grpo.update import update, whole

    if a["threads"]:
        torch.set_num_threads(a["threads"])
    overrides = [f"model.path={a['model']}", f"trainer.micro_batch_size={a['micro_batch']}",
                 f"trainer.gradient_checkpointing={str(a['checkpointing']).lower()}",
                 f"rollout.max_new_tokens={a['completion_len']}"]
    if a["lora"]:
        overrides.append("model.lora.enabled=true")
    cfg = load_config("configs/grpo_tiny.yaml", overrides)
    model_dir = resolve_model_path(cfg.model.path)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    policy = build_policy(cfg, model_dir, device)
    vocab = len(policy.tokenizer)
    g = torch.Generator().manual_seed(0)
    samples = [Sample(prompt_ids=torch.randint(4, vocab, (a["prompt_len"],), generator=g).tolist(),
                      completion_ids=torch.randint(4, vocab, (a["completion_len"],), generator=g).tolist(),
                      logprobs=[-3.0] * a["completion_len"], versions=[0] * a["completion_len"])
               for _ in range(a["batch"])]
    adv = torch.linspace(-1, 1, a["batch"])
    batch = collate(samples, adv, adv.clone(), torch.arange(a["batch"]), policy.tokenizer.pad_token_id)
    update(policy, whole(batch), cfg)  # warm-up
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    times, losses = [], []
    for _ in range(a["steps"]):
        t0 = time.perf_counter()
        m = update(policy, whole(batch), cfg)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        losses.append(m["loss/pg"])
    out = {"s_per_update": statistics.median(times), "times_s": times, "loss_pg": losses, "device": str(device),
           "threads": torch.get_num_threads()}
    if device.type == "cuda":
        out["cuda_max_allocated_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def _run_child(a: dict) -> dict:
    """`child(a)` in a fresh process; adds its peak RSS from the kernel's accounting of that process."""
    code = "import json, sys; from rl.bench.checkpointing import child; print('RESULT ' + json.dumps(child(json.loads(sys.argv[1]))))"
    p = subprocess.Popen([sys.executable, "-c", code, json.dumps(a)], stdout=subprocess.PIPE, text=True)
    out = p.stdout.read()
    _, status, usage = os.wait4(p.pid, 0)
    p.returncode = os.waitstatus_to_exitcode(status)
    if p.returncode != 0:
        raise RuntimeError(f"benchmark child failed with exit code {p.returncode}")
    res = json.loads(next(x for x in out.splitlines() if x.startswith("RESULT "))[len("RESULT "):])
    res["peak_rss_mib"] = usage.ru_maxrss / 1024  # Linux: KiB
    return res


def run(args) -> dict:
    base = {"model": args.model, "batch": args.batch, "micro_batch": args.micro_batch, "prompt_len": args.prompt_len,
            "completion_len": args.completion_len, "steps": args.steps, "lora": args.lora, "threads": args.threads}
    rows = []
    for ckpt in (False, True):
        r = _run_child({**base, "checkpointing": ckpt})
        rows.append({"gradient_checkpointing": ckpt, **r})
        print(json.dumps(rows[-1]), flush=True)
    off, on = rows
    table = [{"gradient_checkpointing": r["gradient_checkpointing"], "peak_rss_mib": round(r["peak_rss_mib"]),
              **({"cuda_max_allocated_mib": round(r["cuda_max_allocated_mib"])} if "cuda_max_allocated_mib" in r else {}),
              "s_per_update": round(r["s_per_update"], 3), "loss_pg_first": r["loss_pg"][0]} for r in rows]
    extra = {"settings": base, "runs": rows, "rss_ratio_on_off": on["peak_rss_mib"] / off["peak_rss_mib"],
             "time_ratio_on_off": on["s_per_update"] / off["s_per_update"]}
    write_report("checkpointing", table, args.out, extra=extra,
                 notes=f"{args.model}, {args.batch} x ({args.prompt_len} + {args.completion_len}) tokens, micro-batch "
                       f"{args.micro_batch}; peak RSS on/off {extra['rss_ratio_on_off']:.2f}, s/update on/off "
                       f"{extra['time_ratio_on_off']:.2f}")
    return extra
