#!/usr/bin/env python
"""Trainer checkpoint -> GPT-NeoX main's checkpoint layout (weights only).

The program is neox.interop.export_neox; installed, the same is `llemma-neox export_neox`.
"""

from _entry import run

if __name__ == "__main__":
    run("neox.interop.export_neox")
