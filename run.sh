#!/bin/bash
# molsteer inside one batch job: `qsub run.sh` (PBS Pro), or `sbatch run.sh` (Slurm; the #PBS lines are then
# ignored, as the #SBATCH lines are by PBS). Edit the resource lines below for your machine and project.
#
# The job's nodes are split by run.py --site pbs: the last --ml-nodes nodes serve ml, the rest serve QC, and a
# real mpiexec starts one worker pool per node. Redis runs on this (the head) node for the job's lifetime and is
# stopped when the job ends, however it ends.
#
# Submit from the molsteer directory (the job starts there and uses its scripts/ and .venv).
#
# Options for run.py:   qsub -v MOLSTEER_ARGS="forcefield --qc-budget 800" run.sh
#                       sbatch run.sh forcefield --qc-budget 800        (or MOLSTEER_ARGS as above)
# Environment:          MOLSTEER_ACTIVATE  shell line that activates the environment (default: ./.venv)
#                       MOLSTEER_REDIS_PORT  Redis port on the head node (default: a free one)
#
#PBS -N molsteer
#PBS -l select=3
#PBS -l walltime=01:00:00
#PBS -l filesystems=home
#PBS -q debug
#PBS -A YOUR_PROJECT
#PBS -j oe
#SBATCH --job-name=molsteer
#SBATCH --nodes=3
#SBATCH --time=01:00:00
#SBATCH --partition=debug

set -euo pipefail

cd "${PBS_O_WORKDIR:-${SLURM_SUBMIT_DIR:-$(dirname "$(readlink -f "$0")")}}"
# shellcheck source=scripts/launch-common.sh
source scripts/launch-common.sh
activate_environment
if [ -n "${COBALT_NODEFILE:-}" ] && [ -z "${PBS_NODEFILE:-}" ]; then
    export PBS_NODEFILE=$COBALT_NODEFILE  # a Cobalt-era job reads its nodes the PBS way
fi
port=${MOLSTEER_REDIS_PORT:-$(free_port)}
job=${PBS_JOBID:-${SLURM_JOB_ID:-$$}}

redis_pid="" redis_dir="" run_pid=""
cleanup() {
    status=$?
    trap - EXIT INT TERM
    if [ -n "$run_pid" ] && kill -0 "$run_pid" 2> /dev/null; then
        kill -TERM "$run_pid" 2> /dev/null || true  # run.py shuts down cleanly and records what was out
        wait "$run_pid" 2> /dev/null || status=$?
    fi
    stop_process "$redis_pid"
    [ -z "$redis_dir" ] || rm -rf "$redis_dir"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

start_redis "$port" run.sh
guard $$ "$redis_dir" "$redis_pid"
echo "run.sh: Redis on 127.0.0.1:$port (pid $redis_pid) for job $job"

# The campaign's options first (a campaign name must lead), then where this job's workers and Redis are.
# shellcheck disable=SC2086  # MOLSTEER_ARGS is split into options on purpose
python run.py ${MOLSTEER_ARGS:-} "$@" --site pbs --redis-port "$port" &
run_pid=$!
wait "$run_pid"
