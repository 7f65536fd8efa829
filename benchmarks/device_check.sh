#!/usr/bin/env bash
# The device check of the lumina kernels on a lent GPU machine (H200), from the repository root:
#
#   bash benchmarks/device_check.sh                 # PLAN=first: build, every CUDA test family, priority benchmarks
#   PLAN=second bash benchmarks/device_check.sh     # sampling at 1024^2 and 2048^2 (right after the first call)
#   PLAN=e2e bash benchmarks/device_check.sh        # end to end against diffusers (carry .whl: fetch_wheels.sh)
#
# Every plan has a deadline and a time budget per step that adds up to it (the table below); a step runs
# under `timeout` with its budget, or what is left of the deadline if less, and a failed step does not stop
# the later ones. The script exits nonzero if any step failed, and says why:
#   env      nvidia-smi, python, torch, triton; fails if torch sees no GPU
#   wheels   carried pure-Python wheels (.whl/, benchmarks/fetch_wheels.sh) into /tmp/lumina-site (if any)
#   build    pip install -e . (MAX_JOBS=16), for the visible GPU's architecture; skipped when the tree already
#            holds a build whose CUDA kernels run on this GPU (a warm machine keeps ignored build outputs)
#   info     python -m lumina_kernels.info --require-cuda: fails when the extension did not load, has no CUDA
#            kernels, or none for this GPU
#   tests    python -m benchmarks.device_tests: the `-m cuda` tests, one process per family (attention one per
#            head dim, forward first), 4 at a time, per-test timeouts, crash resume; a skip that is not an
#            allowed one (an optional peer not installed) fails
#   bench    the kernel benchmarks that answer the open questions first (BENCH_FILTER): attention at L 4096
#            against each SDPA backend and the GEMM rate, the norms and RoPE against copy bandwidth; no
#            torch.compile rows
#   sample   bench_sampling.py: eager / graphs / drop / drop+graphs at 1024^2, eager and drop+graphs at 2048^2
#   e2e      python -m benchmarks.e2e --device cuda at 1024^2 against diffusers (needs the carried wheels)
#
# Outputs, at most 8 files in $OUT, written as the run goes (a timeout still returns what was done):
#   device_check.log   every step's output (the build's last 80 lines; its full log is in the tarball)
#   logs.tar.gz        every step's full log, repacked after each step
#   summary.md         the steps, the test table and the benchmark tables, rewritten after each step
#   tests.json and bench.json (first), sample.json (second), e2e.md (e2e)
#
# Environment (all optional):
#   PLAN         first | second | e2e (default first)
#   OUT          where the outputs go (default ./device_out)
#   PYTHON       interpreter (default python3)
#   DEADLINE     seconds for the whole script (default: the plan's, see PLAN_BUDGETS); budgets are scaled to it
#   SKIP_BUILD   1: never build; 0: always build; unset: build unless a usable build is there
#   LUMINA_WHEELS  folder of wheels (default .whl)
#   BENCH_FILTER   pytest -k expression of the bench step (default: the priority rows below)
#   DRY_RUN=1    print each step's command and budget, run nothing, create the output files empty
#   LUMINA_FAKE_GPU=1  behave as on a GPU machine (for DRY_RUN rehearsals on a CPU machine)
set -u -o pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
ROOT=$PWD
OUT=${OUT:-$ROOT/device_out}
mkdir -p "$OUT" || exit 2
PY=${PYTHON:-python3}
WHEELS=${LUMINA_WHEELS:-$ROOT/.whl}
PLAN=${PLAN:-first}
DRY=${DRY_RUN:-0}
FAKE_GPU=${LUMINA_FAKE_GPU:-0}
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
export PYTHONPATH=$ROOT${PYTHONPATH:+:$PYTHONPATH}   # this tree's lumina, whatever pip's state on the machine

