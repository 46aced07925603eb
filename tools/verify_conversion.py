#!/usr/bin/env python
"""Prove a trainer checkpoint computes the same function as a Hugging Face model.

The program is neox.interop.verify_conversion; installed, the same is `llemma-neox verify_conversion`.
"""

import sys

from neox.interop.verify_conversion import main

if __name__ == "__main__":
    sys.exit(main())
