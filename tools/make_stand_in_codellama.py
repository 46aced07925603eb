#!/usr/bin/env python
"""A small random Hugging Face Llama that stands in for Code Llama in the toy pipeline and tests.

The program is neox.cli.make_stand_in_codellama; installed, the same is `llemma-neox make_stand_in_codellama`.
"""

from _entry import run

if __name__ == "__main__":
    run("neox.cli.make_stand_in_codellama")
