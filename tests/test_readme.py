"""The README's test command is exactly what CI runs."""

import os
import re

from conftest import REPO


def test_ci_runs_the_readme_test_command():
    readme = open(os.path.join(REPO, "README.md")).read()
    commands = re.findall(r"^    ((?:bash \.ci/slurm\.sh up && )?python3\.11 -m venv \.venv .*)$", readme, flags=re.M)
    assert len(commands) == 2, commands  # the two commands the README starts with (.venv-bench is another)
    ci = open(os.path.join(REPO, ".ci", "run")).read().strip().splitlines()[-1]
    assert ci == commands[1]
    assert "toy_pipeline.py" in commands[0]


def test_the_repository_points_only_to_its_own_documents():
    """Design notes and published numbers live in docs/; nothing cites a file outside the repository."""
    cited = []
    for root, dirs, files in os.walk(REPO):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("data", "runs", "logs", "build")]
        for name in files:
            if name.endswith((".py", ".md", ".yml", ".sh", ".sbatch")) and name != "test_readme.py":
                text = open(os.path.join(root, name), errors="replace").read()
                cited += [name] * ("DESIGN" + ".md" in text)
    assert cited == []
    readme = open(os.path.join(REPO, "README.md")).read()
    for doc in re.findall(r"`(docs/[\w./-]+)`", readme):
        assert os.path.isfile(os.path.join(REPO, doc)), doc
