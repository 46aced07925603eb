#!/usr/bin/env python
"""Trainer checkpoint (any step, any TP, ZeRO or not) -> Hugging Face Llama / Mistral / Qwen2 directory.

The program is neox.interop.export_hf; installed, the same is `llemma-neox export_hf`.
"""

from _entry import run

if __name__ == "__main__":
    run("neox.interop.export_hf")
