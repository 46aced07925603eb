"""neox/errors.py: one base class for every error the project reports as one line."""

import ast
import importlib
import os

import pytest
from conftest import REPO

from neox.errors import NeoxError, one_line_errors


def exception_classes():
    """(module, class name) of every class in neox/ and llemma_eval/ that derives from an exception."""
    found = []
    for package in ("neox", "llemma_eval"):
        for root, _, files in os.walk(os.path.join(REPO, package)):
            for name in files:
                if not name.endswith(".py"):
                    continue
                path = os.path.join(root, name)
                module = os.path.relpath(path, REPO)[:-3].replace(os.sep, ".").removesuffix(".__init__")
                for node in ast.parse(open(path).read()).body:
                    bases = [ast.unparse(b) for b in getattr(node, "bases", [])]
                    if isinstance(node, ast.ClassDef) and any(b.endswith(("Error", "Exception", "Unavailable"))
                                                              for b in bases):
                        found.append((module, node.name))
    return found


def test_every_error_class_is_a_neox_error():
    classes = exception_classes()
    assert len(classes) >= 13, classes
    for module, name in classes:
        cls = getattr(importlib.import_module(module), name)
        assert issubclass(cls, NeoxError), f"{module}.{name} does not derive from neox.errors.NeoxError"


def test_an_error_a_program_did_not_report_is_one_line_with_its_status(capsys):
    from neox.checkpoint.files import CheckpointError
    from neox.config import ConfigError

    for error, status in ((ConfigError("key 'seed' must be int, got 'x'"), 2), (CheckpointError("no checkpoint"), 1)):
        with pytest.raises(SystemExit) as stop, one_line_errors("llemma-neox train"):
            raise error
        assert stop.value.code == status
        assert capsys.readouterr().err == f"error: {error}\n"
