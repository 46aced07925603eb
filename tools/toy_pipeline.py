#!/usr/bin/env python
"""The whole Llemma pipeline at toy scale, on CPU, with nothing downloaded.

The program is neox.cli.toy_pipeline; installed, the same is `llemma-neox toy_pipeline`.
"""

from _entry import run

if __name__ == "__main__":
    run("neox.cli.toy_pipeline")
