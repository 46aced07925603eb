#!/usr/bin/env python
"""Hugging Face Llama / Code Llama / Llama 3 / Mistral / Qwen2 directory -> trainer checkpoint sharded for
tensor parallel (which families and options: docs/converters.md, "Base models").

The program is neox.interop.convert_codellama; installed, the same is `llemma-neox convert_codellama`.
"""

from _entry import run

if __name__ == "__main__":
    run("neox.interop.convert_codellama")
