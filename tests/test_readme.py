"""The README's test command is exactly what CI runs."""

import os
import re

from conftest import REPO


def test_ci_runs_the_readme_test_command():
    readme = open(os.path.join(REPO, "README.md")).read()
    commands = re.findall(r"^    (python3\.11 -m venv .*)$", readme, flags=re.M)
    assert len(commands) == 2, commands  # the two commands the README starts with
    ci = open(os.path.join(REPO, ".ci", "run")).read().strip().splitlines()[-1]
    assert ci == commands[1]
    assert "toy_pipeline.py" in commands[0]
