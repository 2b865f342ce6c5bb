# Shell functions shared by the launchers (run.sh, scripts/run-multisite.sh); sourced, never run.
# Both start the same private Redis and must stop what they started however they end, so that is written once.

# The environment: $MOLSTEER_ACTIVATE (a shell line) if given, else ./.venv if there is one.
activate_environment() {
    if [ -n "${MOLSTEER_ACTIVATE:-}" ]; then
        eval "$MOLSTEER_ACTIVATE"
    elif [ -f .venv/bin/activate ]; then
        # shellcheck disable=SC1091
        source .venv/bin/activate
    fi
}

free_port() { python -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

# start_redis PORT NAME: Redis on 127.0.0.1:PORT with a fresh password, in a new directory under $TMPDIR.
# Sets redis_pid and redis_dir, and exports MOLSTEER_REDIS_PASSWORD, where run.py reads it: the password enters
# redis-server through standard input (`redis-server -`) and never appears on a command line or in `ps`.
start_redis() {
    local port=$1 name=$2
    redis_dir=$(mktemp -d "${TMPDIR:-/tmp}/molsteer-redis.XXXXXX")
    MOLSTEER_REDIS_PASSWORD=$(python -c 'import secrets; print(secrets.token_hex(24))')
    export MOLSTEER_REDIS_PASSWORD
    printf 'requirepass %s\n' "$MOLSTEER_REDIS_PASSWORD" | redis-server - --bind 127.0.0.1 --port "$port" \
        --dir "$redis_dir" --save '' --appendonly no --protected-mode yes > "$redis_dir/redis.log" 2>&1 &
    redis_pid=$!
    for _ in $(seq 100); do
        python -c "import os, redis; redis.Redis(port=$port, password=os.environ['MOLSTEER_REDIS_PASSWORD']).ping()" \
            2> /dev/null && return 0
        kill -0 "$redis_pid" 2> /dev/null || { echo "$name: redis-server did not start" >&2; return 1; }
        sleep 0.1
    done
    echo "$name: redis-server did not answer within 10 s" >&2
    return 1
}

# stop_process PID: SIGTERM, then wait for it (nothing if PID is empty or already gone).
stop_process() {
    [ -n "$1" ] || return 0
    kill -TERM "$1" 2> /dev/null || true
    wait "$1" 2> /dev/null || true
}

# guard WATCHED_PID DIRECTORY PID...: if the launcher is killed outright (kill -9, where no trap runs), this
# guard, in its own session that a process-group kill does not reach, stops the PIDs and removes DIRECTORY
# within a second. It reads the state from /proc: a killed launcher that is not yet reaped is a zombie, and
# `kill -0` would still succeed on it.
guard() {
    setsid bash -c 'watched=$1 dir=$2; shift 2
        while [ "$(cut -d" " -f3 "/proc/$watched/stat" 2> /dev/null || echo gone)" != gone ] &&
              [ "$(cut -d" " -f3 "/proc/$watched/stat" 2> /dev/null)" != Z ]; do sleep 1; done
        kill -TERM "$@" 2> /dev/null; rm -rf "$dir"' guard "$@" < /dev/null > /dev/null 2>&1 &
}
