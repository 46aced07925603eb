#!/usr/bin/env bash
# One training task per GPU, started by `srun` (one task per GPU). Rank, world size and the master
# address come from Slurm itself: no ssh, no pdsh, no hostfile.
#   srun bash slurm/launch.sh CONFIG.yml [MORE.yml ...] [-o KEY=VALUE ...]
# MASTER_ADDR: the first node of the allocation, as an IP address (resolved here, so every rank
# reaches it even where node names do not resolve on the nodes); set MASTER_ADDR to override.
# With NEOX_STATUS_DIR set (slurm/common.sh sets it), the rank's exit status and end time go to
# $NEOX_STATUS_DIR/rank<R>, read by python -m neox.launch.job_status to name the rank that failed first.
# NEOX_LAUNCH_DRY_RUN=1 prints the environment and command instead of running it.
set -euo pipefail
# Slurm signals every process of the task, this shell too: the trainer handles them (checkpoint,
# exit 75; noted from its first line on). Caught here (not ignored) until the trainer starts, so it
# starts with the default dispositions; ignored once it runs (below)
trap ':' TERM USR1 INT

: "${SLURM_PROCID:?run under srun}" "${SLURM_NTASKS:?}" "${SLURM_LOCALID:?}" "${SLURM_JOB_NODELIST:?}"
if [[ -z "${MASTER_ADDR:-}" ]]; then  # the first node of the allocation (no `| head`: SIGPIPE)
  hosts="$(scontrol show hostnames "$SLURM_JOB_NODELIST")"
  first="${hosts%%$'\n'*}"
  # the node's address: Slurm's own record of it, else the resolver's; a name that resolves nowhere
  # would leave torch's rendezvous retrying until its timeout
  node_addr="$(scontrol show node "$first" 2>/dev/null | grep -o 'NodeAddr=[^ ]*' | cut -d= -f2 || true)"
  addr=""
  for name in $node_addr $first; do
    addr="$(getent ahostsv4 "$name" 2>/dev/null | awk '{print $1; exit}' || true)"
    [[ -n "$addr" ]] && break
  done
  if [[ -z "$addr" ]]; then
    echo "error: the first node '$first' of the allocation has no address this node can resolve;" \
         "set MASTER_ADDR to its IP address (sbatch --export=ALL,MASTER_ADDR=...)" >&2
    exit 2
  fi
  MASTER_ADDR="$addr"
fi
MASTER_PORT="${MASTER_PORT:-$((20000 + ${SLURM_JOB_ID:-0} % 20000))}"
export MASTER_ADDR MASTER_PORT
export RANK="$SLURM_PROCID" WORLD_SIZE="$SLURM_NTASKS" LOCAL_RANK="$SLURM_LOCALID"
export NEOX_NUM_NODES="${SLURM_NNODES:-${SLURM_JOB_NUM_NODES:-1}}"

cd "$(dirname "${BASH_SOURCE[0]}")/.."
cmd=("${PYTHON:-python}" train.py "$@")
if [[ -n "${NEOX_LAUNCH_DRY_RUN:-}" ]]; then
  echo "RANK=$RANK WORLD_SIZE=$WORLD_SIZE LOCAL_RANK=$LOCAL_RANK NODES=$NEOX_NUM_NODES MASTER_ADDR=$MASTER_ADDR MASTER_PORT=$MASTER_PORT"
  echo "${cmd[*]}"
  exit 0
fi
if [[ -z "${NEOX_STATUS_DIR:-}" ]]; then
  exec "${cmd[@]}"
fi
"${cmd[@]}" &
child=$!
# from here the trainer alone handles the task's signals: a trapped signal interrupts `wait`, and
# bash loses the status of a child that ends during that interruption (srun's SIGTERM to the other
# ranks as the first exits 75 made their 75 read as 143). Ignored, they leave `wait` alone, which
# returns the moment the trainer ends (the end time decides which rank failed first).
trap '' TERM USR1 INT
wait "$child" && status=0 || status=$?
mkdir -p "$NEOX_STATUS_DIR"
echo "$status $(date +%s.%N)" > "$NEOX_STATUS_DIR/rank$RANK"
exit "$status"
