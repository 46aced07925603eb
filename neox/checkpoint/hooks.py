"""The trainer's optional `eval_after_checkpoint: <command>`: run it after each complete checkpoint.

The command is a shell command with placeholders {ckpt} (the run's save directory), {step} and
{tag} (global_step<N>), e.g.
    sbatch slurm/evaluate.sbatch {ckpt} runs/7b/eval {step} --tasks llemma_math,llemma_gsm8k
It is started in its own session, with the stop signals unblocked (neox.launch.stop_request), its output
appended to <ckpt>/eval_after_checkpoint.log, and not waited for: training goes on while it runs
(or while sbatch queues the job).
"""

import os
import subprocess

from neox.config.hooks import check_command
from neox.launch.stop_request import with_stop_signals


def after_checkpoint(command: str, ckpt_dir: str, step: int) -> subprocess.Popen:
    """Starts command for checkpoint global_step<step> of ckpt_dir; returns at once."""
    check_command(command)
    line = command.format(ckpt=ckpt_dir, step=step, tag=f"global_step{step}")
    log = open(os.path.join(ckpt_dir, "eval_after_checkpoint.log"), "a")
    log.write(f"[step {step}] {line}\n")
    log.flush()
    try:
        # a program of its own: the stop signals the trainer blocks (neox.launch.stop_request) act on it again
        return subprocess.Popen(with_stop_signals(["/bin/sh", "-c", line]), stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        log.close()  # the child holds its own copy
