"""Errors an entry point reports as one line: NeoxError, the base of every error class of the
project (config, data, tokenizer, checkpoint, guard, overlap, preprocessing, sweep, evaluation),
whose message is the line and whose ``exit_status`` the program's status; and an optional
dependency that is not installed, named with the extra that installs it (pyproject.toml's
[project.optional-dependencies]) instead of a ModuleNotFoundError traceback. Stdlib only."""

from __future__ import annotations

import contextlib
import importlib.util
import sys
from collections.abc import Iterator

from neox.exit_status import FAILED

# top-level module -> (its pip name, the extra of llemma-neox that installs it)
OPTIONAL = {
    "lm_eval": ("lm-eval", "eval"),
    "math_verify": ("math-verify", "eval"),
    "vllm": ("vllm", "eval-gpu"),
    "matplotlib": ("matplotlib", "plot"),
    "tensorboard": ("tensorboard", "tensorboard"),
    "wandb": ("wandb", "wandb"),
    "flash_attn": ("flash-attn", "gpu"),
    "litgpt": ("litgpt", "bench"),
}


class NeoxError(Exception):
    """An error the user can act on: its message is one line naming the key, file or value."""

    exit_status = FAILED


class MissingExtra(NeoxError):
    """An optional dependency this command needs is not installed."""

    def __init__(self, module: str, needed_for: str):
        package, extra = OPTIONAL[module]
        super().__init__(f"{needed_for} needs {package}, which is not installed in this Python: pip install -e "
                         f"'.[{extra}]' in the checkout (or pip install 'llemma-neox[{extra}]')")


def require(needed_for: str, *modules: str) -> None:
    """Raise MissingExtra for the first of ``modules`` that cannot be imported (a cheap lookup,
    before any work starts)."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            raise MissingExtra(module, needed_for)


def missing_extra_line(e: ModuleNotFoundError, needed_for: str) -> str | None:
    """The one line for a ModuleNotFoundError of an optional dependency; None for any other module
    (a broken installation keeps its traceback)."""
    top = (e.name or "").split(".")[0]
    return str(MissingExtra(top, needed_for)) if top in OPTIONAL else None


@contextlib.contextmanager
def one_line_errors(command: str) -> Iterator[None]:
    """Around an entry point's main(): a NeoxError a program did not report itself, or a missing
    optional dependency, ends it with one `error:` line and the error's status, not a traceback."""
    try:
        yield
    except NeoxError as e:
        print(f"error: {e}", file=sys.stderr)
        raise SystemExit(e.exit_status) from None
    except ModuleNotFoundError as e:
        line = missing_extra_line(e, command)
        if line is None:
            raise
        print(f"error: {line}", file=sys.stderr)
        raise SystemExit(FAILED) from None