# Per plan: "step:seconds ..." in run order; the budgets add up to the plan's deadline.
#   first  (420 s, + 1-2 min machine start = 8-9 of the 15 device minutes): build ~60-100 s on 16 cores (one arch),
#          tests 14 processes 4 at a time (~8 s start each, the slowest family ~40 s), bench ~55 rows x ~1 s
#   second (280 s, issued within 30 s of the first so the machine is warm and the build is kept): sampling
#          at 1024^2 4 modes x 3 runs x ~6-10 s, at 2048^2 2 modes x 2 runs x 30-45 s
#   e2e    (280 s, a later session's second call, with .whl carried): diffusers and lumina at 1024^2
case "$PLAN" in
    first) PLAN_BUDGETS="env:15 wheels:15 build:150 info:15 tests:135 bench:80 summary:10" ;;
    second) PLAN_BUDGETS="env:15 build:0 info:15 sample:240 summary:10" ;;
    e2e) PLAN_BUDGETS="env:15 wheels:15 build:0 info:15 e2e:225 summary:10" ;;
    *) echo "PLAN must be first, second or e2e, got '$PLAN'"; exit 2 ;;
esac
PLAN_TOTAL=0
for sb in $PLAN_BUDGETS; do PLAN_TOTAL=$((PLAN_TOTAL + ${sb#*:})); done
DEADLINE=${DEADLINE:-$PLAN_TOTAL}
budget() {  # budget STEP: the step's seconds, scaled to DEADLINE
    local sb
    for sb in $PLAN_BUDGETS; do
        [ "${sb%%:*}" = "$1" ] && { echo $(( ${sb#*:} * DEADLINE / PLAN_TOTAL )); return; }
    done
    echo 0
}
in_plan() { [[ " $PLAN_BUDGETS " == *" $1:"* ]]; }

WORK=$(mktemp -d /tmp/lumina-device.XXXXXX)
LOG=$OUT/device_check.log
SUMMARY=$OUT/summary.md
: >"$LOG"
T0=$(date +%s)
STATUS=()   # "| step | status | seconds | budget |"
FAILED=0

finish_step() {  # finish_step NAME STEPLOG: fold the step's log into the outputs
    if [ "$1" = build ]; then
        tail -n 80 "$2" >>"$LOG"
    else
        cat "$2" >>"$LOG"
    fi
    tar -czf "$OUT/logs.tar.gz.tmp" -C "$WORK" . 2>/dev/null && mv "$OUT/logs.tar.gz.tmp" "$OUT/logs.tar.gz"
    write_summary
}

write_summary() {
    {
        echo "# lumina device check, plan $PLAN ($(date -Is), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?'))"
        echo
        echo "| step | status | seconds | budget |"
        echo "|---|---|---|---|"
        printf '%s\n' "${STATUS[@]}"
        if [ -s "$OUT/tests.json" ] && [ "$DRY" != 1 ]; then
            echo; echo "## CUDA tests"; echo
            "$PY" -m benchmarks.device_tests --out "$OUT" --table 2>&1
        fi
        for j in bench sample; do
            if [ -s "$OUT/$j.json" ] && [ "$DRY" != 1 ]; then
                echo; echo "## $j"; echo
                "$PY" benchmarks/summarize.py "$OUT/$j.json" --device cuda 2>&1
            fi
        done
        [ -s "$OUT/e2e.md" ] && { echo; cat "$OUT/e2e.md"; }
    } >"$SUMMARY.tmp" 2>&1
    mv "$SUMMARY.tmp" "$SUMMARY"
}

# run_step NAME CMD...: runs CMD under its budget (SIGINT first, so pytest still writes its results, then
# SIGKILL 15 s later), its output in $WORK/NAME.log, then folds it into the outputs.
run_step() {
    local name=$1
    shift
    local limit left steplog=$WORK/$name.log
    limit=${STEP_LIMIT:-$(budget "$name")}
    left=$((DEADLINE - ($(date +%s) - T0)))
    [ "$name" = "$LAST_WORK_STEP" ] && limit=$((left - $(budget summary)))  # the last step takes what is left
    [ $left -lt "$limit" ] && limit=$left
    local cmd="$*"
    cmd=${cmd//$'\n'/ }
    [ ${#cmd} -gt 200 ] && cmd="${cmd:0:197}..."
    if [ "$DRY" = 1 ]; then
        echo "[dry-run] $name: budget $(budget "$name") s: $cmd" | tee -a "$steplog"
        STATUS+=("| $name | PLANNED | 0 | $(budget "$name") |")
        finish_step "$name" "$steplog"
        return
    fi
    if [ "$limit" -lt 10 ]; then
        echo "=== [$name] SKIPPED: ${left} s left of the ${DEADLINE} s deadline" | tee -a "$steplog"
        STATUS+=("| $name | SKIPPED (deadline) | 0 | $(budget "$name") |")
        FAILED=1
        finish_step "$name" "$steplog"
        return
    fi
    echo "=== [$name] $cmd (timeout ${limit} s)" | tee -a "$steplog"
    local t rc dt
    t=$(date +%s)
    timeout -s INT -k 15 "$limit" "$@" >>"$steplog" 2>&1
    rc=$?
    dt=$(($(date +%s) - t))
    if [ $rc -eq 0 ]; then
        STATUS+=("| $name | OK | $dt | $(budget "$name") |")
        tail -n 3 "$steplog" | sed 's/^/    /'
    else
        local why="rc $rc"
        { [ $rc -eq 124 ] || [ $rc -eq 137 ]; } && why="timed out after ${limit} s"
        STATUS+=("| $name | FAILED ($why) | $dt | $(budget "$name") |")
        FAILED=1
        tail -n 30 "$steplog" | sed 's/^/    /'
    fi
    echo "=== [$name] done in ${dt} s ($([ $rc -eq 0 ] && echo OK || echo "FAILED, rc $rc"))" | tee -a "$steplog"
    finish_step "$name" "$steplog"
}

require_rows() {  # require_rows NAME JSON: a benchmark step that timed no CUDA row failed, whatever pytest said
    [ "$DRY" = 1 ] && return
    if ! grep -q '"device": "cuda"' "$2" 2>/dev/null; then
        STATUS+=("| $1 | FAILED (no CUDA benchmark row in $(basename "$2")) | 0 | 0 |")
        FAILED=1
        write_summary
    fi
}

skip_step() {  # skip_step NAME WHY
    STATUS+=("| $1 | SKIPPED ($2) | 0 | $(budget "$1") |")
    echo "=== [$1] SKIPPED: $2" | tee -a "$LOG"
    write_summary
}

LAST_WORK_STEP=""
for sb in $PLAN_BUDGETS; do
    case "${sb%%:*}" in summary) ;; *) LAST_WORK_STEP=${sb%%:*} ;; esac
done
echo "=== plan $PLAN: deadline $DEADLINE s; budgets: $PLAN_BUDGETS (total $PLAN_TOTAL s)" | tee -a "$LOG"

# ---- env -------------------------------------------------------------------------------------
{
    echo "date: $(date -Is)   host: $(hostname)   commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    git status --short 2>/dev/null | head -n 20
    [ "$DRY" = 1 ] || timeout 20 nvidia-smi 2>&1 || echo "nvidia-smi failed"
    echo "nproc: $(nproc)"
} >"$WORK/env.log" 2>&1
ENV_CHECK='
import os, sys, torch
print("python", sys.version.split()[0], "torch", torch.__version__, "cuda", torch.version.cuda, "gpu", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"cc {p.major}.{p.minor}", p.multi_processor_count, "SMs", round(p.total_memory / 2**30, 1), "GiB")
try:
    import triton; print("triton", triton.__version__)
except Exception as e:
    print("triton: not importable:", e)
sys.exit(0 if torch.cuda.is_available() or os.environ.get("LUMINA_FAKE_GPU") == "1" else "torch sees no CUDA GPU")
'
run_step env "$PY" -c "$ENV_CHECK"

# ---- wheels ------------------------------------------------------------------------------------
if in_plan wheels; then
    if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        run_step wheels "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/lumina-site "$WHEELS"/*.whl
        export PYTHONPATH=$PYTHONPATH:/tmp/lumina-site
    else
        skip_step wheels "no wheels in $WHEELS"
    fi
fi

# ---- build ---------------------------------------------------------------------------------------
usable_build() {  # a build in the tree whose CUDA kernels run on this GPU
    "$PY" -m lumina_kernels.info --require-cuda >/dev/null 2>&1
}
if [ "${SKIP_BUILD:-}" = 1 ]; then
    skip_step build "SKIP_BUILD=1"
elif [ "$DRY" != 1 ] && [ "${SKIP_BUILD:-}" != 0 ] && usable_build; then
    skip_step build "a usable build is already there"
else
    # LUMINA_CUDA_ARCHS unset: setup.py builds for the visible GPU (sm_90 on the H200). The second and e2e plans
    # budget no build (a warm machine keeps it); on a cold machine it takes up to 150 s from the steps after it.
    STEP_LIMIT=$(( $(budget build) > 0 ? $(budget build) : 150 )) run_step build env -u LUMINA_CUDA_ARCHS MAX_JOBS=16 \
        "$PY" -m pip install --no-build-isolation --no-deps --no-cache-dir -v -e .
fi

# ---- info: fail loudly when the extension or its CUDA kernels are missing ----------------------------
run_step info "$PY" -m lumina_kernels.info --require-cuda

# ---- tests ---------------------------------------------------------------------------------------------
if in_plan tests; then
    GPU_FLAG=auto
    [ "$FAKE_GPU" = 1 ] && GPU_FLAG=yes
    if [ "$DRY" = 1 ]; then
        "$PY" -m benchmarks.device_tests --out "$OUT" --dry-run --gpu "$GPU_FLAG" >>"$WORK/tests.plan" 2>&1
        : >"$OUT/tests.json"
    fi
    # every process's pytest output goes into the step's own log (and so into device_check.log)
    run_step tests "$PY" -m benchmarks.device_tests --out "$OUT" --log "$WORK/tests.log" --gpu "$GPU_FLAG" \
        --jobs 4 --deadline $(($(budget tests) - 5)) --group-timeout 100 --test-timeout 60
fi

# ---- bench: the rows that answer the open questions first --------------------------------------------
BENCH_FILTER=${BENCH_FILTER:-"not compiled and (attention and 4096 or (test_kernel and 4096 and not merge and not solver and not cfg))"}
if in_plan bench; then
    [ "$DRY" = 1 ] && : >"$OUT/bench.json"
    run_step bench "$PY" -m pytest benchmarks/bench_attention.py benchmarks/bench_kernels.py --benchmark-only -m cuda \
        -q -p no:cacheprovider -k "$BENCH_FILTER" --benchmark-json="$OUT/bench.json" \
        --benchmark-columns=median,iqr,rounds
    require_rows bench "$OUT/bench.json"
fi

# ---- sample: 1024^2 every mode, 2048^2 eager against drop+graphs ---------------------------------------
if in_plan sample; then
    [ "$DRY" = 1 ] && : >"$OUT/sample.json"
    run_step sample "$PY" -m pytest benchmarks/bench_sampling.py --benchmark-only -m cuda -q -p no:cacheprovider \
        -k "1024px or (2048px and (eager or (drop and graphs)))" --benchmark-json="$OUT/sample.json" \
        --benchmark-columns=median,rounds
    require_rows sample "$OUT/sample.json"
fi

# ---- e2e: against diffusers at 1024^2 ----------------------------------------------------------------
if in_plan e2e; then
    [ "$DRY" = 1 ] && : >"$OUT/e2e.md"
    run_step e2e "$PY" -m benchmarks.e2e --device cuda --sizes 1024 --runs 1 --modes eager,drop+graphs \
        --deadline $(($(budget e2e) - 90)) --out "$OUT/e2e.md"
fi

# ---- summary -----------------------------------------------------------------------------------------
write_summary
echo
echo "=== steps (total $(($(date +%s) - T0)) s of the ${DEADLINE} s deadline; outputs in $OUT)"
printf '  %s\n' "${STATUS[@]}"
[ "$DRY" = 1 ] || cat "$SUMMARY" | sed -n '/^## /,$p' | head -n 120
rm -rf "$WORK"
exit $FAILED
