"""Where a program finds the project's files (``data/toy``, ``llemma_configs``, ``slurm``, ``runs``).

From a checkout that is the checkout, whatever the working directory (what the README's commands
and the tests rely on); from an installed wheel it is the working directory.
"""

import os

_PACKAGE_PARENT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def project_root() -> str:
    if os.path.isdir(os.path.join(_PACKAGE_PARENT, "llemma_configs")):
        return _PACKAGE_PARENT
    return os.getcwd()
