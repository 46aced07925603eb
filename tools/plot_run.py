#!/usr/bin/env python
"""Draw one or more training runs from their metrics.jsonl.

The program is neox.cli.plot_run; installed, the same is `llemma-neox plot_run`.
"""

import sys

from neox.cli.plot_run import main

if __name__ == "__main__":
    sys.exit(main())
