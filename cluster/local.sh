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
# It returns once every node is alive and the Jobs API has run a probe job (deleted again), so a
# `genray submit` right after it is accepted; if that takes over 240 s, it stops what it started
# and says which log to read.
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
    # Every node's dashboard agent listens on a port of its own choosing (0), which it registers in
    # the GCS. Ray's default, 52365, is one port for the whole machine: the nodes here (and any
    # other Ray on this machine) race for it, and an agent that loses serves no HTTP and registers
    # nothing. When the head's agent lost, every submission was refused with "No available agent".
    start head "$bin/ray" start --head --block --node-ip-address=127.0.0.1 --port="$ray_port" \
        --dashboard-host=127.0.0.1 --dashboard-port="$dashboard_port" --num-cpus="$head_cpus" \
        --resources='{"head": 1}' --temp-dir="$tmp" --dashboard-agent-listen-port=0 --disable-usage-stats
    wait_for 90 "the Ray head" "$bin/ray" status --address="127.0.0.1:$ray_port"
    # A worker node's raylet gives its agents 15 s to start and otherwise aborts the node ("The
    # current node timed out during startup"; ray-project/ray#65983), which a busy machine exceeds
    # now and then. So a worker whose `ray start` fails before its node ran is started again, up to
    # 3 tries; one that stops after it ran is not.
    again='log=$1; shift
        for try in 1 2 3; do
            "$@" && exit 0
            grep -q "Ray runtime started" "$log" && exit 1
            echo "cluster/local.sh: the node failed to start (try $try of 3; its raylet.out says why)"
        done
        exit 1'
    for i in $(seq 1 "$workers"); do
        # A temp dir per node: nodes sharing one would share runtime_resources/, and the first node
        # to drop a job's working_dir would delete it under the others (the job's driver included).
        start "worker$i" bash -c "$again" again "$dir/logs/worker$i.log" \
            "$bin/ray" start --block --address="127.0.0.1:$ray_port" --node-ip-address=127.0.0.1 \
            --num-cpus="$cpus_per_worker" --resources="{\"worker$i\": 1}" --temp-dir="$tmp-w$i" \
            --dashboard-agent-listen-port=0 --disable-usage-stats
    done
    start mlflow "$bin/mlflow" server --host 127.0.0.1 --port "$mlflow_port" \
        --backend-store-uri "sqlite:///$dir/mlflow.db" --artifacts-destination "$dir/mlartifacts" --workers 1
    wait_for 90 "the MLflow server" "$bin/python" -c \
        "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$mlflow_port/health', timeout=2)"
    # Ready is what a client needs at once: every node ALIVE, and the Jobs API accepting and running
    # a job. The head's job manager submits every job through the head node's dashboard agent,
    # which it finds in the GCS once that agent has registered itself; until then a submission
    # waits 10 s and is refused with HTTP 500 "No available agent to submit job" (ray/dashboard/
    # modules/job/job_head.py). So the probe is a job: `python -c pass` with no CPU, submitted with
    # the cluster's token; once it SUCCEEDS an agent has accepted a job and a driver has run, and
    # the head keeps that agent for every later submission. The probe is deleted afterwards. The
    # nodes are counted through the dashboard's state API, which, unlike a ray.init, leaves no
    # driver job behind in `genray jobs list`.
    ready=$(env -u RAY_API_SERVER_ADDRESS RAY_ADDRESS="http://127.0.0.1:$dashboard_port" "$bin/python" - \
        "$((workers + 1))" 240 "$pids" "$dir/logs" "$tmp" <<'EOF'
import logging, os, sys, time, uuid, warnings

warnings.simplefilter("ignore")
logging.getLogger("ray").setLevel(logging.ERROR)
from ray.job_submission import JobStatus, JobSubmissionClient
from ray.util.state import list_actors, list_nodes

want, limit, pids, logs, tmp = int(sys.argv[1]), float(sys.argv[2]), sys.argv[3], sys.argv[4], sys.argv[5]
address = os.environ["RAY_ADDRESS"]
start = time.monotonic()
last = "the dashboard did not answer"


def why(e):
    text = str(e).strip()
    return text.splitlines()[-1 if "Traceback" in text else 0][:200] if text else type(e).__name__


def give_up(what, where=f"{logs}/ and {tmp}/session_latest/logs/ (dashboard.log, dashboard_agent.log)"):
    print(f"cluster/local.sh: {what}; logs in {where}", file=sys.stderr)
    sys.exit(1)


def running(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def check_processes():  # a node whose `ray start` has exited will not come: say which, and where to look
    with open(pids) as f:
        for name, pid in (line.split() for line in f if line.strip()):
            if name != "mlflow" and not running(pid):
                with open(f"{logs}/{name}.log", errors="replace") as log:
                    lines = [line.strip() for line in log if line.strip()]
                ray_lines = [line for line in lines if not line.startswith("cluster/local.sh:")]
                tries = ", tried 3 times" if len(ray_lines) < len(lines) else ""
                node_tmp = tmp if name == "head" else f"{tmp}-w{name.removeprefix('worker')}"
                give_up(f"the {name} node's `ray start` exited{tries} ({ray_lines[-1] if ray_lines else 'no output'})",
                        f"{logs}/{name}.log and {node_tmp}/session_latest/logs/raylet.out")


def waited():
    if time.monotonic() - start > limit:
        give_up(f"the cluster was not ready within {limit:.0f} s ({last})")
    time.sleep(0.5)


while True:  # every node ALIVE
    try:
        alive = len(list_nodes(address=address, filters=[("state", "=", "ALIVE")], timeout=10))
        if alive >= want:
            break
        last = f"{alive} of {want} Ray nodes alive"
    except Exception as e:
        last = f"the state API: {why(e)}"
    check_processes()
    waited()
nodes_s = time.monotonic() - start

probe, submitted = f"genray-ready-{uuid.uuid4().hex[:8]}", False
while True:  # a probe job accepted, run and SUCCEEDED
    try:
        c = JobSubmissionClient(address)
        if not submitted:
            c.submit_job(entrypoint="python -c pass", submission_id=probe, entrypoint_num_cpus=0,
                         metadata={"genray.probe": "cluster/local.sh up"})
            submitted = True
        status = c.get_job_status(probe)
        if status.is_terminal():
            if status != JobStatus.SUCCEEDED:  # it ran and failed: waiting longer would not change that
                give_up(f"the probe job `python -c pass` ended {status.value} ({c.get_job_info(probe).message})")
            break
        last = f"the probe job is {status.value}"
    except Exception as e:
        submitted = submitted or "already exists" in str(e)  # an earlier submit landed, its answer lost
        last = f"the Jobs API: {why(e)}"
    check_processes()
    waited()
probe_s = time.monotonic() - start

# Delete the probe once Ray's job monitor is done with it. The monitor watches the job's
# supervisor actor; if the job's record is gone when that actor exits, it writes the record back
# as FAILED "Entrypoint not found." (job_manager.py, _monitor_job_internal). So: wait until no
# supervisor is alive (this cluster runs no other job), then delete until the record stays gone.
try:
    until = time.monotonic() + 30
    while time.monotonic() < until and list_actors(
            address=address, filters=[("class_name", "=", "JobSupervisor"), ("state", "=", "ALIVE")], timeout=10):
        time.sleep(0.5)
    gone = 0
    while gone < 3 and time.monotonic() < until + 15:
        time.sleep(1)
        try:
            c.delete_job(probe)
            gone = 0
        except Exception as e:
            gone = gone + 1 if "does not exist" in str(e) else 0
except Exception:
    pass  # a probe left in `genray jobs list` is untidy, not a reason to fail `up`
print(f"{want} nodes alive after {nodes_s:.1f} s; the Jobs API ran a probe job after {probe_s:.1f} s")
EOF
)
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
    echo "ready           $ready"
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
