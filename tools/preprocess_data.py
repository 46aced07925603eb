#!/usr/bin/env python
"""Tokenize json-lines documents into a megatron-core indexed dataset (.bin/.idx).

The program is neox.cli.preprocess_data; installed, the same is `llemma-neox preprocess_data`.
"""

import sys

from neox.cli.preprocess_data import main

if __name__ == "__main__":
    sys.exit(main())
