"""A run's metrics as pictures: the panels' data from metrics.jsonl files, a matplotlib figure, a PNG
or a self-contained HTML page. The program is neox.cli.plot_run (tools/plot_run.py).
"""

from __future__ import annotations

import html
import io
import json
import math
import os
from typing import Any

SCALARS = [("lr", "learning rate"), ("grad_norm", "gradient norm"),
           ("tokens_per_sec", "tokens/s"), ("mfu", "MFU")]


def metrics_file(path: str) -> str:
    for candidate in (path, os.path.join(path, "metrics.jsonl"), os.path.join(path, "logs", "metrics.jsonl")):
        if os.path.isfile(candidate):
            return candidate
    raise FileNotFoundError(f"no metrics.jsonl at {path} (nor {path}/metrics.jsonl, {path}/logs/metrics.jsonl)")


def run_name(path: str) -> str:
    path = os.path.abspath(path)
    if path.endswith(".jsonl"):
        path = os.path.dirname(path)
    base = os.path.basename(path)
    return os.path.basename(os.path.dirname(path)) if base == "logs" else base


def read_rows(path: str) -> list[dict]:
    rows = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                raise ValueError(f"{path}:{n}: not a JSON line") from None
    return rows


def smooth(values: list[float], weight: float) -> list[float]:
    """Debiased exponential moving average (TensorBoard's smoothing); NaNs are passed over."""
    out, avg, norm = [], 0.0, 0.0
    for v in values:
        if math.isfinite(v):
            avg, norm = weight * avg + (1 - weight) * v, weight * norm + (1 - weight)
        out.append(avg / norm if norm else float("nan"))
    return out


def timeline(rows: list[dict]) -> dict:
    """Replay the log: training rows by step, with the ones a rollback discarded set aside."""
    kept: dict[int, dict] = {}
    abandoned, skipped, rollbacks = [], [], []
    for r in rows:
        if "rollback" in r:
            info = r["rollback"]
            to_step = info["to_step"]
            abandoned += [kept.pop(s) for s in sorted(kept) if s > to_step]
            rollbacks.append({"step": r["step"], "from_step": info.get("from_step", r["step"]),
                              "to_step": to_step, "reason": info.get("reason", "")})
        elif r.get("skipped"):
            skipped.append(r["step"])
        elif "loss" in r:
            kept[r["step"]] = r
    return {"kept": [kept[s] for s in sorted(kept)], "abandoned": abandoned,
            "skipped": skipped, "rollbacks": rollbacks}


def series(rows: list[dict], key: str) -> dict:
    rows = [r for r in rows if isinstance(r.get(key), (int, float))]
    return {"step": [r["step"] for r in rows], "value": [float(r[key]) for r in rows]}


def validation_series(rows: list[dict]) -> dict:
    """{component: {"step": [...], "value": [...]}} from the val/<component>/loss rows (last per step)."""
    by_component: dict = {}
    for r in rows:
        for k, v in r.items():
            if k.startswith("val/") and k.endswith("/loss"):
                by_component.setdefault(k[4:-5], {})[r["step"]] = float(v)
    return {c: {"step": sorted(d), "value": [d[s] for s in sorted(d)]} for c, d in by_component.items()}


def panel_data(log_paths: list[str], names: list[str] | None = None, smoothing: float = 0.6) -> dict:
    """The data behind every panel, per run: what the figure draws (and what the tests check)."""
    runs = {}
    for i, path in enumerate(log_paths):
        rows = read_rows(metrics_file(path))
        t = timeline(rows)
        loss = series(t["kept"], "loss")
        loss["smoothed"] = smooth(loss["value"], smoothing)
        runs[names[i] if names else run_name(path)] = {
            "loss": loss,
            "abandoned_loss": series(t["abandoned"], "loss"),
            "validation": validation_series(rows),
            **{key: series(t["kept"], key) for key, _ in SCALARS},
            "skipped_steps": t["skipped"],
            "rollbacks": t["rollbacks"],
        }
    return runs


def draw(data: dict) -> Any:
    """A 2 x 3 matplotlib figure of panel_data's runs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 3, figsize=(15, 8), dpi=100)
    ax_loss, ax_val = axes[0, 0], axes[0, 1]
    scalar_axes = [axes[0, 2], axes[1, 0], axes[1, 1], axes[1, 2]]
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, run) in enumerate(data.items()):
        c = colors[i % len(colors)]
        _draw_loss(ax_loss, run, name, c)
        for j, (component, s) in enumerate(sorted(run["validation"].items())):
            ax_val.plot(s["step"], s["value"], color=c, marker="osd^v<>"[j % 7],
                        linestyle="-", label=f"{name}: {component}")
        for ax, (key, label) in zip(scalar_axes, SCALARS):
            ax.plot(run[key]["step"], run[key]["value"], color=c, label=name)
            ax.set_title(label)
    ax_loss.set_title("training loss (faint: raw, bold: smoothed)")
    ax_val.set_title("validation loss per component")
    for ax in axes.flat:
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig


def _draw_loss(ax, run: dict, name: str, color: str):
    loss = run["loss"]
    ax.plot(loss["step"], loss["value"], color=color, alpha=0.3, linewidth=1)
    ax.plot(loss["step"], loss["smoothed"], color=color, linewidth=2, label=name)
    gone = run["abandoned_loss"]
    if gone["step"]:
        ax.plot(gone["step"], gone["value"], color=color, alpha=0.25, linestyle=":", marker=".",
                label=f"{name}: discarded by rollback")
    if run["skipped_steps"]:
        finite = [v for v in loss["value"] if math.isfinite(v)] or [0.0]
        ax.plot(run["skipped_steps"], [min(finite)] * len(run["skipped_steps"]), "x", color="red",
                markersize=9, label=f"{name}: skipped step")
    for k, rb in enumerate(run["rollbacks"]):
        ax.axvline(rb["from_step"], color="red", linestyle="--", linewidth=1,
                   label=f"{name}: rollback" if k == 0 else None)
        ax.axvspan(rb["to_step"], rb["from_step"], color="red", alpha=0.08)


def summary_rows(data: dict) -> list[list[str]]:
    rows = []
    for name, run in data.items():
        last_val = {c: s["value"][-1] for c, s in run["validation"].items() if s["value"]}
        rows.append([name, str(run["loss"]["step"][-1] if run["loss"]["step"] else "-"),
                     f"{run['loss']['value'][-1]:.4f}" if run["loss"]["value"] else "-",
                     ", ".join(f"{c} {v:.4f}" for c, v in sorted(last_val.items())) or "-",
                     str(len(run["skipped_steps"])), str(len(run["rollbacks"]))])
    return rows


def write_html(fig: Any, data: dict, path: str) -> None:
    buf = io.StringIO()
    fig.savefig(buf, format="svg")
    svg = buf.getvalue()
    svg = svg[svg.index("<svg"):]  # drop the XML prologue: the SVG is inline
    head = ["run", "last step", "last loss", "last validation loss", "skipped steps", "rollbacks"]
    table = "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in summary_rows(data))
    page = (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>{html.escape(', '.join(data))}</title>"
            "<style>body{font-family:sans-serif} td,th{padding:2px 10px;border-bottom:1px solid #ddd}</style>"
            f"</head><body><h1>{html.escape(', '.join(data))}</h1><table><tr>"
            + "".join(f"<th>{h}</th>" for h in head) + f"</tr>{table}</table>\n{svg}\n</body></html>\n")
    with open(path, "w") as f:
        f.write(page)
