#!/usr/bin/env python
"""Generate a small, deterministic, math-flavoured stand-in for Proof-Pile-2.

The program is neox.cli.make_toy_corpus; installed, the same is `llemma-neox make_toy_corpus`.
"""

import sys

from neox.cli.make_toy_corpus import main

if __name__ == "__main__":
    sys.exit(main())
