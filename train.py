#!/usr/bin/env python
"""Training entry point: one process per GPU.

The program is neox.cli.train; deepy.py starts one per GPU (installed: `llemma-neox train`).
"""

import sys

from neox.cli.train import main

if __name__ == "__main__":
    sys.exit(main())
