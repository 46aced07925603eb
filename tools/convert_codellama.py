#!/usr/bin/env python
"""Hugging Face Llama / Code Llama directory -> trainer checkpoint sharded for tensor parallel.

The program is neox.interop.convert_codellama; installed, the same is `llemma-neox convert_codellama`.
"""

import sys

from neox.interop.convert_codellama import main

if __name__ == "__main__":
    sys.exit(main())
