"""Shared helpers for benchmark reports: JSON + markdown table, written side by side under `--out`."""
from __future__ import annotations

import csv
import io
import json
import platform
import subprocess
import time
from pathlib import Path

import torch

from rl.rundir import atomic_write_text


def machine_info() -> dict:
    import os

    info = {"python": platform.python_version(), "machine": platform.machine(), "cpus": os.cpu_count(),
            "torch": torch.__version__, "cuda": torch.cuda.is_available(), "time": time.strftime("%Y-%m-%d %H:%M:%S")}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def run_child(cmd: list[str], *, label: str, timeout: float, env: dict | None = None,
              capture: bool = True) -> subprocess.CompletedProcess:
    """Run one measured child process (a fresh process per system or setting keeps their state apart). Raises
    RuntimeError naming `label` when it runs past `timeout` seconds or exits non-zero, with the end of its output
    (when captured; otherwise the output is already on the terminal)."""
    try:
        proc = subprocess.run(cmd, capture_output=capture, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        tail = (e.stderr or b"")[-4000:] if capture else b""
        raise RuntimeError(f"{label} did not finish within --timeout {timeout:g} s"
                           + (f":\n{tail.decode(errors='replace') if isinstance(tail, bytes) else tail}" if tail else "")
                           ) from None
    if proc.returncode != 0:
        out = f":\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}" if capture else " (its output is above)"
        raise RuntimeError(f"{label} failed (exit code {proc.returncode}){out}")
    return proc


def markdown_table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return "(no rows)\n"
    cols = columns or list(dict.fromkeys(k for r in rows for k in r))

    def fmt(v):
        if isinstance(v, float):
            return f"{v:.4g}"
        return "" if v is None else str(v)

    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(fmt(r.get(c)) for c in cols) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def csv_table(rows: list[dict], columns: list[str] | None = None) -> str:
    cols = columns or list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


def write_report(name: str, rows: list[dict], out_dir: str | Path, extra: dict | None = None,
                 notes: str = "", columns: list[str] | None = None, write_csv: bool = False) -> Path:
    """Write `<out>/<name>.json` (rows + machine info + extra) and `<out>/<name>.md` (and `<out>/<name>.csv` of the
    rows when `write_csv`); return the md path."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    payload = {"bench": name, "machine": machine_info(), "rows": rows, **(extra or {})}
    atomic_write_text(out / f"{name}.json", json.dumps(payload, indent=2, default=str))
    md = f"# rl bench {name}\n\n{markdown_table(rows, columns)}\n{notes}\n"
    atomic_write_text(out / f"{name}.md", md)
    if write_csv:
        atomic_write_text(out / f"{name}.csv", csv_table(rows, columns))
    print(md)
    return out / f"{name}.md"
