"""The package as a cluster user installs it: a wheel built from the checkout, installed
non-editable into a fresh virtual environment, run from a directory outside the checkout.

The new environment reaches the test environment's dependencies (torch, DeepSpeed, ...) through a
path file, but not its editable install of this project: ``neox`` must come from the wheel."""

import json
import os
import subprocess
import sys
import zipfile

import pytest
import torch
from conftest import REPO
from safetensors.torch import load_file

from neox.cli import COMMANDS


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    root = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                    "-w", str(root / "dist"), REPO], check=True, cwd=root)
    (wheel,) = (root / "dist").glob("llemma_neox-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    site = next((venv / "lib").glob("python3*/site-packages"))
    deps = [p for p in sys.path if p.endswith("site-packages") and os.path.isdir(p)]
    # a plain path line: the test environment's .pth files (its editable neox) are not processed
    (site / "test_env_deps.pth").write_text("\n".join(deps) + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "-q",
                    "--no-deps", "--no-index", str(wheel)], check=True, cwd=root)
    work = root / "elsewhere"  # not the checkout, not its parent
    work.mkdir()
    return {"wheel": wheel, "python": str(venv / "bin" / "python"), "bin": venv / "bin", "site": str(site),
            "cwd": work}


def run(installed, *cmd, **kw):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
    env["PATH"] = f"{installed['bin']}:{env['PATH']}"
    return subprocess.run(list(cmd), cwd=installed["cwd"], env=env, capture_output=True, text=True, timeout=600,
                          **kw)


@pytest.mark.processes
def test_the_wheel_carries_both_packages(installed):
    names = zipfile.ZipFile(installed["wheel"]).namelist()
    for path in ("neox/__init__.py", "neox/cli/train.py", "neox/cli/deepy.py", "neox/checkpoint/atomic.py",
                 "neox/interop/convert_codellama.py", "neox/exit_status.py", "llemma_eval/cli.py",
                 "llemma_eval/tasks/llemma_math.yaml"):
        assert path in names, path
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "llemma-neox = neox.cli:main" in zipfile.ZipFile(installed["wheel"]).read(entry).decode()


@pytest.mark.processes
def test_neox_is_imported_from_the_wheel(installed):
    r = run(installed, installed["python"], "-c",
            "import neox, neox.interop.convert_codellama, llemma_eval; print(neox.__file__); print(llemma_eval.__file__)")
    assert r.returncode == 0, r.stderr
    for path in r.stdout.split():
        assert path.startswith(installed["site"]) and not path.startswith(REPO + os.sep), path


@pytest.mark.processes
def test_plan_of_llemma_7b_from_outside_the_checkout(installed):
    configs = [os.path.join(REPO, "llemma_configs", name) for name in ("7b.yml", "data_mixture.yml")]
    r = run(installed, "llemma-neox", "train", *configs, "--dry-run")
    assert r.returncode == 0, r.stderr
    d = json.loads(r.stdout)["derived"]  # the same plan as from the checkout (tests/test_first_run.py)
    assert d["vocab_size"] == 32016 and round(d["gpu_hours_at_mfu"]) == 21_005
    assert d["memory_per_gpu_gib"] == pytest.approx(27.9, abs=0.05) and "memory plan skipped" not in r.stderr


@pytest.mark.processes
def test_every_command_has_its_help(installed):
    r = run(installed, "llemma-neox", "--help")
    assert r.returncode == 0 and all(name in r.stdout for name in COMMANDS), r.stdout + r.stderr
    # one process for the rest: each command's argparse --help exits 0 with its usage line
    code = ("import contextlib, io, sys\n"
            "from neox.cli import COMMANDS, main\n"
            "for name in COMMANDS:\n"
            "    out = io.StringIO()\n"
            "    with contextlib.redirect_stdout(out):\n"
            "        try:\n"
            "            main([name, '--help'])\n"
            "            status = 0\n"
            "        except SystemExit as e:\n"
            "            status = e.code\n"
            "    text = out.getvalue()\n"
            "    assert status == 0 and 'usage:' in text and '--help' in text, (name, status, text[:300])\n"
            "    print(name)\n")
    r = run(installed, installed["python"], "-c", code)
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == list(COMMANDS)
    r = run(installed, "llemma-neox", "no_such_tool")
    assert r.returncode == 2 and r.stderr.startswith("error: unknown command 'no_such_tool'")


@pytest.mark.processes
def test_converter_round_trip_from_the_wheel(installed, tok):
    r = run(installed, "llemma-neox", "make_stand_in_codellama", "--out", "hf", "--tokenizer", tok)
    assert r.returncode == 0, r.stderr
    r = run(installed, "llemma-neox", "convert_codellama", "--hf-dir", "hf", "--out", "ckpt", "--tp", "2")
    assert r.returncode == 0, r.stderr
    r = run(installed, "llemma-neox", "export_hf", "--ckpt", "ckpt", "--out", "back", "--dtype", "fp32")
    assert r.returncode == 0, r.stderr
    source = load_file(str(installed["cwd"] / "hf" / "model.safetensors"))
    back = load_file(str(installed["cwd"] / "back" / "model.safetensors"))
    assert set(back) == set(source)
    for name, tensor in source.items():
        assert torch.equal(back[name], tensor), name  # bit-identical through TP=2 and back


@pytest.mark.processes
def test_library_code_is_layered():
    """No sys.path edits outside tests/ and bench/; the trainer (neox/) imports nothing from the
    evaluation package or from tools/ (the llemma-neox table names llemma_eval.cli as a string,
    imported only when that command runs)."""
    import ast

    files = subprocess.run(["git", "ls-files", "*.py", "*.sh"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()
    edits = [f for f in files if not f.startswith(("tests/", "bench/"))
             and "sys.path.insert" in open(os.path.join(REPO, f)).read()]
    assert edits == []
    for f in (f for f in files if f.startswith("neox/") and f.endswith(".py")):
        for node in ast.walk(ast.parse(open(os.path.join(REPO, f)).read())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert not any(n.split(".")[0] in ("llemma_eval", "tools") for n in names), (f, names)


def test_each_tool_is_a_thin_wrapper_of_its_program():
    """tools/X.py for every llemma-neox command (but train: deepy.py), nothing else, and its
    docstring opens with its program's."""
    import ast
    import importlib.util

    tools = sorted(f[:-3] for f in os.listdir(os.path.join(REPO, "tools")) if f.endswith(".py") and f != "_entry.py")
    assert tools == sorted(n for n in COMMANDS if n != "train")
    for name in tools:
        module = COMMANDS[name][0]
        text = open(os.path.join(REPO, "tools", f"{name}.py")).read()
        assert f'run("{module}")' in text and len(text.splitlines()) < 20, name
        program = ast.get_docstring(ast.parse(open(importlib.util.find_spec(module).origin).read()))
        assert ast.get_docstring(ast.parse(text)).startswith(program.split("\n\n")[0]), name
