"""The client state a checkpoint holds, declared once (neox.train.run_state.RunState)."""

import dataclasses

import pytest

from neox.checkpoint.files import CheckpointError
from neox.train.run_state import RunState


def test_what_save_writes_is_what_load_reads():
    state = RunState(step=7, consumed_samples=56, neox_config={"seq_length": 16}, rng={"python": [1, 2]},
                     guard={"skip_batches": [3], "rollbacks": 1})
    written = state.client_state()
    assert set(written) == {f.name for f in dataclasses.fields(RunState)}
    # DeepSpeed hands back the client state with its own keys beside ours
    assert RunState.read({**written, "ds_version": "0.19.8"}, "ckpt/global_step7") == state
    older = {k: v for k, v in written.items() if k not in ("rng", "guard")}
    assert RunState.read(older, "x") == dataclasses.replace(state, rng=None, guard=None)
    with pytest.raises(CheckpointError, match="ckpt/global_step7: not a checkpoint of this trainer "
                                              r"\(client state lacks consumed_samples, neox_config\)"):
        RunState.read({"step": 7}, "ckpt/global_step7")
