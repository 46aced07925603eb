"""What every tools/*.py does: run its program's main() from the package, installed or editable
(tools/ is the script's own folder on sys.path, so this module is found without any path edit)."""

import importlib
import os
import sys


def run(module: str):
    try:
        main = importlib.import_module(module).main
    except ModuleNotFoundError as e:
        if e.name not in ("neox", "llemma_eval"):
            raise
        sys.exit(f"error: llemma-neox is not installed in this Python ({sys.executable}): run "
                 "pip install -e . in the checkout first (README, Quick start)")
    from neox.errors import one_line_errors

    with one_line_errors(f"tools/{os.path.basename(sys.argv[0])}"):
        sys.exit(main())
