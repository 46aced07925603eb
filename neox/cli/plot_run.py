#!/usr/bin/env python
"""Draw one or more training runs from their metrics.jsonl.

    python tools/plot_run.py LOG_DIR [LOG_DIR ...] --out FILE.png [--html FILE.html] [--names A,B] [--smooth 0.6] [--dpi 100]

LOG_DIR is a run's ``log_dir`` (holding ``metrics.jsonl``), the file itself, or a directory with
``logs/metrics.jsonl`` (a sweep run). One figure: training loss (raw and smoothed), validation loss
per component, learning rate, gradient norm, tokens/s and MFU against the step; several runs are
overlaid in one colour each. Skipped steps are marked with a red x on the loss panel, rollbacks with
a dashed red line from the step that rolled back and a shaded span back to the checkpoint it
reloaded; losses of steps that a rollback threw away are drawn faded. ``--html`` writes a
self-contained page (inline SVG, no server, no network) with the same plots and a summary table.
Requires matplotlib (``pip install -e '.[plot]'``).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from neox.runs.plot import draw, panel_data, write_html


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("log_dirs", nargs="+", metavar="LOG_DIR")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--html", help="also write a self-contained HTML page with the same plots")
    p.add_argument("--names", help="comma-separated run names (default: the directory names)")
    p.add_argument("--smooth", type=float, default=0.6, help="EMA weight of the smoothed loss, 0 <= w < 1")
    p.add_argument("--dpi", type=int, default=100, help="PNG resolution (the figure is 15 x 8 inches)")
    args = p.parse_args(argv)
    names = args.names.split(",") if args.names else None
    if names and len(names) != len(args.log_dirs):
        print(f"error: --names has {len(names)} names for {len(args.log_dirs)} runs", file=sys.stderr)
        return 2
    if not 0 <= args.smooth < 1:
        print(f"error: --smooth must be in [0, 1), got {args.smooth}", file=sys.stderr)
        return 2
    try:
        data = panel_data(args.log_dirs, names, args.smooth)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    fig = draw(data)
    fig.savefig(args.out, dpi=args.dpi)
    print(f"wrote {args.out}")
    if args.html:
        write_html(fig, data, args.html)
        print(f"wrote {args.html}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
