"""Mixture sweeps: short trial runs, one per data mixture, planned from a sweep YAML, written as
configs, run locally or as a Slurm array, then compared (CSV, Markdown, a picture, an OLMix-style
table). The program is neox.cli.sweep (tools/sweep.py).
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from typing import Any, cast

import yaml

from neox.config import (
    ConfigError,
    NeoXConfig,
    apply_overrides,
    config_from_flat,
    derived,
    load_yaml_files,
    validate,
)
from neox.data.names import component_name
from neox.errors import NeoxError
from neox.exit_status import BAD_INPUT
from neox.paths import project_root

REPO = project_root()


SWEEP_KEYS = {
    "base_configs": "YAML files merged like deepy.py (paths from the repository root)",
    "overrides": "mapping of config keys (dotted keys allowed) applied to every run, like deepy.py -o",
    "initial_checkpoint": "checkpoint every run starts from (load + finetune: true); omit for random init",
    "tokens_per_run": "training tokens of each run; train_iters = ceil(tokens / tokens per step)",
    "anneal_from": "anneal mode: {load: a stable run's save directory, step: N, decay_iters: K, decay_style: "
                   "linear}: every run branches off step N (anneal: true) and decays over K steps on its "
                   "mixture (WSD); replaces tokens_per_run and initial_checkpoint",
    "components": "the train components searched over (names as in metrics, e.g. arxiv); default: all not fixed",
    "fixed": "mapping component -> share of every mixture kept constant (e.g. general data)",
    "mixtures": "list: [{name, weights}], grid: {steps: N}, dirichlet: {n, seed, alpha}; any of them",
    "selection": "sets: validation prefixes the runs are judged on (default: the base valid_data_paths); "
                 "metric: mean (of their losses) or one set's name",
    "slurm": "max_parallel (array throttle), gpus_per_node (--gpus-per-node; none unless set), "
             "sbatch_args (list of extra sbatch options)",
}


MIXTURE_KINDS = ("list", "grid", "dirichlet")


class SweepError(NeoxError, ValueError):
    """A bad sweep file or directory: one `error:` line, exit status 2."""
    exit_status = BAD_INPUT


UNKNOWN_TOTAL = "n/a (vocab size unknown: no tokenizer file; set overrides: {vocab_size: N})"


def load_sweep(path: str) -> dict:
    if not os.path.isfile(path):
        raise SweepError(f"sweep file not found: {path}")
    try:
        with open(path) as f:
            sweep = yaml.safe_load(f) or {}
    except yaml.YAMLError as e:
        raise SweepError(f"{path}: invalid YAML ({getattr(e, 'problem', e)})") from None
    if not isinstance(sweep, dict):
        raise SweepError(f"{path}: top level must be a mapping")
    unknown = sorted(set(sweep) - set(SWEEP_KEYS))
    if unknown:
        raise SweepError(f"{path}: unknown key '{unknown[0]}' (known: {', '.join(SWEEP_KEYS)})")
    anneal = "anneal_from" in sweep
    for key in ("base_configs", "mixtures") + (() if anneal else ("tokens_per_run",)):
        if key not in sweep:
            raise SweepError(f"{path}: key '{key}' is required ({SWEEP_KEYS[key]})")
    if anneal:
        check_anneal_from(sweep, path)
    elif not isinstance(sweep["tokens_per_run"], (int, float)) or sweep["tokens_per_run"] <= 0:
        raise SweepError(f"{path}: key 'tokens_per_run' must be a positive number, got {sweep['tokens_per_run']!r}")
    if not isinstance(sweep["mixtures"], dict) or not sweep["mixtures"] or set(sweep["mixtures"]) - set(MIXTURE_KINDS):
        raise SweepError(f"{path}: key 'mixtures' must be a mapping with any of {', '.join(MIXTURE_KINDS)}")
    sweep["_path"] = path
    return sweep


ANNEAL_KEYS = {"load", "step", "decay_iters", "decay_style"}


def check_anneal_from(sweep: dict, path: str) -> None:
    spec = sweep["anneal_from"]
    if not isinstance(spec, dict) or set(spec) - ANNEAL_KEYS or not {"load", "step", "decay_iters"} <= set(spec):
        raise SweepError(f"{path}: key 'anneal_from' must be {{load: DIR, step: N, decay_iters: K[, decay_style: "
                         f"linear]}}, got {spec!r}")
    for key in ("step", "decay_iters"):
        if not isinstance(spec[key], int) or isinstance(spec[key], bool) or spec[key] < 1:
            raise SweepError(f"{path}: anneal_from.{key} must be a positive integer, got {spec[key]!r}")
    for key in ("tokens_per_run", "initial_checkpoint"):
        if key in sweep:
            raise SweepError(f"{path}: key '{key}' does not go with anneal_from (the runs start from "
                             f"{spec['load']} at step {spec['step']} and train decay_iters steps)")


def anneal_keys(spec: dict) -> dict:
    """An anneal run's keys: a branch off step N of the stable run, WSD with a K-step decay."""
    n, k = spec["step"], spec["decay_iters"]
    return {"load": spec["load"], "load_step": n, "anneal": True, "finetune": False, "train_iters": n + k,
            "lr_decay_style": "wsd", "lr_decay_iters": n + k, "lr_wsd_decay_iters": k,
            "lr_wsd_decay_fraction": None, "lr_wsd_decay_style": spec.get("decay_style", "linear")}


