"""Where a program finds the project's files (``data/toy``, ``llemma_configs``, ``slurm``, ``runs``).

From a checkout that is the checkout, whatever the working directory (what the README's commands
and the tests rely on); from an installed wheel it is the working directory.
"""

import hashlib
import os

_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def project_root() -> str:
    if os.path.isdir(os.path.join(_PACKAGE_PARENT, "llemma_configs")):
        return _PACKAGE_PARENT
    return os.getcwd()


def sha256_of(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 24), b""):
            h.update(chunk)
    return h.hexdigest()
