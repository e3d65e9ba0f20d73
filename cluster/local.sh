#!/usr/bin/env bash
# A multi-node Ray cluster and an MLflow tracking server on this machine, on loopback.
#
#   cluster/local.sh up [--workers N] [--cpus-per-worker C] [--head-cpus C] [--dir DIR]
#   cluster/local.sh status [--dir DIR]
#   cluster/local.sh down [--dir DIR]
#
# `up` starts a Ray head and N worker nodes, each a separate `ray start --block` process with its
# own resources (Ray sees N + 1 nodes; they share this machine's IP), and `mlflow server` with a
# SQLite backend and artifacts proxied through the server. Everything listens on 127.0.0.1.
# Ray's token authentication stays on: the token is generated into DIR/auth_token and every
# process (and every client) finds it through RAY_AUTH_TOKEN_PATH.
#
# `down` stops exactly what `up` started: each process group by the pid `up` recorded, then
# Ray's stale cluster file if it points at this cluster.
#
# DIR (default $GENRAY_HOME/cluster, else ./genray-runs/cluster) holds the pids, logs, token,
# the MLflow store and `env.sh`, which sets what a client needs:
#   source genray-runs/cluster/env.sh && genray submit train pipelines/configs/vae/vae_digits.yaml
set -euo pipefail

cmd="${1:-}"
[ $# -gt 0 ] && shift
workers=2
cpus_per_worker=1
head_cpus=0
dir="${GENRAY_HOME:-genray-runs}/cluster"
ray_port="${GENRAY_RAY_PORT:-6390}"
dashboard_port="${GENRAY_DASHBOARD_PORT:-8266}"
mlflow_port="${GENRAY_MLFLOW_PORT:-5055}"
while [ $# -gt 0 ]; do
    case "$1" in
        --workers) workers="$2"; shift 2 ;;
        --cpus-per-worker) cpus_per_worker="$2"; shift 2 ;;
        --head-cpus) head_cpus="$2"; shift 2 ;;
        --dir) dir="$2"; shift 2 ;;
        *) echo "cluster/local.sh: unknown option $1 (allowed: --workers N, --cpus-per-worker C, --head-cpus C, --dir DIR)" >&2; exit 2 ;;
    esac
done
case "$workers" in ''|*[!0-9]*) echo "cluster/local.sh: --workers must be a whole number, got '$workers'" >&2; exit 2 ;; esac

here="$(cd "$(dirname "$0")/.." && pwd)"
bin="$here/.venv/bin"
[ -x "$bin/ray" ] || bin="$(dirname "$(command -v ray)")"
mkdir -p "$dir"
dir="$(cd "$dir" && pwd)"
pids="$dir/pids"

wait_for() {  # wait_for SECONDS DESCRIPTION COMMAND...
    local limit="$1" what="$2"; shift 2
    for _ in $(seq 1 "$((limit * 2))"); do
        if "$@" >/dev/null 2>&1; then return 0; fi
        sleep 0.5
    done
    echo "cluster/local.sh: $what did not come up within ${limit} s; logs in $dir/logs" >&2
    return 1
}

start() {  # start NAME COMMAND...: its own process group, so `down` stops its children too
    local name="$1"; shift
    setsid "$@" >"$dir/logs/$name.log" 2>&1 < /dev/null &
    echo "$name $!" >> "$pids"
}

groups_gone() {  # groups_gone SECONDS: wait until no process is left in any recorded group
    local name pid alive
    for _ in $(seq 1 "$(( $1 * 2 ))"); do
        alive=0
        while read -r name pid; do
            if pgrep -g "$pid" >/dev/null 2>&1; then alive=1; fi
        done < "$pids"
        [ "$alive" = 0 ] && return 0
        sleep 0.5
    done
    return 1
}

stop_all() {
    [ -f "$pids" ] || return 0
    while read -r name pid; do
        if kill -0 "$pid" 2>/dev/null; then
            kill -TERM -- "-$pid" 2>/dev/null || kill -TERM "$pid" 2>/dev/null || true
        fi
    done < "$pids"
    # `ray start --block` stops its node's processes on SIGTERM; give them a moment, then make sure.
    groups_gone 15 || true
    while read -r name pid; do
        pkill -KILL -g "$pid" 2>/dev/null || true
    done < "$pids"
    # SIGKILL is not instant: return only when every process is gone.
    if ! groups_gone 20; then
        echo "cluster/local.sh: some processes of $dir survived SIGKILL:" >&2
        while read -r name pid; do pgrep -a -g "$pid" >&2 || true; done < "$pids"
        return 1
    fi
    rm -f "$pids"
    # A killed cluster leaves Ray's address file behind; later ray.init calls would attach to it.
    if [ -f /tmp/ray/ray_current_cluster ] && grep -q ":$ray_port" /tmp/ray/ray_current_cluster; then
        rm -f /tmp/ray/ray_current_cluster
    fi
}