def repo_path(p: str) -> str:
    return p if os.path.isabs(p) else os.path.join(REPO, p)


def base_config(sweep: dict) -> dict:
    """The merged base configs plus the sweep's overrides, as a flat dict of raw YAML values."""
    configs = sweep["base_configs"]
    configs = [configs] if isinstance(configs, str) else configs
    flat, _ = load_yaml_files([repo_path(c) for c in configs])
    overrides = [f"{k}={json.dumps(v)}" for k, v in (sweep.get("overrides") or {}).items()]
    return apply_overrides(flat, overrides)


def resolve(flat: dict, dry_run: bool) -> NeoXConfig:
    """Validate a flat config the way deepy.py does (relative data paths are from the repository root)."""
    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        return validate(config_from_flat(flat), dry_run=dry_run)
    finally:
        os.chdir(cwd)


def searched_components(sweep: dict, train_components: list[str]) -> tuple[list[str], dict]:
    where = sweep["_path"]
    fixed = {str(k): float(v) for k, v in (sweep.get("fixed") or {}).items()}
    for name in list(fixed) + list(sweep.get("components") or []):
        if name not in train_components:
            raise SweepError(f"{where}: component '{name}' is not among the train components "
                             f"{', '.join(train_components)}")
    if fixed and not 0 < sum(fixed.values()) < 1:
        raise SweepError(f"{where}: the 'fixed' shares must sum to between 0 and 1, got {sum(fixed.values()):g}")
    searched = list(sweep.get("components") or [c for c in train_components if c not in fixed])
    left = [c for c in train_components if c not in fixed and c not in searched]
    if left:
        raise SweepError(f"{where}: train component '{left[0]}' is neither in 'components' nor in 'fixed'")
    if set(searched) & set(fixed):
        raise SweepError(f"{where}: component '{sorted(set(searched) & set(fixed))[0]}' is both searched and fixed")
    return searched, fixed


