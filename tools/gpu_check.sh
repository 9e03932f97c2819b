#!/usr/bin/env bash
# One prepared GPU check (issue 14): on a machine with a CUDA GPU it
#   1. runs the cohort/node equivalence tests (tests/test_cohort.py, CUDA variants included), the
#      node engine's device tests, and quick.yaml on the GPU over memory, http and the cohort,
#   2. runs the step benchmark on the GPU (tools/bench_step.py --device cuda),
#   3. runs scenarios/paper/s6.yaml at full paper settings with the cohort engine on the GPU,
# and writes one JSON of timings ($OUT/gpu_check.json, else ./gpu_check.json), updated after every
# stage so a stage that runs out of time still leaves the others' figures.
#
#   tools/gpu_check.sh                      # from the repository root, venv active or ./.venv present
#
# Knobs (environment): GPU_CHECK_DEVICE (cuda), GPU_CHECK_SCENARIO (scenarios/paper/s6.yaml),
# GPU_CHECK_SET (extra --set overrides for the scenario, space separated), DATA_ROOT (full datasets;
# default the shipped subsets), and per-stage limits in seconds: TEST_TIMEOUT (110),
# BENCH_TIMEOUT (150), S6_TIMEOUT (280): together under a 600 s command limit. s6's 50 rounds may
# take longer than its stage; the JSON then projects the whole run from the rounds (or, before
# the first round ends, the iterations) done. A dry run on a CPU machine checks the script itself:
#   GPU_CHECK_DEVICE=cpu GPU_CHECK_SCENARIO=scenarios/quick.yaml BENCH_SIZES=4:0.25:16 tools/gpu_check.sh
set -uo pipefail

cd "$(dirname "$0")/.."
if [[ -z "${VIRTUAL_ENV:-}" && -f .venv/bin/activate ]]; then
    # shellcheck disable=SC1091
    . .venv/bin/activate
fi
PY="${PYTHON:-python}"
DEVICE="${GPU_CHECK_DEVICE:-cuda}"
SCENARIO="${GPU_CHECK_SCENARIO:-scenarios/paper/s6.yaml}"
EXTRA_SET="${GPU_CHECK_SET:-}"
TEST_TIMEOUT="${TEST_TIMEOUT:-110}"
BENCH_TIMEOUT="${BENCH_TIMEOUT:-150}"
S6_TIMEOUT="${S6_TIMEOUT:-280}"
BENCH_SIZES="${BENCH_SIZES:-12:0.25:32 16:1:64}"
DEST="${OUT:-.}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")"
RESULT="$DEST/gpu_check.json"
mkdir -p "$DEST"
# Deterministic cuBLAS (the engine also turns TF32 off and cuDNN deterministic on).
export CUBLAS_WORKSPACE_CONFIG="${CUBLAS_WORKSPACE_CONFIG:-:4096:8}"
export PYTHONUNBUFFERED=1

# record STAGE KEY=VALUE... : merge values into the result JSON (values are JSON or plain text).
record() {
    "$PY" - "$RESULT" "$@" <<'PYEOF'
import json, sys
from pathlib import Path
path, stage, pairs = Path(sys.argv[1]), sys.argv[2], sys.argv[3:]
data = json.loads(path.read_text()) if path.is_file() else {}
section = data.setdefault(stage, {})
for pair in pairs:
    key, _, value = pair.partition("=")
    try:
        section[key] = json.loads(value)
    except ValueError:
        section[key] = value
path.write_text(json.dumps(data, indent=2) + "\n")
PYEOF
}

now() { date +%s.%N; }
since() { "$PY" -c "import sys; print(round(float(sys.argv[2]) - float(sys.argv[1]), 3))" "$1" "$(now)"; }
tail_json() { "$PY" -c "import json, sys; print(json.dumps(open(sys.argv[1], errors='replace').read()[-4000:]))" "$1"; }

# -- 0. the machine ---------------------------------------------------------------------------
rm -f "$RESULT"
"$PY" - "$WORK/env.json" "$DEVICE" <<'PYEOF'
import json, os, platform, subprocess, sys
import torch
device = sys.argv[2]
info = {"torch": torch.__version__, "cuda_runtime": torch.version.cuda, "python": platform.python_version(),
        "cpus": os.cpu_count(), "device": device, "cuda_available": torch.cuda.is_available()}
if torch.cuda.is_available():
    props = torch.cuda.get_device_properties(0)
    info.update(gpu=props.name, gpu_memory_gib=round(props.total_memory / 2**30, 1),
                capability=f"{props.major}.{props.minor}", cudnn=torch.backends.cudnn.version())
try:
    info["nvidia_smi"] = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,clocks.max.sm,power.limit",
                                         "--format=csv,noheader"], capture_output=True, text=True,
                                        timeout=20).stdout.strip()
except (OSError, subprocess.TimeoutExpired):
    info["nvidia_smi"] = None
open(sys.argv[1], "w").write(json.dumps(info))
PYEOF
record machine "info=$(cat "$WORK/env.json")" "started=$(date -u +%FT%TZ)"
if [[ "$DEVICE" == cuda* ]] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    record machine "error=no usable CUDA device"
    echo "gpu_check: no usable CUDA device (see $RESULT)" >&2
    exit 2
fi

# -- 1. equivalence on the device (the CUDA tests need a GPU; the CPU ones prove the engine) ------
start="$(now)"
timeout "$TEST_TIMEOUT" "$PY" -m pytest -q -rs tests/test_cohort.py tests/test_node_device.py \
    "tests/test_http_runs.py::test_quick_on_the_gpu_over_http_is_bit_identical_to_memory_and_close_to_the_cohort" \
    >"$WORK/tests.log" 2>&1
