"""neox/patches.py: every change to a dependency's internals, checked against the pinned versions."""

import re

import pytest
from conftest import REPO

from neox import patches


@pytest.mark.parametrize("name", sorted(patches.PATCHES))
def test_each_patched_function_is_the_one_the_patch_was_written_for(name):
    """Fails after a version bump that changed a patched function: look at the patch again, then
    record the new fingerprint (patches.PATCHES[name].current_fingerprint())."""
    patch = patches.PATCHES[name]
    assert patches.installed(patch.package) == patches.PINS[patch.package]
    assert patch.current_fingerprint() == patch.fingerprint, (name, patch.relies_on)


def test_the_pins_are_pyprojects():
    text = open(f"{REPO}/pyproject.toml").read()
    for package, version in patches.PINS.items():
        assert re.search(rf'"{package}=={re.escape(version)}"', text), package


def test_a_patch_whose_upstream_changed_is_not_applied_and_says_so(monkeypatch, capsys):
    from deepspeed.runtime import bf16_optimizer

    original = bf16_optimizer.see_memory_usage
    changed = patches.Patch(**{**vars(patches.PATCHES["quiet_bf16_memory_report"]), "fingerprint": "0" * 64})
    monkeypatch.setitem(patches.PATCHES, "quiet_bf16_memory_report", changed)
    monkeypatch.setattr(patches, "_checked", {})
    monkeypatch.setenv("RANK", "0")
    patches.quiet_bf16_memory_report()
    assert bf16_optimizer.see_memory_usage is original
    assert capsys.readouterr().err.strip() == (
        "warning: not applying the patch 'quiet_bf16_memory_report' (neox/patches.py): "
        "deepspeed.runtime.bf16_optimizer.BF16_Optimizer.__init__, "
        "deepspeed.runtime.bf16_optimizer.BF16_Optimizer._setup_for_real_optimizer changed since deepspeed 0.19.8 "
        f"(installed: {patches.installed('deepspeed')}); DeepSpeed prints its bf16 optimizer's memory report at start-up")