case "$cmd" in
up)
    if [ -f "$pids" ]; then
        echo "cluster/local.sh: a cluster from $dir is already up (cluster/local.sh down first)" >&2
        exit 2
    fi
    mkdir -p "$dir/logs" "$dir/mlartifacts" "$dir/storage"
    trap 'echo "cluster/local.sh: up failed; stopping what it started" >&2; stop_all' ERR
    token="$dir/auth_token"
    [ -s "$token" ] || (umask 077 && "$bin/python" -c "import secrets; print(secrets.token_hex(32), end='')" > "$token")
    export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH="$token"
    # Jobs run `python -m genray.pipelines...` with the nodes' PATH: this project's environment.
    export PATH="$bin:$PATH"
    # Ray's sockets live under its temp dir, capped at 107 bytes: keep it short.
    tmp="/tmp/grc-$ray_port"
    start head "$bin/ray" start --head --block --node-ip-address=127.0.0.1 --port="$ray_port" \
        --dashboard-host=127.0.0.1 --dashboard-port="$dashboard_port" --num-cpus="$head_cpus" \
        --resources='{"head": 1}' --temp-dir="$tmp" --disable-usage-stats
    wait_for 90 "the Ray head" "$bin/ray" status --address="127.0.0.1:$ray_port"
    for i in $(seq 1 "$workers"); do
        # A temp dir per node: nodes sharing one would share runtime_resources/, and the first node
        # to drop a job's working_dir would delete it under the others (the job's driver included).
        start "worker$i" "$bin/ray" start --block --address="127.0.0.1:$ray_port" --node-ip-address=127.0.0.1 \
            --num-cpus="$cpus_per_worker" --resources="{\"worker$i\": 1}" --temp-dir="$tmp-w$i" --disable-usage-stats
    done
    start mlflow "$bin/mlflow" server --host 127.0.0.1 --port "$mlflow_port" \
        --backend-store-uri "sqlite:///$dir/mlflow.db" --artifacts-destination "$dir/mlartifacts" --workers 1
    wait_for 90 "the MLflow server" "$bin/python" -c \
        "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$mlflow_port/health', timeout=2)"
    nodes() { "$bin/python" - "$ray_port" <<'EOF'
import sys, ray
ray.init(address=f"127.0.0.1:{sys.argv[1]}", log_to_driver=False, configure_logging=False)
sys.exit(0 if len([n for n in ray.nodes() if n["Alive"]]) >= int(__import__("os").environ["GR_NODES"]) else 1)
EOF
    }
    export GR_NODES=$((workers + 1))
    wait_for 90 "all $GR_NODES Ray nodes" nodes
    trap - ERR
    cat > "$dir/env.sh" <<EOF
# source this: what a client of the local cluster needs
export RAY_ADDRESS=http://127.0.0.1:$dashboard_port
export RAY_AUTH_MODE=token
export RAY_AUTH_TOKEN_PATH=$token
export MLFLOW_TRACKING_URI=http://127.0.0.1:$mlflow_port
export GENRAY_STORAGE=$dir/storage
EOF
    echo "Ray cluster     head + $workers worker nodes ($cpus_per_worker CPU each), GCS 127.0.0.1:$ray_port"
    echo "dashboard/Jobs  http://127.0.0.1:$dashboard_port"
    echo "MLflow          http://127.0.0.1:$mlflow_port  (SQLite $dir/mlflow.db, artifacts proxied)"
    echo "token           $token  (RAY_AUTH_TOKEN_PATH)"
    echo "shared storage  $dir/storage  (GENRAY_STORAGE)"
    echo "client env      source $dir/env.sh"
    echo "stop            cluster/local.sh down${dir:+ --dir $dir}"
    ;;
status)
    [ -f "$pids" ] || { echo "no cluster is up in $dir"; exit 1; }
    while read -r name pid; do
        if kill -0 "$pid" 2>/dev/null; then state=running; else state=gone; fi
        echo "$name pid $pid $state"
    done < "$pids"
    ;;
down)
    if [ ! -f "$pids" ]; then
        echo "no cluster is up in $dir"
        exit 0
    fi
    stop_all
    rm -rf "/tmp/grc-$ray_port" /tmp/grc-"$ray_port"-w*
    echo "stopped the cluster in $dir"
    ;;
*)
    echo "usage: cluster/local.sh up [--workers N] [--cpus-per-worker C] [--head-cpus C] [--dir DIR] | status | down [--dir DIR]" >&2
    exit 2
    ;;
esac
