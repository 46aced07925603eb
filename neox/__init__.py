"""llemma-neox: GPT-NeoX-style continued pretraining of Llama models (the Llemma recipe).

The package by concern (importing it imports nothing else):

- the trainer, flat: ``config`` (typed sections, validation; ``gpt_neox_keys`` the table of
  GPT-NeoX's keys), ``model`` (Llama), ``partition`` (the one table of how each weight is split
  under tensor parallelism), ``distributed``, ``engine`` (DeepSpeed), ``training`` (``Trainer.run``)
  and ``step`` (one step and its policies), ``guard``, ``watchdog``, ``stop_request``,
  ``lr_schedule``, ``head_loss``, ``metrics``, ``speed``, ``planner``, ``local_launch``;
- data: ``tokenizer`` (SentencePiece and Hugging Face tokenizer.json behind one interface),
  ``data`` (datasets, mixture), ``data_check``, ``overlap`` (n-gram scanner);
- ``checkpoint/``: the save/resume protocol (``atomic``), the run's state on disk (``run_state``),
  the save-directory lock, resuming at another layout (``reshard``), reading checkpoint files
  (``files``), the after-save hook (``hooks``);
- ``interop/``: Hugging Face and GPT-NeoX import, export and verification, ``publish_dir``;
- ``cli/``: the programs behind ``deepy.py``, ``train.py``, ``tools/*.py`` and ``llemma-neox``;
- ``exit_status`` (the statuses a job ends with, the contract with Slurm), ``faults`` (test-only
  fault switches), ``job_status``, ``paths``.

Evaluation is the sibling package ``llemma_eval``.
"""
