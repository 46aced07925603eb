#!/usr/bin/env bash
# One training task per GPU, started by `srun` (one task per GPU). Rank, world size and the master
# address come from Slurm itself: no ssh, no pdsh, no hostfile.
#   srun bash slurm/launch.sh CONFIG.yml [MORE.yml ...] [-o KEY=VALUE ...]
# NEOX_LAUNCH_DRY_RUN=1 prints the environment and command instead of running it.
set -euo pipefail

: "${SLURM_PROCID:?run under srun}" "${SLURM_NTASKS:?}" "${SLURM_LOCALID:?}" "${SLURM_JOB_NODELIST:?}"
if [[ -z "${MASTER_ADDR:-}" ]]; then  # the first node of the allocation (no `| head`: SIGPIPE)
  hosts="$(scontrol show hostnames "$SLURM_JOB_NODELIST")"
  MASTER_ADDR="${hosts%%$'\n'*}"
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
exec "${cmd[@]}"
