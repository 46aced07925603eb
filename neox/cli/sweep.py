#!/usr/bin/env python
"""Data-mixture sweeps: one short training run per mixture, then pick the mixture with the lowest
held-out loss (how Llemma chose 2:4:1 arXiv : web : code).

    python tools/sweep.py mixture SWEEP.yml --out DIR [--executor local|slurm] [--dry-run]
    python tools/sweep.py compare DIR

``mixture`` plans every run first (config validated, GPU-hours from the planner, printed; with
``--dry-run`` nothing else happens), writes each run's own config to ``DIR/runs/<name>/config.yml``
(an ordinary config: ``python deepy.py train.py DIR/runs/<name>/config.yml`` reruns it by hand) and
trains the runs that are not finished yet: ``local`` one after another on this machine, ``slurm``
as one Slurm array job through ``slurm/sweep_array.sbatch``. ``compare`` writes ``DIR/results.csv``,
``DIR/results.md`` (winner marked), ``DIR/results.png`` and the olmix CSVs under ``DIR/olmix/``.
The sweep file's keys are described in docs/sweeps.md and in neox.runs.sweep.SWEEP_KEYS.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from neox.config import ConfigError
from neox.runs.sweep import (
    SweepError,
    collect_results,
    format_plan,
    is_finished,
    load_sweep,
    plan_summary,
    plan_sweep,
    plot_results,
    run_local,
    submit_slurm,
    write_configs,
    write_olmix,
    write_results_csv,
    write_results_md,
)


def cmd_mixture(args: argparse.Namespace) -> int:
    sweep = load_sweep(args.sweep_file)
    out = os.path.abspath(args.out)
    plan = plan_sweep(sweep, out, dry_run=args.dry_run)
    for w in sorted({w for r in plan["runs"] for w in r["warnings"]}):
        print(f"warning: {w}", file=sys.stderr)
    print(format_plan(plan), file=sys.stderr)
    if args.dry_run:
        print(json.dumps(plan_summary(plan)))
        return 0
    os.makedirs(out, exist_ok=True)
    write_configs(plan)
    todo = [r for r in plan["runs"] if not is_finished(plan, r)]
    skipped = [r["name"] for r in plan["runs"] if r not in todo]
    if skipped:
        print(f"already finished, skipped: {', '.join(skipped)}", file=sys.stderr)
    if not todo:
        print(f"nothing to run; compare with: python tools/sweep.py compare {args.out}", file=sys.stderr)
        return 0
    if args.executor == "slurm":
        return submit_slurm(plan, todo, sweep)
    failed = run_local(plan, todo)
    if failed:
        print(f"error: {len(failed)} runs did not finish: {', '.join(failed)} (rerun the same command to retry "
              "them; finished runs are skipped)", file=sys.stderr)
        return 1
    print(f"all runs finished; compare with: python tools/sweep.py compare {args.out}", file=sys.stderr)
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    plan, results = collect_results(args.sweep_dir)
    d = args.sweep_dir
    write_results_csv(plan, results, os.path.join(d, "results.csv"))
    plot_results(plan, results, os.path.join(d, "results.png"))
    write_results_md(plan, results, os.path.join(d, "results.md"), "results.png")
    write_olmix(plan, results, os.path.join(d, "olmix"))
    win = next(r for r in results if r["winner"])
    print(f"winner: {win['run']} (selection loss {win['selection_loss']:.4f}); wrote {d}/results.csv, results.md, "
          f"results.png, olmix/ratios.csv, olmix/metrics.csv")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    m = sub.add_parser("mixture", help="plan and train one run per mixture")
    m.add_argument("sweep_file", metavar="SWEEP.yml")
    m.add_argument("--out", required=True, metavar="DIR")
    m.add_argument("--executor", choices=["local", "slurm"], default="local")
    m.add_argument("--dry-run", action="store_true", help="print the plan (GPU-hours of the whole sweep) and exit")
    c = sub.add_parser("compare", help="tables, plot and olmix CSVs of a sweep directory")
    c.add_argument("sweep_dir", metavar="DIR")
    args = p.parse_args(argv)
    try:
        return cmd_mixture(args) if args.command == "mixture" else cmd_compare(args)
    except (SweepError, ConfigError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
