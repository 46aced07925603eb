"""The CUDA RNG state in checkpoints is this rank's GPU's, so a job that sees fewer GPUs resumes
(torch.cuda faked: CI has no GPU)."""

import torch

from neox.checkpoint import rng as resilience


def fake_cuda(monkeypatch, device_count: int, current: int):
    restored = []

    def set_rng_state(state, device="cuda"):
        restored.append(state)

    def set_rng_state_all(states):  # torch's: one state per index, an IndexError past the last GPU
        if len(states) > device_count:
            raise IndexError("tuple index out of range")

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: current)
    monkeypatch.setattr(torch.cuda, "get_rng_state", lambda device="cuda": torch.tensor([current], dtype=torch.uint8))
    monkeypatch.setattr(torch.cuda, "get_rng_state_all",
                        lambda: [torch.tensor([i], dtype=torch.uint8) for i in range(device_count)])
    monkeypatch.setattr(torch.cuda, "set_rng_state", set_rng_state)
    monkeypatch.setattr(torch.cuda, "set_rng_state_all", set_rng_state_all)
    return restored


def test_saved_state_is_this_gpus_and_resumes_on_one_gpu(monkeypatch):
    fake_cuda(monkeypatch, device_count=8, current=3)  # saved by local rank 3 of an 8-GPU node
    state = resilience.rng_state()
    assert torch.equal(state["cuda"], torch.tensor([3], dtype=torch.uint8))
    restored = fake_cuda(monkeypatch, device_count=1, current=0)  # resumed where one GPU is visible
    resilience.restore_rng(state)
    assert len(restored) == 1 and torch.equal(restored[0], torch.tensor([3], dtype=torch.uint8))


def test_older_checkpoints_with_every_gpus_state(monkeypatch):
    old = {**resilience.rng_state(), "cuda": [torch.tensor([i], dtype=torch.uint8) for i in range(8)]}
    restored = fake_cuda(monkeypatch, device_count=2, current=1)
    resilience.restore_rng(old)  # set_rng_state_all would raise here: 8 states, 2 GPUs
    assert torch.equal(restored[0], torch.tensor([1], dtype=torch.uint8))
    restored = fake_cuda(monkeypatch, device_count=16, current=12)
    resilience.restore_rng(old)  # more GPUs than states: the last one
    assert torch.equal(restored[0], torch.tensor([7], dtype=torch.uint8))
