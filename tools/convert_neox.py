#!/usr/bin/env python
"""GPT-NeoX Llama checkpoint -> trainer checkpoint sharded for tensor parallel (weights only).

The program is neox.interop.convert_neox; installed, the same is `llemma-neox convert_neox`.
"""

from _entry import run

if __name__ == "__main__":
    run("neox.interop.convert_neox")
