"""Weights & Biases logging (`log.wandb`), beside metrics.jsonl and TensorBoard: every row the run directory logs
(`RunDir.log_metrics`, step 0's evaluation included) is also logged to a W&B run at the same step.

`mode: offline` (the default) writes the W&B run under `<run_dir>/wandb/offline-run-*` and sends nothing anywhere;
`wandb sync <run_dir>/wandb/offline-run-*` uploads it later if you want. Only `mode: online` talks to the W&B server
(it needs `wandb login` or WANDB_API_KEY). The W&B run id is derived from the run directory, so `rl train --resume`
continues the same W&B run (W&B keeps the first value logged at a step: the steps a resume repeats after its
checkpoint keep their first values there, unlike metrics.jsonl, which is truncated to the checkpoint).
"""
from __future__ import annotations

import hashlib
from pathlib import Path

from rl.config import WandbConfig


class WandbSink:
    """Logs each metrics row of a run directory to one W&B run."""

    def __init__(self, cfg: WandbConfig, run_dir, config: dict):
        import wandb

        path = Path(run_dir).resolve()
        run_id = hashlib.sha1(str(path).encode()).hexdigest()[:16]
        self.run = wandb.init(project=cfg.project, entity=cfg.entity, mode=cfg.mode, dir=str(path),
                              name=cfg.name or path.name, id=run_id, resume="allow", config=config,
                              settings=wandb.Settings(console="off", silent=True))

    def log(self, step: int, row: dict) -> None:
        scalars = {k: v for k, v in row.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        self.run.log(scalars, step=step)

    def close(self) -> None:
        if self.run is not None:
            self.run.finish()
            self.run = None
