"""llemma-neox: GPT-NeoX-style continued pretraining of Llama models (the Llemma recipe).

The package is laid out in rooms by concern; ``LAYERS`` below declares which room builds on which
(a room may import the rooms it builds on and, through them, theirs: the closure), and
tests/test_layers.py reads every import of ``neox`` and ``llemma_eval`` (inside functions too) and
fails on one against these layers or on any import cycle. Importing this package imports nothing.
"""

ROOMS = {
    "base": "errors (one base class, one-line errors, missing extras), "
            "exit_status (the statuses a job ends with), paths, patches (every change to a dependency's "
            "internals, fingerprinted at the pinned versions), log (logging with a rank filter)",
    "launch": "a job's processes: the local launcher behind deepy.py, distributed set-up, stop requests, "
              "the hang watchdog, the Slurm verdict (job_status), ports, test-only fault switches",
    "model": "Llama, the one table of how each weight is split under tensor parallelism (partition), "
             "Hugging Face names and families, RoPE scalings, the head loss, FLOPs and the planner",
    "data": "tokenizers, preprocessing, the dataset and mixture, data checks, n-gram overlap and "
            "decontamination, the toy corpus",
    "config": "the typed config sections, loading and validation, GPT-NeoX's keys",
    "checkpoint": "the save/resume protocol, reading checkpoint files, the save-directory lock, resharding, "
                  "RNG state, the after-checkpoint command",
    "interop": "Hugging Face and GPT-NeoX import, export and verification",
    "train": "the trainer, one step and its policies, the DeepSpeed engine, the loss guard, the LR "
             "schedule, validation, metrics, speed, the run's state in checkpoints (one load path)",
    "runs": "what is done with whole runs: mixture sweeps, plots of a run",
    "llemma_eval": "evaluation (the sibling package): lm-eval tasks, scoring protocols, checkers, sandbox",
    "cli": "the programs behind deepy.py, train.py, tools/*.py and llemma-neox: arguments in, library called",
}

# room -> the rooms it builds on directly (what it may import is the closure of these arrows)
LAYERS = {
    "base": (),
    "launch": ("base",),
    "model": ("base",),
    "data": ("launch",),
    "config": ("model", "data"),
    "checkpoint": ("config",),
    "interop": ("checkpoint",),
    "train": ("checkpoint",),
    "runs": ("config",),
    "llemma_eval": ("interop",),
    "cli": ("interop", "train", "runs", "llemma_eval"),
}


def room_of(module: str) -> str:
    """``neox.train.step`` (or ``neox.train``) -> ``train``; a module at the top of neox/ -> ``base``."""
    parts = module.split(".")
    if parts[0] == "llemma_eval":
        return "llemma_eval"
    return parts[1] if len(parts) > 1 and parts[1] in LAYERS else "base"


def may_import(room: str) -> set[str]:
    """The rooms ``room`` may import: itself and everything it builds on, directly or not."""
    seen, todo = {room}, list(LAYERS[room])
    while todo:
        r = todo.pop()
        if r not in seen:
            seen.add(r)
            todo.extend(LAYERS[r])
    return seen


def mermaid() -> str:
    """The declared layers as a Mermaid flowchart (an arrow: builds on), for the README and docs."""
    lines = ["```mermaid", "flowchart BT"]
    lines += [f"    {room} --> {below}" for room, belows in LAYERS.items() for below in belows]
    return "\n".join(lines + ["```"])


def room_list() -> str:
    """The rooms as a Markdown list, for the README."""
    where = {"base": "`neox/*.py`", "llemma_eval": "`llemma_eval/`"}
    return "\n".join(f"- {where.get(room, f'`neox/{room}/`')}: {text}." for room, text in ROOMS.items())