def mixture_points(sweep: dict, searched: list[str]) -> list[tuple[str, list[float]]]:
    """(name, weights over the searched components) of every mixture, in the order listed."""
    spec, where, k = sweep["mixtures"], sweep["_path"], len(searched)
    points = []
    for i, entry in enumerate(spec.get("list") or []):
        w = entry.get("weights") if isinstance(entry, dict) else None
        if isinstance(w, dict):
            w = [w.get(c, 0) for c in searched]
        if not isinstance(w, list) or len(w) != k or any(not isinstance(x, (int, float)) or x < 0 for x in w) \
                or sum(w) <= 0:
            raise SweepError(f"{where}: mixtures.list[{i}]: weights must be {k} non-negative numbers "
                             f"({', '.join(searched)}) with a positive sum")
        points.append((str(entry.get("name", f"mix-{i:02d}")), [float(x) for x in w]))
    if "grid" in spec:
        steps = (spec["grid"] or {}).get("steps")
        if not isinstance(steps, int) or steps < k:
            raise SweepError(f"{where}: mixtures.grid.steps must be an integer >= {k} (the number of components)")
        for parts in compositions(steps, k):
            points.append(("grid-" + "-".join(str(p) for p in parts), [p / steps for p in parts]))
    if "dirichlet" in spec:
        points += dirichlet_points(spec["dirichlet"] or {}, k, where)
    names = [n for n, _ in points]
    dup = next((n for n in names if names.count(n) > 1), None)
    if dup or any(not n or "/" in n or n.startswith(".") for n in names):
        raise SweepError(f"{where}: mixture names must be unique directory names, got '{dup or names}'")
    return points


def compositions(total: int, k: int) -> Iterator[tuple[int, ...]]:
    """All ways to write total as k positive integers (every component keeps some data)."""
    for cuts in itertools.combinations(range(1, total), k - 1):
        bounds = (0, *cuts, total)
        yield tuple(b - a for a, b in zip(bounds, bounds[1:]))


def dirichlet_points(spec: dict, k: int, where: str) -> list[tuple[str, list[float]]]:
    import numpy as np

    n, alpha = spec.get("n"), spec.get("alpha", 1.0)
    if not isinstance(n, int) or n < 1:
        raise SweepError(f"{where}: mixtures.dirichlet.n must be a positive integer")
    alpha = [float(alpha)] * k if isinstance(alpha, (int, float)) else [float(a) for a in alpha]
    if len(alpha) != k or min(alpha) <= 0:
        raise SweepError(f"{where}: mixtures.dirichlet.alpha must be a positive number or {k} of them")
    rng = np.random.default_rng(spec.get("seed", 0))
    return [(f"dirichlet-{i:02d}", [float(x) for x in rng.dirichlet(alpha)]) for i in range(n)]


def full_weights(weights: list[float], searched: list[str], fixed: dict, train_components: list[str]) -> list[float]:
    """Shares of every train component (summing to 1): fixed ones as given, the rest split by weights."""
    free = 1.0 - sum(fixed.values())
    share = dict(zip(searched, (free * w / sum(weights) for w in weights)))
    # never None: searched_components puts every train component in searched or fixed
    return cast(list[float], [fixed.get(c, share.get(c)) for c in train_components])


def scaled_schedule(base: NeoXConfig, train_iters: int) -> dict:
    """Warmup and decay length scaled by train_iters / the base run's train_iters (same LR shape)."""
    s = base.schedule
    f = train_iters / s.train_iters
    warmup = max(1, round(s.warmup_iters * f)) if s.warmup_iters else 0
    return {"train_iters": train_iters, "warmup_iters": warmup,
            "lr_decay_iters": max(warmup + 1, round(s.lr_decay_iters * f))}


