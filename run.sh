#!/bin/bash
# molsteer inside one batch job: `qsub run.sh` (PBS Pro), or `sbatch run.sh` (Slurm; the #PBS lines are then
# ignored, as the #SBATCH lines are by PBS). Edit the resource lines below for your machine and project.
#
# The job's nodes are split by run.py --site pbs: the last --ml-nodes nodes serve ml, the rest serve QC, and a
# real mpiexec starts one worker pool per node. Redis runs on this (the head) node for the job's lifetime and is
# stopped when the job ends, however it ends.
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
if [ -n "${MOLSTEER_ACTIVATE:-}" ]; then
    eval "$MOLSTEER_ACTIVATE"
elif [ -f .venv/bin/activate ]; then
    # shellcheck disable=SC1091
    source .venv/bin/activate
fi
if [ -n "${COBALT_NODEFILE:-}" ] && [ -z "${PBS_NODEFILE:-}" ]; then
    export PBS_NODEFILE=$COBALT_NODEFILE  # a Cobalt-era job reads its nodes the PBS way
fi

port=${MOLSTEER_REDIS_PORT:-$(python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
job=${PBS_JOBID:-${SLURM_JOB_ID:-$$}}
redis_dir=$(mktemp -d "${TMPDIR:-/tmp}/molsteer-redis.XXXXXX")
MOLSTEER_REDIS_PASSWORD=$(python -c 'import secrets; print(secrets.token_hex(24))')
export MOLSTEER_REDIS_PASSWORD  # run.py reads it from here; it never appears on a command line

# If this script is killed outright (kill -9, where no trap runs), a guard in its own session, which a
# process-group kill does not reach, still stops what the script started, within a second.
guard() {  # guard WATCHED_PID DIRECTORY_TO_REMOVE PID...
    setsid bash -c 'watched=$1 dir=$2; shift 2
        while [ "$(cut -d" " -f3 "/proc/$watched/stat" 2> /dev/null || echo gone)" != gone ] &&
              [ "$(cut -d" " -f3 "/proc/$watched/stat" 2> /dev/null)" != Z ]; do sleep 1; done
        kill -TERM "$@" 2> /dev/null; rm -rf "$dir"' guard "$@" < /dev/null > /dev/null 2>&1 &
}

redis_pid="" run_pid=""
cleanup() {
    status=$?
    trap - EXIT INT TERM
    if [ -n "$run_pid" ] && kill -0 "$run_pid" 2> /dev/null; then
        kill -TERM "$run_pid" 2> /dev/null || true  # run.py shuts down cleanly and records what was out
        wait "$run_pid" 2> /dev/null || status=$?
    fi
    if [ -n "$redis_pid" ]; then
        kill -TERM "$redis_pid" 2> /dev/null || true
        wait "$redis_pid" 2> /dev/null || true
    fi
    rm -rf "$redis_dir"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

# The password goes in through standard input (`redis-server -`), so `ps` never shows it.
printf 'requirepass %s\n' "$MOLSTEER_REDIS_PASSWORD" | redis-server - --bind 127.0.0.1 --port "$port" \
    --dir "$redis_dir" --save '' --appendonly no --protected-mode yes > "$redis_dir/redis.log" 2>&1 &
redis_pid=$!
guard $$ "$redis_dir" "$redis_pid"
for _ in $(seq 100); do
    if python -c "import os, redis; redis.Redis(port=$port, password=os.environ['MOLSTEER_REDIS_PASSWORD']).ping()" 2> /dev/null; then
        break
    fi
    kill -0 "$redis_pid" 2> /dev/null || { echo "run.sh: redis-server did not start; see $redis_dir/redis.log" >&2; exit 1; }
    sleep 0.1
done
echo "run.sh: Redis on 127.0.0.1:$port (pid $redis_pid) for job $job"

# The campaign's options first (a campaign name must lead), then where this job's workers and Redis are.
# shellcheck disable=SC2086  # MOLSTEER_ARGS is split into options on purpose
python run.py ${MOLSTEER_ARGS:-} "$@" --site pbs --redis-port "$port" &
run_pid=$!
wait "$run_pid"
