#!/usr/bin/env python
"""Trainer checkpoint (any step, any TP, ZeRO or not) -> Hugging Face Llama directory.

The program is neox.interop.export_hf; installed, the same is `llemma-neox export_hf`.
"""

import sys

from neox.interop.export_hf import main

if __name__ == "__main__":
    sys.exit(main())