rc=$?
summary="$(tail -n 1 "$WORK/tests.log")"
record equivalence "rc=$rc" "seconds=$(since "$start")" "summary=$summary" "log_tail=$(tail_json "$WORK/tests.log")"
echo "equivalence: rc=$rc $summary"

# -- 2. the step benchmark on the device --------------------------------------------------------
start="$(now)"
# shellcheck disable=SC2086
timeout "$BENCH_TIMEOUT" "$PY" tools/bench_step.py --device "$DEVICE" --sizes $BENCH_SIZES --reps 3 --warmup 1 \
    --impls mono nodes cohort --json "$WORK/bench_step.json" >"$WORK/bench_step.log" 2>&1
rc=$?
bench="null"
[[ -s "$WORK/bench_step.json" ]] && bench="$(cat "$WORK/bench_step.json")"
record step_benchmark "rc=$rc" "seconds=$(since "$start")" "results=$bench" "log_tail=$(tail_json "$WORK/bench_step.log")"
echo "step benchmark: rc=$rc"; cat "$WORK/bench_step.log"

# -- 3. s6 at full paper settings, cohort engine on the device ----------------------------------
start="$(now)"
RUN_DIR="$WORK/s6"
SETS=(--set execution.engine=cohort --set "execution.device=$DEVICE")
[[ -n "${DATA_ROOT:-}" ]] && SETS+=(--set "data.root=$DATA_ROOT")
for item in $EXTRA_SET; do SETS+=(--set "$item"); done
timeout --signal=INT --kill-after=30 "$S6_TIMEOUT" "$PY" - "$SCENARIO" "$RUN_DIR" "${SETS[@]}" \
    >"$WORK/s6.log" 2>&1 <<'PYEOF'
import asyncio, inspect, sys, time
import torch
torch.set_num_threads(max(1, torch.get_num_threads()))
from p2pgan.config.loader import load_scenario
from p2pgan.run import session
from p2pgan.run.cohort import run_cohort
from p2pgan.run.folder import claim_results_dir
from p2pgan.runtime import keep_freed_memory

scenario_path, out, sets = sys.argv[1], sys.argv[2], sys.argv[3:]
overrides = [value for flag, value in zip(sets[::2], sets[1::2]) if flag == "--set"] + [f"output.dir={out}"]
scenario = load_scenario(scenario_path, overrides)
keep_freed_memory()
if "run_cohort" not in inspect.getsource(session):
    # The session does not branch on execution.engine yet: run the cohort in the nodes' place.
    async def cohort_instead(prepared, transport, bus, node_ids=None, strategy=None, first_round=1,
                             states=None, checkpoint=None):
        await run_cohort(prepared, bus, strategy, first_round, states, checkpoint)
    session.run_nodes = cohort_instead
    print("gpu_check: session not wired for execution.engine; cohort patched in", flush=True)
started = time.perf_counter()
with claim_results_dir(scenario.results_dir, force=True, resume=False, source=scenario_path):
    outcome = session.run_scenario(scenario)
print(f"gpu_check: s6 {outcome.status} in {time.perf_counter() - started:.1f} s", flush=True)
PYEOF
rc=$?
"$PY" - "$RUN_DIR" "$WORK/s6_summary.json" "$(since "$start")" <<'PYEOF'
import json, sys
from pathlib import Path
run, dest, stage_s = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
out = {"stage_s": stage_s}
rounds = [json.loads(line) for line in (run / "rounds.jsonl").read_text().splitlines()] if (run / "rounds.jsonl").is_file() else []
out["rounds_completed"] = len(rounds)
out["round_wall_s"] = [r.get("wall_s") for r in rounds]
if (run / "summary.json").is_file():
    summary = json.loads((run / "summary.json").read_text())
    out.update(status=summary.get("status"), wall_s=summary.get("wall_s"), rounds_planned=summary.get("rounds_planned"),
               latency=summary.get("latency"), final=summary.get("final"))
if (run / "plan.json").is_file():
    out["schedule"] = json.loads((run / "plan.json").read_text()).get("schedule")
plan = json.loads((run / "plan.json").read_text()) if (run / "plan.json").is_file() else {}
clients = len(plan.get("clients", [])) or 1
if (run / "steps.jsonl").is_file():
    # One line per client and iteration: the iterations done, and their rate over the stage
    # (start-up, data preparation and metrics included, so an upper bound on the time).
    done = sum(1 for _ in (run / "steps.jsonl").open()) // clients
    sched = plan.get("schedule") or {}
    planned = sched.get("rounds", 0) * sched.get("local_epochs", 0) * sched.get("steps_per_epoch", 0)
    out.update(iterations_done=done, iterations_planned=planned)
    if done:
        out["projected_run_s_from_iterations"] = round(stage_s / done * planned, 1)
if rounds and out.get("rounds_planned"):
    # Projection from the rounds done (the first round includes start-up and the first metrics).
    walls = out["round_wall_s"]
    per_round = (walls[-1] - walls[0]) / (len(walls) - 1) if len(walls) > 1 else walls[0]
    out["projected_run_s"] = round(walls[0] + per_round * (out["rounds_planned"] - 1), 1)
open(dest, "w").write(json.dumps(out))
PYEOF
record s6 "rc=$rc" "seconds=$(since "$start")" "scenario=$SCENARIO" "device=$DEVICE" \
    "run=$(cat "$WORK/s6_summary.json" 2>/dev/null || echo null)" "log_tail=$(tail_json "$WORK/s6.log")"
echo "s6: rc=$rc"; tail -n 5 "$WORK/s6.log"
record machine "finished=$(date -u +%FT%TZ)"
echo "gpu_check: timings in $RESULT"