def plan_sweep(sweep: dict, out: str, dry_run: bool) -> dict:
    """Every run's config (validated) and planned GPU-hours; nothing is written."""
    flat = base_config(sweep)
    base = resolve(flat, dry_run=True)
    train_components = [component_name(p) for p in base.data.train_data_paths]
    searched, fixed = searched_components(sweep, train_components)
    sel = sweep.get("selection") or {}
    sets = sel.get("sets") or base.data.valid_data_paths
    if not sets:
        raise SweepError(f"{sweep['_path']}: no selection sets: give selection.sets or valid_data_paths in the "
                         "base configs")
    set_names = [component_name(p) for p in sets]
    metric = sel.get("metric", "mean")
    if metric != "mean" and metric not in set_names:
        raise SweepError(f"{sweep['_path']}: selection.metric '{metric}' is neither 'mean' nor one of "
                         f"{', '.join(set_names)}")
    tokens_per_step = base.batch.train_batch_size * base.model.seq_length
    anneal = sweep.get("anneal_from")
    train_iters = anneal_keys(anneal)["train_iters"] if anneal else math.ceil(sweep["tokens_per_run"] / tokens_per_step)
    runs = []
    for name, weights in mixture_points(sweep, searched):
        run_dir = os.path.join(out, "runs", name)
        shares = full_weights(weights, searched, fixed, train_components)
        schedule = anneal_keys(anneal) if anneal else scaled_schedule(base, train_iters)
        keys = {**schedule, "train_data_weights": shares, "valid_data_paths": list(sets),
                "eval_interval": train_iters, "log_dir": os.path.join(run_dir, "logs"),
                "save": os.path.join(run_dir, "checkpoints"), "keep_last_n_checkpoints": 1}
        if sweep.get("initial_checkpoint"):
            keys.update(load=sweep["initial_checkpoint"], finetune=True)
        run_flat = {**flat, **keys}
        try:
            cfg = resolve(run_flat, dry_run=dry_run)
        except ConfigError as e:
            raise ConfigError(f"run {name}: {e}") from None
        info = derived(cfg)
        # an anneal trains only its decay_iters steps: the steps before the branch are the source run's
        trained = anneal["decay_iters"] / train_iters if anneal else 1.0
        hours = info.get("gpu_hours_at_mfu")
        runs.append({"name": name, "dir": run_dir, "config": os.path.join(run_dir, "config.yml"),
                     "flat": run_flat, "weights": dict(zip(train_components, shares)),
                     "train_iters": train_iters, "tokens": round(info["total_tokens"] * trained),
                     "gpu_hours": hours * trained if hours is not None else None, "num_nodes": cfg.parallel.num_nodes,
                     "num_gpus": cfg.parallel.num_gpus, "warnings": cfg.warnings})
    hours = [r["gpu_hours"] for r in runs]
    return {"sweep_file": os.path.abspath(sweep["_path"]), "out": out, "components": train_components,
            "searched": searched, "fixed": fixed, "selection_sets": set_names, "selection_paths": list(sets),
            "selection_metric": metric, "tokens_per_step": tokens_per_step, "planner_mfu": base.planner.planner_mfu,
            "total_gpu_hours": sum(hours) if None not in hours else None, "runs": runs}


def format_plan(plan: dict) -> str:
    comps = plan["components"]
    lines = [f"{'run':<24} " + " ".join(f"{c[:14]:>14}" for c in comps) + f" {'steps':>7} {'tokens':>15} {'GPU-h':>10}"]
    for r in plan["runs"]:
        hours = format_hours(r["gpu_hours"])
        lines.append(f"{r['name']:<24} " + " ".join(f"{100 * r['weights'][c]:>13.2f}%" for c in comps)
                     + f" {r['train_iters']:>7} {r['tokens']:>15,} {hours:>10}")
    total = plan["total_gpu_hours"]
    lines.append(f"{len(plan['runs'])} runs, selection on {', '.join(plan['selection_sets'])} "
                 f"({plan['selection_metric']}); GPU-hours at {100 * plan['planner_mfu']:.1f}% MFU for the "
                 f"whole sweep: {format_hours(total) if total is not None else UNKNOWN_TOTAL}")
    return "\n".join(lines)


def format_hours(hours: float | None) -> str:
    if hours is None:
        return "n/a"
    return f"{hours:,.0f}" if hours >= 100 else f"{hours:.3g}"


def plan_summary(plan: dict) -> dict:
    """What sweep.json and --dry-run's stdout hold (no raw configs)."""
    keep = ("name", "config", "weights", "train_iters", "tokens", "gpu_hours")
    return {**{k: v for k, v in plan.items() if k != "runs"}, "runs": [{k: r[k] for k in keep} for r in plan["runs"]]}


def config_text(plan: dict, run: dict) -> str:
    header = (f"# Mixture sweep run '{run['name']}', written by tools/sweep.py from {plan['sweep_file']}.\n"
              f"# Rerun by hand from the repository root: python deepy.py train.py {run['config']}\n")
    return header + yaml.safe_dump(run["flat"], sort_keys=False, default_flow_style=None, width=120)


