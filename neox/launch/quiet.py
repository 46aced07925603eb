"""Library start-up chatter that tells a user nothing: silenced once, before megatron is imported."""

import os
import warnings


def quiet_library_messages() -> None:
    # megatron-core warns at import that optional CUDA libraries are absent (we use neither) and, on
    # every TP layer, about a CUDA setting; neither is actionable here.
    warnings.filterwarnings("ignore", message="Transformer Engine and Apex are not installed")
    warnings.filterwarnings("ignore", message="When using async grad allreduce it is recommended")
    import torch

    if not torch.cuda.is_available():  # DeepSpeed otherwise warns that it fell back to its CPU accelerator
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
