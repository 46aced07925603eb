#!/usr/bin/env python
"""A small random Hugging Face Llama that stands in for Code Llama in the toy pipeline and tests.

The program is neox.cli.make_stand_in_codellama; installed, the same is `llemma-neox make_stand_in_codellama`.
"""

import sys

from neox.cli.make_stand_in_codellama import main

if __name__ == "__main__":
    sys.exit(main())
