#!/usr/bin/env bash
# End-to-end test of workflow/profiles/slurm against a real single-node SLURM
# (see tests/test_slurm.py, which runs it). As root:
#   1. installs slurm-wlm and munge with apt-get when slurmctld is missing;
#   2. writes /etc/slurm/slurm.conf and gres.conf (one node, two fake GPUs)
#      and starts munged, slurmctld and slurmd with their own ports, munge
#      socket, spool, pid and log files in one temp dir;
#   3. runs the default config (one seed, the ACDC comparison at 3 labeled
#      patients and the LA comparison) through the SLURM profile (with requeue
#      on, as the profile sets it);
#   4. checks with `scontrol show job` that every training and evaluation job
#      was submitted with a GPU request (TresPerJob=gres:gpu:1) and held a GPU
#      while it ran (JOB_GRES=gpu:1, sampled every 2 s), CPU jobs neither;
#   5. while it runs, cancels one training job with `scancel` after its first
#      checkpoint (Snakemake retries it) and preempts another (an exclusive
#      job in a higher-tier partition; SLURM requeues it); checks that both
#      resumed from their checkpoint;
#   6. trains and evaluates the two interrupted experiments again locally,
#      uninterrupted, and compares their per-case metrics (final and best
#      checkpoints) byte for byte: resumed jobs end as uninterrupted ones.
# Every daemon it started is stopped by the PID in its pid file on exit,
# failure or interrupt; the temp dir and the two config files are removed.
# The config must be at the default /etc/slurm path: the plugin's job step
# drops SLURM_CONF before its `srun`. An existing /etc/slurm/slurm.conf that
# this script did not write makes it stop (it will not touch a real cluster).
# Environment: PYTHON (interpreter with snakemake and the slurm executor
# plugin; default: python3 on PATH), SLURM_TEST_TIMEOUT (seconds for the SLURM
# run, default 1200), LOCAL_TEST_TIMEOUT (default 900), KEEP_SLURM_TEST_DIR=1
# (keep the temp dir for debugging).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
PYTHON=${PYTHON:-$(command -v python3)}
SLURM_TIMEOUT=${SLURM_TEST_TIMEOUT:-1200}
LOCAL_TIMEOUT=${LOCAL_TEST_TIMEOUT:-900}
T=""
CONF=/etc/slurm/slurm.conf GRES=/etc/slurm/gres.conf
MARK="# written by crossmatch tests/slurm/run_slurm_test.sh"
WROTE_CONF=0
PIDFILES=()   # daemons started, in start order
SAMPLER=""    # background loop recording which jobs hold a GPU
INJECTOR=""   # background loop cancelling and preempting training jobs

log() { echo "[slurm-test $(date +%T)] $*"; }
fail() { echo "SLURM TEST FAILED: $*" >&2; exit 1; }

alive() {  # alive PID: running and not a zombie (no init may reap them here)
    [ -r "/proc/$1/stat" ] && [ "$(awk '{print $3}' "/proc/$1/stat" 2>/dev/null)" != Z ]
}