def write_configs(plan: dict) -> None:
    """Each run's config; an existing one with other contents is refused (its results would not match)."""
    for run in plan["runs"]:
        text = config_text(plan, run)
        if os.path.isfile(run["config"]):
            with open(run["config"]) as f:
                if f.read() != text:
                    raise SweepError(f"{run['config']} exists with a different config (sweep file changed?): "
                                     "use another --out, or delete that run's directory to retrain it")
            continue
        os.makedirs(run["dir"], exist_ok=True)
        with open(run["config"] + ".tmp", "w") as f:
            f.write(text)
        os.replace(run["config"] + ".tmp", run["config"])
    with open(os.path.join(plan["out"], "sweep.json"), "w") as f:
        json.dump(plan_summary(plan), f, indent=1)


def read_metrics(log_dir: str) -> list[dict]:
    path = os.path.join(log_dir, "metrics.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def final_values(rows: list[dict], train_iters: int, set_names: list[str]) -> dict | None:
    """The final validation losses and tokens per component of a finished run, else None."""
    evals = [r for r in rows if r.get("step") == train_iters and all(f"val/{s}/loss" in r for s in set_names)]
    if not evals:
        return None
    trained = [r for r in rows if any(k.startswith("tokens/") for k in r) and r.get("step", 0) <= train_iters]
    last = max(trained, key=lambda r: r["step"]) if trained else {}
    return {"val": {s: evals[-1][f"val/{s}/loss"] for s in set_names},
            "tokens": {k[len("tokens/"):]: v for k, v in last.items() if k.startswith("tokens/")}}


def is_finished(plan: dict, run: dict) -> bool:
    rows = read_metrics(os.path.join(run["dir"], "logs"))
    return final_values(rows, run["train_iters"], plan["selection_sets"]) is not None


def run_local(plan: dict, todo: list[dict]) -> list[str]:
    """Train the runs one after another; returns the names of those that did not finish."""
    from tqdm import tqdm

    failed = []
    for run in tqdm(todo, desc="mixture runs", unit="run"):
        log = os.path.join(run["dir"], "train.log")
        t0 = time.time()
        with open(log, "a") as f:
            rc = subprocess.call([sys.executable, "-m", "neox.cli.deepy", "train.py", run["config"]],
                                 cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
        done = rc == 0 and is_finished(plan, run)
        tqdm.write(f"run {run['name']}: {'finished' if done else f'FAILED (exit status {rc}), see {log}'} "
                   f"in {time.time() - t0:.0f} s")
        if not done:
            failed.append(run["name"])
    return failed


def submit_slurm(plan: dict, todo: list[dict], sweep: dict) -> int:
    """One Slurm array job over the unfinished runs (slurm/sweep_array.sbatch runs task i's config)."""
    run_list = os.path.join(plan["out"], "slurm_runs.txt")
    with open(run_list, "w") as f:
        f.writelines(r["config"] + "\n" for r in todo)
    os.makedirs(os.path.join(plan["out"], "slurm"), exist_ok=True)  # sbatch does not create it
    opts = sweep.get("slurm") or {}
    array = f"0-{len(todo) - 1}" + (f"%{opts['max_parallel']}" if opts.get("max_parallel") else "")
    first = todo[0]
    # GPUs only when the sweep file asks (slurm: gpus_per_node): a CPU or GRES-less partition refuses them
    gpus = [f"--gpus-per-node={opts['gpus_per_node']}"] if opts.get("gpus_per_node") else []
    cmd = ["sbatch", f"--array={array}", f"--nodes={first['num_nodes']}", f"--ntasks-per-node={first['num_gpus']}",
           *gpus, f"--job-name=sweep-{os.path.basename(os.path.abspath(plan['out']))}",
           f"--output={os.path.join(plan['out'], 'slurm', '%A_%a.out')}",
           f"--export=ALL,SWEEP_RUN_LIST={run_list},REPO={REPO},PYTHON={sys.executable}",
           *[str(a) for a in opts.get("sbatch_args") or []], os.path.join(REPO, "slurm", "sweep_array.sbatch")]
    print("submitting: " + " ".join(cmd), file=sys.stderr)
    r = subprocess.run(cmd, capture_output=True, text=True)
    sys.stdout.write(r.stdout)
    if r.returncode != 0:
        print(f"error: sbatch failed with exit status {r.returncode}: {r.stderr.strip()}", file=sys.stderr)
        return 1
    print(f"submitted {len(todo)} runs; when they are done: python tools/sweep.py compare {plan['out']}",
          file=sys.stderr)
    return 0


def collect_results(sweep_dir: str) -> tuple[dict, list[dict]]:
    path = os.path.join(sweep_dir, "sweep.json")
    if not os.path.isfile(path):
        raise SweepError(f"{path} not found: not a sweep directory (run tools/sweep.py mixture first)")
    with open(path) as f:
        plan = json.load(f)
    results = []
    for run in plan["runs"]:
        rows = read_metrics(os.path.join(os.path.dirname(run["config"]), "logs"))
        final = final_values(rows, run["train_iters"], plan["selection_sets"])
        if final is None:
            print(f"warning: run {run['name']} is not finished (no validation at step {run['train_iters']}); "
                  "left out of the comparison", file=sys.stderr)
            continue
        val = final["val"]
        selection = (sum(val.values()) / len(val) if plan["selection_metric"] == "mean"
                     else val[plan["selection_metric"]])
        results.append({"run": run["name"], "weights": run["weights"], "tokens": final["tokens"], "val": val,
                        "selection_loss": selection, "log_dir": os.path.join(os.path.dirname(run["config"]), "logs")})
    if not results:
        raise SweepError(f"{sweep_dir}: no run is finished yet")
    winner = min(results, key=lambda r: r["selection_loss"])
    for r in results:
        r["winner"] = r is winner
    return plan, results


def write_results_csv(plan: dict, results: list[dict], path: str) -> None:
    comps, sets = plan["components"], plan["selection_sets"]
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", *[f"weight/{c}" for c in comps], *[f"tokens/{c}" for c in comps],
                    *[f"val/{s}/loss" for s in sets], "selection_loss", "winner"])
        for r in results:
            w.writerow([r["run"], *[r["weights"][c] for c in comps], *[r["tokens"].get(c, "") for c in comps],
                        *[r["val"][s] for s in sets], r["selection_loss"], int(r["winner"])])


