"""The statuses a run ends with: the one table. deepy.py, train.py (every rank) and the tools use
these names; slurm/common.sh requeues on STOPPED and HUNG and its values are tested against this
table (tests/test_job_status.py)."""

OK = 0
FAILED = 1  # an error while working: a one-line error (data, checkpoint) or a traceback
BAD_INPUT = 2  # bad config, usage or input, refused before any expensive work
STOPPED = 75  # stopped on request (SIGTERM / SIGUSR1 / Ctrl-C) after a complete checkpoint: requeue
HUNG = 76  # the step watchdog found a hang (stacks in the log dir): requeue from the last checkpoint

MEANING = {
    OK: "finished",
    FAILED: "failed (error above)",
    BAD_INPUT: "bad config, usage or input; nothing was started",
    STOPPED: "stopped on request after a complete checkpoint; requeue to continue",
    HUNG: "a hang found by the step watchdog; requeue resumes from the newest complete checkpoint",
}
