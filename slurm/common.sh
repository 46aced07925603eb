# Shared body of the sbatch scripts (sourced after they set REPO, PYTHON, CONFIGS, EXTRA_ARGS).
set -euo pipefail
cd "$REPO"
export PYTHON
mkdir -p logs

# Slurm sends USR1 a few minutes before the time limit (--signal=B:USR1@...): pass it on to every
# task so the trainer can checkpoint and stop (see README, reliability), then requeue the job.
srun_pid=""
forward() { echo "$(date) signal $1: forwarding to tasks"; [[ -n "$srun_pid" ]] && kill -"$1" "$srun_pid" 2>/dev/null || true; }
trap 'forward USR1' USR1
trap 'forward TERM' TERM

# shellcheck disable=SC2086  # CONFIGS and EXTRA_ARGS are word lists on purpose
srun --kill-on-bad-exit=1 --cpu-bind=none bash slurm/launch.sh $CONFIGS $EXTRA_ARGS &
srun_pid=$!
rc=0
while true; do  # `wait` returns early when a trapped signal arrives; keep waiting for srun
  wait "$srun_pid" && rc=0 || rc=$?
  kill -0 "$srun_pid" 2>/dev/null || break
done
echo "$(date) training exited with status $rc"
if [[ $rc -eq ${REQUEUE_EXIT_CODE:-75} ]]; then  # the trainer stopped early to be continued
  scontrol requeue "$SLURM_JOB_ID"
elif [[ $rc -eq 76 && ${SLURM_RESTART_COUNT:-0} -lt ${MAX_HUNG_REQUEUES:-3} ]]; then
  # the step watchdog found a hang (stacks in the log dir): resume from the newest checkpoint, a few times
  scontrol requeue "$SLURM_JOB_ID"
fi
exit "$rc"