def write_results_md(plan: dict, results: list[dict], path: str, picture: str) -> None:
    comps, sets = plan["components"], plan["selection_sets"]
    how = ("mean validation loss over " + ", ".join(sets) if plan["selection_metric"] == "mean"
           else f"validation loss on {plan['selection_metric']}")
    head = ["run", *[f"{c} %" for c in comps], *[f"{c} tokens" for c in comps], *[f"val {s}" for s in sets],
            "selection"]
    lines = [f"# Mixture sweep {os.path.basename(plan['out'])}", "",
             f"Selection: {how} after {plan['runs'][0]['tokens']:,} "
             "training tokens per run (lower is better).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        name = f"**{r['run']}** (winner)" if r["winner"] else r["run"]
        cells = [name, *[f"{100 * r['weights'][c]:.2f}" for c in comps],
                 *[f"{r['tokens'].get(c, 0):,}" for c in comps], *[f"{r['val'][s]:.4f}" for s in sets],
                 f"{r['selection_loss']:.4f}"]
        lines.append("| " + " | ".join(cells) + " |")
    win = next(r for r in results if r["winner"])
    lines += ["", f"Winner: **{win['run']}** (" + ", ".join(f"{c} {100 * win['weights'][c]:.2f}%" for c in comps)
              + f"), selection loss {win['selection_loss']:.4f}.", "", f"![validation loss per mixture]({picture})", ""]
    with open(path, "w") as f:
        f.write("\n".join(lines))


def write_olmix(plan: dict, results: list[dict], out_dir: str) -> None:
    """olmix's fitting inputs: ratios.csv (run + one column per domain, rows summing to 1) and
    metrics.csv (run + one column per metric, lower is better), joined on `run`; priors.yaml holds the
    token counts of each domain for olmix's `priors.token_counts`."""
    os.makedirs(out_dir, exist_ok=True)
    comps, sets = plan["components"], plan["selection_sets"]
    with open(os.path.join(out_dir, "ratios.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", *comps])
        w.writerows([r["run"], *[r["weights"][c] for c in comps]] for r in results)
    with open(os.path.join(out_dir, "metrics.csv"), "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["run", *[f"{s}_loss" for s in sets]])
        w.writerows([r["run"], *[r["val"][s] for s in sets]] for r in results)
    mixture = os.path.join(results[0]["log_dir"], "mixture.json")
    if os.path.isfile(mixture):
        with open(mixture) as f:
            counts = {row["component"]: row["tokens_available"] for row in json.load(f)}
        with open(os.path.join(out_dir, "priors.yaml"), "w") as f:
            yaml.safe_dump({"priors": {"token_counts": counts}}, f, sort_keys=False)


def ternary_xy(weights: Sequence[float]) -> tuple[float, float]:
    """A point of the 3-simplex in the plane: corner 0 at (0, 0), 1 at (1, 0), 2 at (1/2, sqrt(3)/2)."""
    a, b, c = (w / sum(weights) for w in weights)
    return b + c / 2, c * math.sqrt(3) / 2


def plot_results(plan: dict, results: list[dict], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    searched = plan["searched"]
    ternary = len(searched) == 3
    fig, axes = plt.subplots(1, 2 if ternary else 1, figsize=(13 if ternary else 7, 5), dpi=100, squeeze=False)
    ax = axes[0, 0]
    xs = range(len(results))
    ax.bar(xs, [r["selection_loss"] for r in results],
           color=["tab:green" if r["winner"] else "tab:gray" for r in results], alpha=0.6, label="selection loss")
    for s in plan["selection_sets"]:
        ax.plot(xs, [r["val"][s] for r in results], "o", label=f"val {s}")
    ax.set_xticks(list(xs), [r["run"] for r in results], rotation=30, ha="right", fontsize=8)
    low = min(min(r["val"].values()) for r in results)
    high = max(max(r["val"].values()) for r in results)
    ax.set_ylim(low - 0.1 * (high - low + 1e-9), high + 0.1 * (high - low + 1e-9))
    ax.set_ylabel("final validation loss")
    ax.set_title("validation loss per mixture (green: winner)")
    ax.legend(fontsize=8)
    if ternary:
        draw_ternary(axes[0, 1], searched, results, fig)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def draw_ternary(ax: Any, searched: list[str], results: list[dict], fig: Any) -> None:
    corners = [ternary_xy(w) for w in ([1, 0, 0], [0, 1, 0], [0, 0, 1])]
    ax.plot(*zip(*corners, corners[0]), color="black", linewidth=1)
    for (x, y), name, dy in zip(corners, searched, (-0.06, -0.06, 0.03)):
        ax.text(x, y + dy, name, ha="center", va="center", fontsize=9)
    pts = [ternary_xy([r["weights"][c] for c in searched]) for r in results]
    sc = ax.scatter(*zip(*pts), c=[r["selection_loss"] for r in results], cmap="viridis_r", s=60, zorder=3)
    for (x, y), r in zip(pts, results):
        ax.text(x, y + 0.035, r["run"], ha="center", fontsize=7)
    win = next(i for i, r in enumerate(results) if r["winner"])
    ax.scatter(*pts[win], marker="*", s=300, facecolor="none", edgecolor="red", zorder=4, label="winner")
    fig.colorbar(sc, ax=ax, label="selection loss")
    ax.set_xlim(-0.15, 1.15)
    ax.set_ylim(-0.1, 0.95)
    ax.set_aspect("equal")
    ax.axis("off")
    ax.set_title("mixtures on the simplex of the searched components")
    ax.legend(loc="upper right", fontsize=8)
