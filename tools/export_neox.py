#!/usr/bin/env python
"""Trainer checkpoint -> GPT-NeoX main's checkpoint layout (weights only).

The program is neox.interop.export_neox; installed, the same is `llemma-neox export_neox`.
"""

import sys

from neox.interop.export_neox import main

if __name__ == "__main__":
    sys.exit(main())
