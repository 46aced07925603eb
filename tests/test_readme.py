"""The README's test command is exactly what CI runs; the documents' links all lead somewhere."""

import glob
import os
import re

import pytest
from conftest import REPO

# The README's test command: CI's .ci/run ends with exactly this line.
TEST_COMMAND = (
    "bash .ci/slurm.sh up && python3.11 -m venv .venv && .venv/bin/pip install -q torch==2.13.0 -e '.[test]'"
    " && .venv/bin/ruff check . && .venv/bin/mypy && .venv/bin/python -m pytest -q tests"
)
README_MAX_LINES = 260


def read(path):
    with open(os.path.join(REPO, path), encoding="utf-8") as f:
        return f.read()


def documents():
    """README.md, docs/*.md and bench/README.md, as paths relative to the repository."""
    docs = sorted(os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md")))
    return ["README.md", *docs, os.path.join("bench", "README.md")]


def test_ci_runs_the_readme_test_command():
    readme = read("README.md")
    commands = re.findall(r"^    ((?:bash \.ci/slurm\.sh up && )?python3\.11 -m venv \.venv .*)$", readme, flags=re.M)
    assert len(commands) == 2, commands  # the two commands the README starts with (.venv-bench is another)
    assert "toy_pipeline.py" in commands[0]
    assert commands[1] == TEST_COMMAND
    ci = read(os.path.join(".ci", "run")).strip().splitlines()[-1]
    assert ci == TEST_COMMAND


def test_readme_is_short_and_names_the_training_command():
    readme = read("README.md")
    assert len(readme.splitlines()) <= README_MAX_LINES
    assert "python deepy.py train.py CONFIG.yml" in readme
    assert "llemma-neox train CONFIG.yml" in readme
    assert "](docs/toy_run.png)" in readme


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
    readme = read("README.md")
    for doc in re.findall(r"`(docs/[\w./-]+)`", readme):
        assert os.path.isfile(os.path.join(REPO, doc)), doc


# ------------------------------------------------------------------------------- links and anchors

def _prose(text):
    """The text without fenced code blocks and inline code spans (links there are not links)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    return re.sub(r"`[^`\n]*`", "", text)


def _links(text):
    """Targets of [text](target) and ![alt](target), without an optional "title"."""
    return re.findall(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)", _prose(text))


def github_slugs(text):
    """The anchors GitHub gives a Markdown file's headings (github-slugger's rules)."""
    text = re.sub(r"^```.*?^```", "", text, flags=re.M | re.S)
    slugs, seen = set(), {}
    for heading in re.findall(r"^#{1,6}[ \t]+(.+?)[ \t]*#*[ \t]*$", text, flags=re.M):
        heading = re.sub(r"!?\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        slugs.add(slug if n == 0 else f"{slug}-{n}")
    return slugs


def test_github_slugs():
    text = "# Results: one H200, 2026-12-04\n## Where a step's time goes\n## `llemma-neox` [cli](x.md)\n## A\n## A\n"
    expected = {"results-one-h200-2026-12-04", "where-a-steps-time-goes", "llemma-neox-cli", "a", "a-1"}
    assert github_slugs(text) == expected


def test_every_relative_link_resolves():
    """Every relative link in README.md, docs/*.md and bench/README.md names an existing file in the
    repository, and every #anchor a heading of its target."""
    broken = []
    for doc in documents():
        for target in _links(read(doc)):
            if re.match(r"^[a-z][a-z0-9+.-]*:", target, flags=re.I):  # https:, mailto:, ...
                continue
            path, _, anchor = target.partition("#")
            resolved = os.path.normpath(os.path.join(os.path.dirname(doc), path)) if path else doc
            if resolved.startswith(".."):
                broken.append(f"{doc}: {target} (outside the repository)")
            elif not os.path.exists(os.path.join(REPO, resolved)):
                broken.append(f"{doc}: {target} (no such file)")
            elif anchor:
                if not resolved.endswith(".md") or os.path.isdir(os.path.join(REPO, resolved)):
                    broken.append(f"{doc}: {target} (an anchor in a file that is not Markdown)")
                elif anchor not in github_slugs(read(resolved)):
                    broken.append(f"{doc}: {target} (no such heading in {resolved})")
    assert broken == []


def test_the_link_check_finds_links():
    """The documents link to one another (a guard against a link pattern that matches nothing)."""
    readme_links = _links(read("README.md"))
    assert "docs/config.md" in readme_links and "docs/toy_run.png" in readme_links
    assert any("#" in link for doc in documents() for link in _links(read(doc)))


PLANTED = """import subprocess
import pytest

def test_unmarked():
    subprocess.run(["true"], check=True)

@pytest.mark.processes
def test_marked():
    subprocess.run(["true"], check=True)
"""


@pytest.mark.processes
def test_an_unmarked_test_that_starts_a_process_fails_naming_the_marker(tmp_path):
    """The quick set stays quick: tests/conftest.py refuses a process to a test without the marker."""
    import shutil
    import subprocess
    import sys

    shutil.copy(os.path.join(REPO, "tests", "conftest.py"), tmp_path / "conftest.py")
    (tmp_path / "test_planted.py").write_text(PLANTED)
    r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore", "test_planted.py"],
                       cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert "1 failed, 1 passed" in r.stdout, r.stdout[-2000:]
    assert ("test_planted.py::test_unmarked starts a process: mark it @pytest.mark.processes (docs/tests.md, the quick "
            "set)") in r.stdout


def test_the_base_model_options_table_is_the_declared_one():
    """docs/converters.md's options table is neox.model.hf_compat.BASE_OPTIONS rendered."""
    from neox.model.hf_compat import markdown_table

    assert markdown_table() in read(os.path.join("docs", "converters.md")), (
        "paste python -c 'from neox.model.hf_compat import markdown_table; print(markdown_table())'")
