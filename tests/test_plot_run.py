"""tools/plot_run.py: the data behind each panel, and a PNG that is really drawn."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO

from neox.runs import plot as plot_run


def write_log(path, rows):
    path.mkdir(parents=True)
    with open(path / "metrics.jsonl", "w") as f:
        for r in rows:
            f.write(json.dumps(r) + "\n")


def train_row(step, loss):
    return {"step": step, "loss": loss, "lr": 1e-3 * step, "grad_norm": 1.0 / step, "tokens_per_sec": 1000.0 + step,
            "mfu": 0.01 * step, "tokens/arxiv": 128 * step}


def smoke_like_rows():
    rows = [{"step": 0, "val/arxiv/loss": 8.0, "val/arxiv/ppl": math.exp(8.0)}]
    rows += [train_row(s, 8.0 - 0.1 * s) for s in range(1, 21)]
    rows += [{"step": 20, "val/arxiv/loss": 6.5, "val/arxiv/ppl": math.exp(6.5)}]
    return rows


def rollback_rows():
    """Steps 1-10 saved at 10, step 11 skipped (NaN), 12-13 trained, spike at 14 -> rollback to 10, 11-15 again."""
    rows = [train_row(s, 5.0) for s in range(1, 11)]
    rows.append({"step": 11, "skipped": True, "reason": "non-finite loss", "lr": 1e-2, "batch": 10,
                 "samples": [80, 88]})
    rows += [train_row(12, 4.9), train_row(13, 4.8)]
    rows.append({"step": 14, "rollback": {"from_step": 14, "to_step": 10, "reason": "loss spike",
                                          "skipped_batches": [13], "samples": [[104, 112]], "rollbacks": 1}})
    rows += [train_row(s, 4.0 + 0.01 * s) for s in range(11, 16)]
    return rows


def test_panel_data_of_a_run_with_a_skip_and_a_rollback(tmp_path):
    write_log(tmp_path / "good", smoke_like_rows())
    write_log(tmp_path / "bad" / "logs", rollback_rows())
    data = plot_run.panel_data([str(tmp_path / "good"), str(tmp_path / "bad")])
    assert list(data) == ["good", "bad"]  # a sweep run dir (with logs/) is named after the run
    good, bad = data["good"], data["bad"]
    assert good["loss"]["step"] == list(range(1, 21))
    assert good["loss"]["value"][4] == pytest.approx(7.5)
    # debiased EMA (weight 0.6): first value is the raw value, then 0.6 * previous average + 0.4 * value
    assert good["loss"]["smoothed"][0] == pytest.approx(7.9)
    assert good["loss"]["smoothed"][1] == pytest.approx((0.6 * 0.4 * 7.9 + 0.4 * 7.8) / (1 - 0.36))
    assert good["validation"] == {"arxiv": {"step": [0, 20], "value": [8.0, 6.5]}}
    assert good["lr"]["value"][-1] == pytest.approx(0.02) and good["mfu"]["step"] == list(range(1, 21))
    assert good["skipped_steps"] == [] and good["rollbacks"] == []

    assert bad["skipped_steps"] == [11]
    assert bad["rollbacks"] == [{"step": 14, "from_step": 14, "to_step": 10, "reason": "loss spike"}]
    # steps 12 and 13 were thrown away by the rollback; the kept timeline is 1-10 then 11-15 again
    assert bad["abandoned_loss"] == {"step": [12, 13], "value": [4.9, 4.8]}
    assert bad["loss"]["step"] == list(range(1, 16))
    assert bad["loss"]["value"][10:] == pytest.approx([4.11, 4.12, 4.13, 4.14, 4.15])


@pytest.mark.processes
def test_png_and_html_are_drawn(tmp_path):
    from PIL import Image

    write_log(tmp_path / "smoke", smoke_like_rows())
    write_log(tmp_path / "rolled", rollback_rows())
    png, page = tmp_path / "run.png", tmp_path / "run.html"
    r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "plot_run.py"), str(tmp_path / "smoke"),
                        str(tmp_path / "rolled" / "metrics.jsonl"), "--out", str(png), "--html", str(page)],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    img = np.asarray(Image.open(png).convert("L"), dtype=float)
    assert img.shape == (800, 1500)  # figsize 15 x 8 inches at 100 dpi
    assert img.std() > 10 and (img < 128).mean() > 0.01  # lines and text, not a blank canvas
    text = page.read_text()
    assert text.count("<svg") == 1 and "src=" not in text and "<link" not in text  # inline, nothing to fetch
    assert "<td>rolled</td><td>15</td><td>4.1500</td>" in text and "<td>1</td><td>1</td></tr>" in text


@pytest.mark.processes
def test_missing_log_is_a_one_line_error(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(REPO, "tools", "plot_run.py"), str(tmp_path / "nope"),
                        "--out", str(tmp_path / "x.png")], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr.startswith("error: no metrics.jsonl at ") and not (tmp_path / "x.png").exists()
