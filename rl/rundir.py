"""The run directory every job writes, and its atomic checkpoints.

```
<run_dir>/config.yaml        fully resolved config
<run_dir>/metrics.jsonl      one JSON object per logged step ({"step": N, "reward/mean": ..., ...})
<run_dir>/tb/                TensorBoard events
<run_dir>/checkpoints/step-N/   complete checkpoints only (written to a temp dir, then renamed)
<run_dir>/summary.json       written at the end
<run_dir>/plots/*.png        `rl plot RUN_DIR`
```
"""
from __future__ import annotations

import json
import math
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from rl.errors import OrchardError

CKPT_PREFIX = "step-"


def atomic_write_text(path: Path, text: str) -> None:
    """Write to a temp file in the same directory, fsync, then rename: readers never see a partial file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _jsonable(v):
    if hasattr(v, "item"):
        v = v.item()
    if isinstance(v, float) and not math.isfinite(v):
        return None if math.isnan(v) else (1e308 if v > 0 else -1e308)
    return v


class RunDir:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.ckpt_root = self.path / "checkpoints"
        self._tb = None
        self._metrics_f = None
        self.sinks: list = []  # more loggers of every row (rl.wandb_log.WandbSink): `log(step, row)`, `close()`

    # --- config / summary --------------------------------------------------------------------------------------
    @property
    def config_path(self) -> Path:
        return self.path / "config.yaml"

    def write_config(self, text: str) -> None:
        atomic_write_text(self.config_path, text)

    def write_summary(self, summary: dict) -> None:
        atomic_write_text(self.path / "summary.json", json.dumps({k: _jsonable(v) for k, v in summary.items()}, indent=2))

    def read_summary(self) -> dict:
        return json.loads((self.path / "summary.json").read_text())

    # --- metrics ---------------------------------------------------------------------------------------------------
    @property
    def metrics_path(self) -> Path:
        return self.path / "metrics.jsonl"

    def clear_partial(self) -> None:
        """Before a fresh start in a directory with no complete checkpoint: drop the metrics, TensorBoard events and
        unfinished checkpoint of an earlier attempt here (they would otherwise mix with this run's)."""
        for p in [self.metrics_path, self.path / "tb", *self.ckpt_root.glob(".tmp-*")]:
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            elif p.exists():
                p.unlink()

    def truncate_metrics(self, after_step: int) -> None:
        """On resume: drop metric lines logged after the checkpoint we resume from (they will be re-logged)."""
        if not self.metrics_path.exists():
            return
        kept = [ln for ln in self.metrics_path.read_text().splitlines() if ln.strip() and json.loads(ln)["step"] <= after_step]
        atomic_write_text(self.metrics_path, "".join(ln + "\n" for ln in kept))

    def log_metrics(self, step: int, metrics: dict, tensorboard: bool = True) -> None:
        row = {"step": step, **{k: _jsonable(v) for k, v in metrics.items()}}
        if self._metrics_f is None:
            self._metrics_f = open(self.metrics_path, "a")
        self._metrics_f.write(json.dumps(row) + "\n")
        self._metrics_f.flush()
        for sink in self.sinks:
            sink.log(step, row)
        if tensorboard:
            if self._tb is None:
                from torch.utils.tensorboard import SummaryWriter

                self._tb = SummaryWriter(str(self.path / "tb"))
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool):
                    self._tb.add_scalar(k, v, step)

    def read_metrics(self) -> list[dict]:
        if not self.metrics_path.exists():
            return []
        return [json.loads(ln) for ln in self.metrics_path.read_text().splitlines() if ln.strip()]

    def close(self) -> None:
        if self._metrics_f is not None:
            self._metrics_f.close()
            self._metrics_f = None
        if self._tb is not None:
            self._tb.flush()
            self._tb.close()
            self._tb = None

    # --- checkpoints -----------------------------------------------------------------------------------------------
    def checkpoints(self) -> list[tuple[int, Path]]:
        """Complete checkpoints, oldest first. Temp dirs of interrupted writes are ignored."""
        if not self.ckpt_root.exists():
            return []
        out = []
        for p in self.ckpt_root.iterdir():
            if p.is_dir() and p.name.startswith(CKPT_PREFIX) and (p / "COMPLETE").exists():
                try:
                    out.append((int(p.name[len(CKPT_PREFIX):]), p))
                except ValueError:
                    continue
        return sorted(out)

    def latest_checkpoint(self) -> tuple[int, Path] | None:
        ckpts = self.checkpoints()
        return ckpts[-1] if ckpts else None

    @contextmanager
    def checkpoint_writer(self, step: int, keep: int = 2) -> Iterator[Path]:
        """Yield a temp directory to fill; on success it is marked COMPLETE and renamed to `step-N` atomically.

        If the body raises, the temp directory is removed and every earlier checkpoint is untouched.
        """
        self.ckpt_root.mkdir(parents=True, exist_ok=True)
        final = self.ckpt_root / f"{CKPT_PREFIX}{step}"
        tmp = self.ckpt_root / f".tmp-{CKPT_PREFIX}{step}-{os.getpid()}"
        if tmp.exists():
            shutil.rmtree(tmp)
        tmp.mkdir()
        try:
            yield tmp
            (tmp / "COMPLETE").write_text(json.dumps({"step": step, "time": time.time()}))
            if final.exists():  # re-saving the same step (e.g. after a resume): replace it whole
                old = final.with_name(final.name + f".old-{os.getpid()}")
                os.replace(final, old)
                os.replace(tmp, final)
                shutil.rmtree(old)
            else:
                os.replace(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        if keep > 0:
            for _, p in self.checkpoints()[:-keep]:
                shutil.rmtree(p, ignore_errors=True)


def default_run_dir(algo: str) -> Path:
    return Path("runs") / f"{algo}-{time.strftime('%Y%m%d-%H%M%S')}"


def open_run_dir(path: str | Path, must_exist: bool = False) -> RunDir:
    p = Path(path)
    if must_exist and not (p / "config.yaml").exists():
        raise OrchardError(f"{p} is not a run directory (no config.yaml)")
    return RunDir(p)
