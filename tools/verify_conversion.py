#!/usr/bin/env python
"""Prove a trainer checkpoint computes the same function as a Hugging Face model.

The program is neox.interop.verify_conversion; installed, the same is `llemma-neox verify_conversion`.
"""

from _entry import run

if __name__ == "__main__":
    run("neox.interop.verify_conversion")
