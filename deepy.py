#!/usr/bin/env python
"""Launch training the GPT-NeoX way: resolve and validate the config, then start the processes.

The program is neox.cli.deepy; installed, the same is `llemma-neox train CONFIG.yml`.
"""

import sys

from neox.cli.deepy import main

if __name__ == "__main__":
    sys.exit(main())
