"""`rl plot RUN_DIR`: one PNG per metric namespace (reward/, eval/, actor/, perf/, ...) from metrics.jsonl."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

from rl.errors import OrchardError
from rl.rundir import RunDir


def plot_run(run_dir: str | Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run = RunDir(run_dir)
    rows = run.read_metrics()
    if not rows:
        raise OrchardError(f"{run.metrics_path} is missing or empty: nothing to plot")
    series: dict[str, dict[str, tuple[list, list]]] = defaultdict(dict)
    for row in rows:
        for k, v in row.items():
            if k == "step" or not isinstance(v, (int, float)) or isinstance(v, bool):
                continue
            ns = k.split("/", 1)[0] if "/" in k else "misc"
            xs, ys = series[ns].setdefault(k, ([], []))
            xs.append(row["step"])
            ys.append(v)
    out_dir = run.path / "plots"
    out_dir.mkdir(exist_ok=True)
    paths = []
    for ns, metrics in sorted(series.items()):
        n = len(metrics)
        cols = min(3, n)
        nrows = (n + cols - 1) // cols
        fig, axes = plt.subplots(nrows, cols, figsize=(4.5 * cols, 3.2 * nrows), squeeze=False)
        for ax, (k, (xs, ys)) in zip(axes.flat, sorted(metrics.items())):
            ax.plot(xs, ys, marker="o" if len(xs) < 20 else None, markersize=3)
            ax.set_title(k, fontsize=9)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
        fig.tight_layout()
        p = out_dir / f"{ns.replace('/', '_')}.png"
        fig.savefig(p, dpi=90)
        plt.close(fig)
        paths.append(p)
    return paths
