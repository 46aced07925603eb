#!/usr/bin/env python
"""Build the training and validation sample-index caches ahead of time, on a CPU node.

The program is neox.cli.build_index_cache; installed, the same is `llemma-neox build_index_cache`.
"""

from _entry import run

if __name__ == "__main__":
    run("neox.cli.build_index_cache")
