# Shared body of the training sbatch scripts, sourced after they set their defaults (CONFIGS,
# EXTRA_ARGS). Nothing here needs editing: REPO is the directory sbatch was run from, PYTHON is
# $REPO/.venv/bin/python, and each may be set in the environment (sbatch --export=ALL,KEY=VALUE);
# arguments after the script name replace CONFIGS and EXTRA_ARGS:
#   sbatch [sbatch options] slurm/llemma_7b.sbatch [CONFIG.yml ...] [-o KEY=VALUE ...]
# How a job ends (docs/slurm.md): every rank's own exit status decides (python -m neox.launch.job_status),
# not srun's; a stop on request (exit 75) is requeued unless the job is being cancelled.
set +e -uo pipefail  # no -e: each status below is read and reported
REPO=${REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
if [[ ! -f "$REPO/slurm/launch.sh" ]]; then
  echo "error: REPO=$REPO is not a llemma-neox checkout (no slurm/launch.sh): run sbatch from the" \
       "repository or set REPO (sbatch --export=ALL,REPO=/path/to/llemma-neox ...)" >&2
  exit 2
fi
cd "$REPO" || exit 2
PYTHON=${PYTHON:-$REPO/.venv/bin/python}
export PYTHON
if [[ $# -gt 0 ]]; then
  train_args=("$@")
else
  # shellcheck disable=SC2206  # CONFIGS and EXTRA_ARGS are word lists on purpose
  train_args=($CONFIGS ${EXTRA_ARGS:-})
fi
REQUEUE_EXIT_CODE=75 HUNG_EXIT_CODE=76  # neox/exit_status.py STOPPED, HUNG (tests/test_job_status.py checks)
restart=${SLURM_RESTART_COUNT:-0}
# each rank's exit status (slurm/launch.sh); one directory per start of the job
export NEOX_STATUS_DIR="$REPO/logs/status/${SLURM_JOB_ID:?run with sbatch}-$restart"
mkdir -p "$NEOX_STATUS_DIR"
echo "========== $(date '+%F %T') job $SLURM_JOB_ID, start $((restart + 1)), nodes $SLURM_JOB_NODELIST: ${train_args[*]}"

# Slurm sends USR1 before the time limit (--signal=B:USR1@...) and scancel sends TERM: pass them
# on to the ranks, which checkpoint after the current step and exit 75.
srun_pid="" stop_signal=""
forward() {
  stop_signal=$1
  echo "$(date '+%F %T') signal $1: passed on to the ranks (checkpoint after this step, exit 75)"
  [[ -n "$srun_pid" ]] && kill -"$1" "$srun_pid" 2>/dev/null
  return 0
}
trap 'forward USR1' USR1
trap 'forward TERM' TERM

if [[ -z "$stop_signal" ]]; then
  srun --kill-on-bad-exit=1 --cpu-bind=none bash slurm/launch.sh "${train_args[@]}" &
  srun_pid=$!
  # polled, not `wait`ed on: the forwarding traps above interrupt `wait`, and bash loses the status
  # of a child that ends during that interruption (slurm/launch.sh); a trap runs within half a second
  while kill -0 "$srun_pid" 2>/dev/null; do { sleep 0.5 || true; } 2>/dev/null; done
  wait "$srun_pid" && srun_status=0 || srun_status=$?
  # the ranks are done: a later TERM or USR1 (the time limit's, a requeue's) has nothing to stop, and
  # must not kill the verdict below or scontrol (their children inherit the ignored signals)
  trap '' TERM USR1
  line=$("$PYTHON" -m neox.launch.job_status "$NEOX_STATUS_DIR" "${SLURM_NTASKS:-1}" ${stop_signal:+--stop-requested})
  rc=$?
  if [[ -z "$line" ]]; then  # no Python to ask: srun's own status
    line="srun exited with status $srun_status; the ranks' statuses could not be read (python -m neox.launch.job_status exited $rc)"
    rc=$srun_status
  fi
else  # the signal came before the ranks were started: nothing to checkpoint
  trap '' TERM USR1
  rc=$REQUEUE_EXIT_CODE line="stopped on request before training started (the newest checkpoint stays)"
fi
echo "$(date '+%F %T') $line"

job=$(scontrol show job "$SLURM_JOB_ID" 2>/dev/null)
state=$(grep -o 'JobState=[A-Z_]*' <<< "$job" | cut -d= -f2)
reason=$(grep -o ' Reason=[A-Za-z_]*' <<< "$job" | cut -d= -f2)
requeue=no
if [[ $rc -eq $REQUEUE_EXIT_CODE ]]; then
  # a time-limit warning (USR1) leaves the job RUNNING, and a stop that outlasted the time limit
  # leaves Reason=TimeLimit: requeue. scancel has marked it COMPLETING with no reason: a cancel
  # (the checkpoint stays, nothing is requeued); an external requeue or preemption: Slurm's own.
  if [[ "$state" == RUNNING || "$reason" == TimeLimit ]]; then
    requeue=yes
  else
    echo "$(date '+%F %T') job state $state: not requeued (cancelled, or requeued by Slurm itself)"
  fi
elif [[ $rc -eq $HUNG_EXIT_CODE && $restart -lt ${MAX_HUNG_REQUEUES:-3} && "$state" == RUNNING ]]; then
  requeue=yes  # the step watchdog found a hang: resume from the newest checkpoint, a few times
fi
if [[ $requeue == yes ]]; then
  echo "$(date '+%F %T') requeueing job $SLURM_JOB_ID (Slurm holds a requeued job about 2 minutes before it starts again)"
  scontrol requeue "$SLURM_JOB_ID" || echo "$(date '+%F %T') scontrol requeue failed: the job is not requeued"
fi
exit "$rc"