stop_pidfile() {  # stop one daemon by the PID in its pid file: TERM, then KILL
    local f=$1 pid i
    [ -s "$f" ] || return 0
    pid=$(cat "$f")
    alive "$pid" || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for i in $(seq 50); do alive "$pid" || return 0; sleep 0.2; done
    kill -KILL "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$? i
    trap - EXIT INT TERM
    set +e
    [ -n "$SAMPLER" ] && kill "$SAMPLER" 2>/dev/null
    [ -n "$INJECTOR" ] && kill "$INJECTOR" 2>/dev/null
    if [ -n "$T" ] && [ -s "$T/slurmctld.pid" ] && alive "$(cat "$T/slurmctld.pid")"; then
        # our test cluster only: cancel what is left, let the steps end
        timeout 10 squeue -h -o %i 2>/dev/null | xargs -r timeout 10 scancel 2>/dev/null
        for i in $(seq 20); do [ -z "$(timeout 5 squeue -h -o %i 2>/dev/null)" ] && break; sleep 0.5; done
    fi
    for ((i = ${#PIDFILES[@]} - 1; i >= 0; i--)); do stop_pidfile "${PIDFILES[$i]}"; done
    [ "$WROTE_CONF" = 1 ] && rm -f "$CONF" "$GRES"
    if [ "$rc" -ne 0 ] && [ -n "$T" ]; then
        for f in slurmctld.log slurmd.log munge/munged.log; do
            [ -s "$T/$f" ] && { echo "--- tail of $f"; tail -n 15 "$T/$f"; } >&2
        done
    fi
    if [ -n "$T" ]; then
        if [ "${KEEP_SLURM_TEST_DIR:-0}" = 1 ]; then echo "kept $T" >&2; else rm -rf "$T"; fi
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# --- prerequisites ------------------------------------------------------------
[ "$(id -u)" -eq 0 ] || fail "must run as root (it installs and starts the SLURM daemons)"
"$PYTHON" -c 'import snakemake, snakemake_executor_plugin_slurm' \
    || fail "$PYTHON lacks snakemake or snakemake-executor-plugin-slurm (pip install -e '.[workflow]')"
if ! command -v slurmctld >/dev/null || ! command -v slurmd >/dev/null || ! command -v munged >/dev/null; then
    command -v apt-get >/dev/null || fail "SLURM is not installed and apt-get is not available"
    log "installing slurm-wlm and munge"
    apt-get update -qq || fail "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge \
        >/dev/null || fail "apt-get install slurm-wlm munge failed"
fi
[ -r /etc/munge/munge.key ] || fail "/etc/munge/munge.key missing (reinstall munge or run mungekey)"
# jobs re-run `python -m snakemake` inside the allocation: this venv first on PATH
export PATH="$(dirname "$PYTHON"):$PATH"

# --- a private single-node cluster ------------------------------------------------
T=$(mktemp -d /tmp/crossmatch-slurm-test.XXXXXX)
chmod 755 "$T"
mkdir -p "$T/munge" "$T/ctld" "$T/d"
chown munge:munge "$T/munge"
chmod 755 "$T/munge"   # munged: socket dir must be a+x, not writable by others
for f in "$CONF" "$GRES"; do
    [ ! -e "$f" ] || head -n 1 "$f" | grep -qxF "$MARK" \
        || fail "$f exists and was not written by this test: refusing to replace a real SLURM config"
done
mkdir -p /etc/slurm
WROTE_CONF=1
CPUS=$(nproc)
MEM=$(awk '/^MemAvailable:/ {printf "%d", $2 / 1024 * 0.8}' /proc/meminfo)
cat > "$CONF" <<CONF
$MARK
ClusterName=crossmatchtest
SlurmctldHost=localhost
SlurmctldPort=16817
SlurmdPort=16818
SlurmUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$T/munge/munge.socket
StateSaveLocation=$T/ctld
SlurmdSpoolDir=$T/d
SlurmctldPidFile=$T/slurmctld.pid
SlurmdPidFile=$T/slurmd.pid
SlurmctldLogFile=$T/slurmctld.log
SlurmdLogFile=$T/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
ReturnToService=2
# finished jobs stay visible to squeue (status) and scontrol (the GPU check)
MinJobAge=3600
MailProg=/bin/true
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=$CPUS RealMemory=$MEM Gres=gpu:2 State=UNKNOWN
# preemption: a job in "urgent" requeues the "debug" jobs it needs room for
PreemptType=preempt/partition_prio
PreemptMode=REQUEUE
PartitionName=debug Nodes=localhost Default=YES MaxTime=INFINITE State=UP PriorityTier=1
PartitionName=urgent Nodes=localhost MaxTime=INFINITE State=UP PriorityTier=2 PreemptMode=off
CONF
# two fake GPUs (any existing file will do; without File= the node is INVAL)
cat > "$GRES" <<CONF
$MARK
AutoDetect=off
NodeName=localhost Name=gpu File=/dev/null
NodeName=localhost Name=gpu File=/dev/zero
CONF

log "starting munged, slurmctld, slurmd (state in $T)"
PIDFILES+=("$T/munge/munged.pid")
runuser -u munge -- /usr/sbin/munged --socket="$T/munge/munge.socket" --pid-file="$T/munge/munged.pid" \
    --log-file="$T/munge/munged.log" --seed-file="$T/munge/munged.seed" || fail "munged did not start"
PIDFILES+=("$T/slurmctld.pid")
/usr/sbin/slurmctld -f "$CONF" || fail "slurmctld did not start"
PIDFILES+=("$T/slurmd.pid")
/usr/sbin/slurmd -f "$CONF" -N localhost || fail "slurmd did not start"
state="" deadline=$((SECONDS + 30))
while [ "$SECONDS" -lt "$deadline" ]; do
    for f in slurmctld slurmd; do
        if [ -s "$T/$f.pid" ] && ! alive "$(cat "$T/$f.pid")"; then fail "$f exited at start (log below)"; fi
    done
    state=$(timeout 5 sinfo -h -N -o %t 2>/dev/null | sort -u || true)
    [ "$state" = idle ] && break
    sleep 0.5
done
[ "$state" = idle ] || fail "node not idle after 30 s (state: '${state:-none}')"
log "node idle: $(scontrol show node localhost | grep -o 'Gres=[^ ]*')"

# --- the workflow through the SLURM profile --------------------------------------
# one seed keeps it short; --config seeds=[0] would give the string '0'
# (Snakemake parses --config values with YAML's BaseLoader), hence a file.
# ckpt_every does not change results (interrupted runs are compared with local ones).
"$PYTHON" - "$REPO/config/config.yaml" "$T/seed0.yaml" <<'PY'
import sys, yaml
cfg = yaml.safe_load(open(sys.argv[1]))
cfg["seeds"] = [0]
# ACDC (3 labeled) and LA comparisons only (every method still runs): the SLURM
# mechanics in less time
cfg["datasets"] = {k: v for k, v in cfg["datasets"].items() if k in ("acdc", "la")}
cfg["datasets"]["acdc"]["labeled"] = [3]
cfg.pop("ablations", None)
for d in cfg["datasets"].values():  # frequent checkpoints: room to kill a job between two
    d["experiment"]["train"]["ckpt_every"] = 5
yaml.safe_dump(cfg, open(sys.argv[2], "w"), sort_keys=False, allow_unicode=True)
PY
smk() {  # smk WORKDIR TIMEOUT ARGS...: the checkout's workflow in WORKDIR
    local w=$1 t=$2
    shift 2
    mkdir -p "$w"
    ln -sfn "$REPO/config" "$w/config"
    (cd "$w" && PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" timeout -s INT -k 10 "$t" \
        "$PYTHON" -m snakemake --snakefile "$REPO/workflow/Snakefile" --directory "$w" "$@")
}
NTRAIN=$(smk "$T/dry" 300 -n all_tables --configfile "$T/seed0.yaml" --quiet rules \
    | awk '$1 == "train" {print $2; exit}' || true)
[ -n "$NTRAIN" ] && [ "$NTRAIN" -gt 0 ] || fail "the dry run failed or found no training jobs"

log "SLURM run: all_tables, $NTRAIN training jobs (timeout ${SLURM_TIMEOUT}s)"
# `scontrol -d` shows a job's allocated GRES only while it runs: sample it
: > "$T/gpu_held.txt"
while :; do
    timeout 10 scontrol -d show job -o 2>/dev/null \
        | awk '/JobState=RUNNING/ && / JOB_GRES=gpu:1 / {sub(/^JobId=/, ""); print $1}' >> "$T/gpu_held.txt" || true
    sleep 2
done &
SAMPLER=$!
RUNS="$T/slurm/results/synthetic/runs"
running_train_job() {  # running_train_job EXP: SLURM id of its running train job
    local c="rule_train_wildcards_${1//\//_}"  # the plugin's --comment, / -> _
    timeout 10 squeue -h -t RUNNING -o '%i %k' 2>/dev/null | awk -v c="$c" '$2 == c {print $1; exit}'
}
inject_faults() {
    # Two faults while the workflow runs, each on a training job that has
    # written a checkpoint and not its final weights: `scancel` (Snakemake
    # sees it fail and retries it) and preemption by an exclusive job in the
    # higher-tier partition (SLURM requeues it). Both must resume from their
    # checkpoint. SLURM delays a requeued job's start by ~2 min: start it now.
    local latest d exp jid cancelled="" preempted="" i
    while [ -z "$preempted" ]; do
        for latest in $(find "$RUNS" -path '*/checkpoints/latest.pt' 2>/dev/null | sort); do
            d=${latest%/checkpoints/latest.pt}
            exp=${d#"$RUNS"/}
            [ -e "$d/checkpoints/final.pt" ] || [ "$exp" = "$cancelled" ] && continue
            jid=$(running_train_job "$exp")
            [ -n "$jid" ] || continue
            far_from_the_end "$d" "$latest" || continue
            if [ -z "$cancelled" ]; then
                timeout 10 scancel "$jid" && cancelled=$exp && echo "$jid $exp" > "$T/cancelled.txt"
                log "fault: scancel $jid ($exp, checkpoint at iteration $(latest_iteration "$latest"))"
            else
                timeout 10 sbatch -Q -p urgent --exclusive -J preemptor -o /dev/null --wrap 'sleep 2' \
                    || { echo "sbatch of the preempting job failed" >&2; return 1; }
                preempted=$exp && echo "$jid $exp" > "$T/preempted.txt"
                log "fault: preempting $jid ($exp, checkpoint at iteration $(latest_iteration "$latest"))"
            fi
            break
        done
        sleep 0.5
    done
    for i in $(seq 120); do  # release requeued jobs (the preempted one and any bystander)
        timeout 10 squeue -h -t PENDING -o '%i %r' 2>/dev/null | awk '$2 == "BeginTime" {print $1}' \
            | xargs -r -I{} timeout 10 scontrol update JobId={} StartTime=now
        sleep 1
    done
}
far_from_the_end() {  # far_from_the_end RUN LATEST: two checkpoints or more still to come, so the job
    # is still training when the fault lands (a checkpoint of its last iteration resumes nothing)
    "$PYTHON" - "$1/experiment.yaml" "$2" <<'PY' 2>/dev/null
import sys, torch, yaml
t = yaml.safe_load(open(sys.argv[1]))["train"]
it = torch.load(sys.argv[2], map_location="cpu", weights_only=False)["iteration"]
sys.exit(0 if it + 2 * t["ckpt_every"] <= t["iterations"] else 1)
PY
}
latest_iteration() {
    "$PYTHON" -c 'import sys, torch; print(torch.load(sys.argv[1], weights_only=False)["iteration"])' "$1" \
        2>/dev/null || echo "?"
}
inject_faults &
INJECTOR=$!
start=$SECONDS rc=0
# in the foreground: a background job would ignore SIGINT, and so the timeout
smk "$T/slurm" "$SLURM_TIMEOUT" all_tables --configfile "$T/seed0.yaml" \
    --profile "$REPO/workflow/profiles/slurm" \
    --slurm-status-command squeue --slurm-init-seconds-before-status-checks 2 \
    --slurm-keep-successful-logs > "$T/slurm_run.log" 2>&1 || rc=$?
SLURM_S=$((SECONDS - start))
kill "$SAMPLER" "$INJECTOR" 2>/dev/null; SAMPLER="" INJECTOR=""
if [ "$rc" -ne 0 ]; then
    tail -n 60 "$T/slurm_run.log" >&2
    [ "$rc" -eq 124 ] && fail "SLURM run timed out after ${SLURM_TIMEOUT}s"
    fail "SLURM run failed (exit $rc); log above"
fi
log "SLURM run done in ${SLURM_S}s"
grep -q "Using profiles\? .*workflow/profiles/slurm" "$T/slurm_run.log" || fail "the SLURM profile was not used"

# --- GPU requests, as SLURM recorded them -------------------------------------------
# one line per job; the plugin's --comment is rule_<rule>_wildcards_...
scontrol show job -o > "$T/jobs.txt" || fail "scontrol show job failed"
[ -s "$T/cancelled.txt" ] && [ -s "$T/preempted.txt" ] \
    || fail "the fault injector found no running training job with a checkpoint to cancel and preempt"
"$PYTHON" - "$T/jobs.txt" "$NTRAIN" "$T/gpu_held.txt" "$T/cancelled.txt" "$T/preempted.txt" \
    "$T/slurm/results/synthetic/logs/train" <<'PY' || fail "SLURM job check failed (see above)"
import re, sys
from collections import Counter
lines = [l for l in open(sys.argv[1]) if l.startswith("JobId=")]
ntrain = int(sys.argv[2])
held = set(open(sys.argv[3]).read().split())  # job ids seen running with JOB_GRES=gpu:1
cancel_id, cancel_exp = open(sys.argv[4]).read().split()
preempt_id, preempt_exp = open(sys.argv[5]).read().split()
field = lambda l, k: (re.search(rf"\b{k}=(\S*)", l) or [None, ""])[1]
errors, seen, train_jobs = [], Counter(), {}
for l in lines:
    rule = re.match(r"rule_([a-z_]+?)(_wildcards_|$)", field(l, "Comment"))
    if not rule:
        continue
    rule = rule[1]
    seen[rule] += 1
    jid, state = field(l, "JobId"), field(l, "JobState")
    if rule == "train":
        train_jobs.setdefault(field(l, "Comment"), []).append((int(jid), state, int(field(l, "Restarts") or 0)))
    req = field(l, "TresPerJob")  # gres:gpu:1 (SLURM 22.05) or gres/gpu:1 (later)
    if state != "COMPLETED" and not (jid == cancel_id and state == "CANCELLED"):
        errors.append(f"job {jid} ({rule}) is {state}")
    gpu_req = re.search(r"gres[:/]gpu[:=]1$", req) is not None
    if rule in ("train", "evaluate") and not gpu_req:
        errors.append(f"job {jid} ({rule}): no GPU request (TresPerJob={req!r})")
    elif rule in ("train", "evaluate") and jid not in held and jid != cancel_id:
        errors.append(f"job {jid} ({rule}) requested {req} but was never seen holding a GPU")
    if rule not in ("train", "evaluate") and (req or jid in held):
        errors.append(f"CPU job {jid} ({rule}) has a GPU: TresPerJob={req!r}")
# the cancelled job was retried by Snakemake (a new job); the preempted one requeued by SLURM (same job)
if seen["train"] != ntrain + 1 or seen["evaluate"] != ntrain:
    errors.append(f"expected {ntrain} + 1 (the retry) train and {ntrain} evaluate jobs, saw {dict(seen)}")
comment = lambda exp: "rule_train_wildcards_" + exp.replace("/", "_")
jobs = sorted(train_jobs.get(comment(cancel_exp), []))
if [s for _, s, _ in jobs] != ["CANCELLED", "COMPLETED"]:
    errors.append(f"{cancel_exp}: expected a cancelled job and its completed retry, saw {jobs}")
jobs = train_jobs.get(comment(preempt_exp), [])
if not (len(jobs) == 1 and jobs[0][1] == "COMPLETED" and jobs[0][2] >= 1):
    errors.append(f"{preempt_exp}: expected one job, requeued (Restarts >= 1) and completed, saw {jobs}")
for exp in (cancel_exp, preempt_exp):  # the trainer's resume message (crossmatch.train)
    text = open(f"{sys.argv[6]}/{exp}.log").read()
    m = re.search(r"resuming from iteration (\d+)", text)
    if not m or int(m[1]) < 5:
        errors.append(f"{exp}: its training log shows no resume from a checkpoint")
    else:
        print(f"  {exp}: resumed from iteration {m[1]}")
for e in errors:
    print("  " + e, file=sys.stderr)
print(f"  SLURM jobs per rule: {dict(seen)}; every train/evaluate job requested 1 GPU and held it, no other "
      f"job did; job {cancel_id} was cancelled and retried, job {preempt_id} preempted and requeued")
sys.exit(1 if errors else 0)
PY

# --- the interrupted experiments again, locally and uninterrupted ------------------
read -r _ CANCEL_EXP < "$T/cancelled.txt"
read -r _ PREEMPT_EXP < "$T/preempted.txt"
R=results/synthetic/runs
CASES=()
for exp in "$CANCEL_EXP" "$PREEMPT_EXP"; do
    for c in final best; do CASES+=("$R/$exp/eval/$c/metrics_per_case.csv"); done
done
log "local run: ${CASES[*]} --cores 2 (timeout ${LOCAL_TIMEOUT}s)"
start=$SECONDS
smk "$T/local" "$LOCAL_TIMEOUT" --cores 2 "${CASES[@]}" --configfile "$T/seed0.yaml" \
    > "$T/local_run.log" 2>&1 || { tail -n 60 "$T/local_run.log" >&2; fail "local run failed"; }
LOCAL_S=$((SECONDS - start))
log "local run done in ${LOCAL_S}s"
for f in "${CASES[@]}"; do
    [ -s "$T/slurm/$f" ] || fail "the SLURM run wrote no $f"
    cmp -s "$T/slurm/$f" "$T/local/$f" \
        || { diff "$T/slurm/$f" "$T/local/$f" | head -n 20 >&2; fail "$f differs between the resumed SLURM job and an uninterrupted local run"; }
done
TABLES=$(find "$T/slurm/results/synthetic/tables" -name '*.md' | wc -l)
[ "$TABLES" -gt 0 ] || fail "the SLURM run wrote no tables"
log "PASS: cancelled ($CANCEL_EXP) and preempted ($PREEMPT_EXP) runs equal uninterrupted ones (${#CASES[@]} metric files identical); $TABLES tables; SLURM run ${SLURM_S}s, local run ${LOCAL_S}s"
