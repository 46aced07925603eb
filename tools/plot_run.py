#!/usr/bin/env python
"""Draw one or more training runs from their metrics.jsonl.

The program is neox.cli.plot_run; installed, the same is `llemma-neox plot_run`.
"""

from _entry import run

if __name__ == "__main__":
    run("neox.cli.plot_run")
