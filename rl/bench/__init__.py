"""`rl bench NAME`: benchmarks that write JSON and a markdown table, comparing ratios measured side by side.

Each bench module exposes `add_arguments(parser)` and `run(args) -> dict` and writes its report with
`rl.bench.common.write_report`.
"""
BENCHES: dict[str, str] = {
    "rollout": "rl.bench.rollout",
    "grpo": "rl.bench.grpo",
    "envs": "rl.bench.envs",
    "async": "rl.bench.async_",
    "marl": "rl.bench.marl",
    "sync": "rl.bench.sync",
    "sandbox": "rl.bench.sandbox",
    "checkpointing": "rl.bench.checkpointing",
    "agents": "rl.bench.agents",
    "btm": "rl.bench.btm",
}
