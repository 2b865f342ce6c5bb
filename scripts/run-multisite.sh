#!/bin/bash
# molsteer over two sites: QC on this machine, ml workers on a remote site (a GPU cluster's login node), which
# reaches this machine only through SSH tunnels. Everything it starts, on both sides, is stopped on any exit.
#
#   scripts/run-multisite.sh --remote-host HOST [--ssh-config FILE] [--remote-dir DIR] [--remote-init CMD] \
#       [--redis-port PORT] [--ml-worker-port PORT] [--] [run.py options...]
#
# Each option may instead come from the environment: MOLSTEER_REMOTE_HOST, MOLSTEER_SSH_CONFIG,
# MOLSTEER_REMOTE_DIR, MOLSTEER_REMOTE_INIT, MOLSTEER_REDIS_PORT, MOLSTEER_ML_WORKER_PORT; MOLSTEER_ACTIVATE is
# the shell line that activates this site's environment (default: ./.venv).
#
# Steps: (1) activate the environment, (2) start Redis on 127.0.0.1 with a fresh password, (3) open the tunnels
# (ssh -R, the same port numbers on both sides: Redis, and the ml interchange), (4) run run.py --site multisite,
# which checks the remote Python and Parsl versions and starts the remote workers over SSH, (5) on any exit stop
# run.py, the remote workers, the tunnels and Redis.
set -euo pipefail

usage() { sed -n '2,15p' "$0" | sed 's/^# \{0,1\}//'; }
remote_host=${MOLSTEER_REMOTE_HOST:-}
ssh_config=${MOLSTEER_SSH_CONFIG:-}
remote_dir=${MOLSTEER_REMOTE_DIR:-molsteer-workers}
remote_init=${MOLSTEER_REMOTE_INIT:-}
redis_port=${MOLSTEER_REDIS_PORT:-}
ml_port=${MOLSTEER_ML_WORKER_PORT:-}
while [ $# -gt 0 ]; do
    case "$1" in
        --remote-host) remote_host=$2; shift 2 ;;
        --ssh-config) ssh_config=$2; shift 2 ;;
        --remote-dir) remote_dir=$2; shift 2 ;;
        --remote-init) remote_init=$2; shift 2 ;;
        --redis-port) redis_port=$2; shift 2 ;;
        --ml-worker-port) ml_port=$2; shift 2 ;;
        -h|--help) usage; exit 0 ;;
        --) shift; break ;;
        *) break ;;
    esac
done
if [ -z "$remote_host" ]; then
    echo "run-multisite.sh: error: --remote-host (or MOLSTEER_REMOTE_HOST) is required (see --help)" >&2
    exit 2
fi

cd "$(dirname "$(readlink -f "$0")")/.."
# shellcheck source=scripts/launch-common.sh
source scripts/launch-common.sh
activate_environment  # (1) this site's environment
redis_port=${redis_port:-$(free_port)}
ml_port=${ml_port:-$(free_port)}
ssh_cmd=(ssh -o BatchMode=yes -o ServerAliveInterval=15 -o ServerAliveCountMax=4)
[ -n "$ssh_config" ] && ssh_cmd+=(-F "$ssh_config")

redis_pid="" redis_dir="" tunnel_pid="" run_pid=""
cleanup() {
    status=$?
    trap - EXIT INT TERM
    if [ -n "$run_pid" ] && kill -0 "$run_pid" 2> /dev/null; then
        kill -TERM "$run_pid" 2> /dev/null || true  # run.py stops its remote workers and records what was out
        wait "$run_pid" 2> /dev/null || status=$?
    fi
    # Remote workers whose run.py could not stop them (it was killed): their process groups, by pid file.
    if [ -n "$tunnel_pid" ]; then
        "${ssh_cmd[@]}" "$remote_host" "for f in $remote_dir/*/block-*.pid; do [ -f \"\$f\" ] || continue; \
            kill -TERM -- -\$(cat \"\$f\") 2> /dev/null; rm -f \"\$f\"; done" < /dev/null > /dev/null 2>&1 || true
    fi
    stop_process "$tunnel_pid"
    stop_process "$redis_pid"
    [ -z "$redis_dir" ] || rm -rf "$redis_dir"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

start_redis "$redis_port" run-multisite.sh  # (2) Redis, loopback only, with a fresh password

# (3) the tunnels: the remote login node's 127.0.0.1:PORT leads to this machine's 127.0.0.1:PORT
"${ssh_cmd[@]}" -N -o ExitOnForwardFailure=yes -R "$redis_port:127.0.0.1:$redis_port" \
    -R "$ml_port:127.0.0.1:$ml_port" "$remote_host" < /dev/null &
tunnel_pid=$!
guard $$ "$redis_dir" "$redis_pid" "$tunnel_pid"
for _ in $(seq 150); do
    kill -0 "$tunnel_pid" 2> /dev/null || { echo "run-multisite.sh: the SSH tunnels to $remote_host failed" >&2; exit 1; }
    if "${ssh_cmd[@]}" "$remote_host" "bash -c 'exec 3<>/dev/tcp/127.0.0.1/$redis_port'" < /dev/null 2> /dev/null; then
        break
    fi
    sleep 0.2
done
echo "run-multisite.sh: Redis :$redis_port and the ml interchange :$ml_port are tunnelled to $remote_host"

# (4) the campaign; its options first (a campaign name must lead), then the site's
ssh_option=()
[ -n "$ssh_config" ] && ssh_option=(--ssh-config "$ssh_config")
python run.py "$@" --site multisite --remote-host "$remote_host" "${ssh_option[@]}" --remote-dir "$remote_dir" \
    --remote-init "$remote_init" --redis-port "$redis_port" --ml-worker-port "$ml_port" &
run_pid=$!
wait "$run_pid"
