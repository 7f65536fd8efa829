#!/usr/bin/env bash
# One device check of the lumina kernels on a lent GPU machine (H200), from the repository root:
#
#   bash benchmarks/device_check.sh
#
# (a) environment: nvidia-smi, python, torch, triton;  (b) builds the extension for sm_90 (timed);
# (c) python -m lumina_kernels.info;  (d) the CUDA tests (pytest tests -x -q -m cuda);
# (e) the sampling benchmark (bench_sampling.py: eager vs CUDA graphs vs context drop, 2B config, 30 evaluations
# with CFG at 1024px and 2048px); (f) the CUDA kernel and end-to-end benchmarks (--benchmark-json; e2e vs diffusers
# when it is installed);  (g) a markdown table of them, printed last.
#
# Every step runs under `timeout`; a failed step does not stop the later ones, and the script exits
# nonzero if any step failed. A step that cannot run (pytest or pytest-benchmark missing and no
# wheels to install them from) is reported SKIPPED and does not by itself fail the script.
# Full logs go to $OUT (else ./device_out), 7 files at most: env.log build.log info.log tests.log
# bench.log bench.json sample.log sample.json summary.md, and with e2e: e2e.log e2e.md (11 files).
#
# Environment (all optional):
#   OUT              where the logs go (default ./device_out)
#   PYTHON           interpreter (default python3)
#   LUMINA_WHEELS    folder of wheels (default .whl in the repository root, filled by benchmarks/fetch_wheels.sh):
#                    every wheel there is installed into /tmp/lumina-site, put on PYTHONPATH; pytest /
#                    pytest-benchmark / hypothesis are also installed from it if missing
#   T_BUILD T_INFO T_TESTS T_SAMPLE T_BENCH   per-step timeouts in seconds (default 240 30 100 150 180)
#   DEADLINE         seconds for the whole script (default 560): a step gets at most what is left, and a step
#                    with under 20 s left is skipped, so the device call's 600 s limit is never hit
#   SKIP_BUILD=1     use the lumina_kernels already importable (no pip install -e)
#   PARTS            the steps to run after (a)-(c), space-separated, of: tests sample bench e2e
#                    (default "tests sample bench"; a second call on the still-warm machine can run
#                    SKIP_BUILD=1 PARTS="e2e": the end-to-end comparison with diffusers, python -m benchmarks.e2e)
#   T_E2E            timeout of e2e in seconds (default 300)
#   BENCH_ARGS       extra pytest arguments for (e), e.g. "-k 'not compiled'"
set -u -o pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 2
ROOT=$PWD
OUT=${OUT:-$ROOT/device_out}
mkdir -p "$OUT" || exit 2
PY=${PYTHON:-python3}
WHEELS=${LUMINA_WHEELS:-$ROOT/.whl}
T_BUILD=${T_BUILD:-240}
T_INFO=${T_INFO:-30}
T_TESTS=${T_TESTS:-100}
T_BENCH=${T_BENCH:-180}
T_SAMPLE=${T_SAMPLE:-150}
DEADLINE=${DEADLINE:-560}
T_E2E=${T_E2E:-300}
PARTS=" ${PARTS:-tests sample bench} "
want() { [[ "$PARTS" == *" $1 "* ]]; }
export PYTHONUNBUFFERED=1
export PYTHONDONTWRITEBYTECODE=1

T0=$(date +%s)
STATUS=()   # "step: OK/FAILED/SKIPPED (n s)"
FAILED=0

# run_step NAME LOG TIMEOUT_S CMD... : runs CMD with its output appended to LOG, under timeout
# (SIGINT first, so pytest still writes its results, then SIGKILL 20 s later); prints the last lines.
run_step() {
    local name=$1 log=$2 limit=$3
    shift 3
    local left=$((DEADLINE - ($(date +%s) - T0)))
    if [ $left -lt 20 ]; then
        STATUS+=("$name: SKIPPED (deadline: ${left}s left of ${DEADLINE}s)")
        FAILED=1
        echo "=== [$name] SKIPPED: deadline" | tee -a "$log"
        return
    fi
    [ $left -lt "$limit" ] && limit=$left
    local t=$(date +%s) rc
    local cmd="$*"
    cmd=${cmd//$'\n'/ }
    [ ${#cmd} -gt 160 ] && cmd="${cmd:0:157}..."
    echo "=== [$name] $cmd (timeout ${limit}s)" | tee -a "$log"
    timeout -s INT -k 20 "$limit" "$@" >>"$log" 2>&1
    rc=$?
    local dt=$(($(date +%s) - t))
    if [ $rc -eq 0 ]; then
        STATUS+=("$name: OK (${dt}s)")
        tail -n 4 "$log" | sed 's/^/    /'
    else
        [ $rc -eq 124 ] || [ $rc -eq 137 ] && rc="$rc, timed out after ${limit}s"
        STATUS+=("$name: FAILED (rc $rc, ${dt}s; log $(basename "$log"))")
        FAILED=1
        tail -n 25 "$log" | sed 's/^/    /'
    fi
    echo "=== [$name] done in ${dt}s (rc ${rc})" | tee -a "$log"
}

skip_step() {
    STATUS+=("$1: SKIPPED ($2)")
    echo "=== [$1] SKIPPED: $2"
}

# ---------------------------------------------------------------------------------------------
# (a) environment
# ---------------------------------------------------------------------------------------------
ENV_LOG=$OUT/env.log
: >"$ENV_LOG"
{
    echo "date: $(date -Is)   host: $(hostname)   repo: $ROOT   commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
    git status --short 2>/dev/null | head -n 30
    timeout 30 nvidia-smi || echo "nvidia-smi failed (rc $?)"
    timeout 10 nvcc --version 2>&1 | tail -n 2 || true
    echo "nproc: $(nproc)"
} >>"$ENV_LOG" 2>&1
run_step env "$ENV_LOG" 45 "$PY" -c '
import platform, sys, torch
print("python", sys.version.split()[0], sys.executable)
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("gpu", p.name, f"cc {p.major}.{p.minor}", p.multi_processor_count, "SMs", round(p.total_memory / 2**30, 1), "GiB")
try:
    import triton; print("triton", triton.__version__)
except Exception as e:
    print("triton: not importable:", e)
sys.exit(0 if torch.cuda.is_available() else "torch sees no CUDA GPU")
'
grep -E "Driver Version|NVIDIA H" "$ENV_LOG" | head -n 2 | sed 's/^/    /'

# optional pure-Python packages the machine lacks (diffusers, liger-kernel: benchmarks/fetch_wheels.sh puts them
# in .whl/, which the device tool carries): installed into a separate folder on PYTHONPATH, as the device README does
if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    run_step wheels "$ENV_LOG" 120 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/lumina-site "$WHEELS"/*.whl
    export PYTHONPATH=/tmp/lumina-site${PYTHONPATH:+:$PYTHONPATH}
fi

# pytest, pytest-benchmark and hypothesis: install from carried wheels only if missing
HAVE_PYTEST=1
missing=$("$PY" - <<'EOF'
import importlib.util
mods = {"pytest": "pytest", "pytest-benchmark": "pytest_benchmark", "hypothesis": "hypothesis"}
print(" ".join(p for p, m in mods.items() if importlib.util.find_spec(m) is None))
EOF
)
if [ -n "$missing" ]; then
    echo "=== [deps] missing: $missing" | tee -a "$ENV_LOG"
    if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
        run_step deps "$ENV_LOG" 120 "$PY" -m pip install --no-index --find-links "$WHEELS" --no-cache-dir --no-compile $missing
    else
        skip_step deps "missing $missing and no wheels in $WHEELS"
    fi
    "$PY" -c "import pytest, pytest_benchmark" >/dev/null 2>&1 || HAVE_PYTEST=0
fi

# ---------------------------------------------------------------------------------------------
# (b) build the extension for sm_90
# ---------------------------------------------------------------------------------------------
BUILD_LOG=$OUT/build.log
: >"$BUILD_LOG"
if [ "${SKIP_BUILD:-0}" = 1 ]; then
    skip_step build "SKIP_BUILD=1"
else
    run_step build "$BUILD_LOG" "$T_BUILD" env MAX_JOBS=16 LUMINA_CUDA_ARCHS=9.0 \
        "$PY" -m pip install --no-build-isolation --no-deps --no-cache-dir -v -e .
    grep -E "lumina: building|warning|error" "$BUILD_LOG" | grep -v -- "-Werror" | head -n 12 | sed 's/^/    /'
fi

# ---------------------------------------------------------------------------------------------
# (c) what was built
# ---------------------------------------------------------------------------------------------
INFO_LOG=$OUT/info.log
: >"$INFO_LOG"
run_step info "$INFO_LOG" "$T_INFO" "$PY" -m lumina_kernels.info

# ---------------------------------------------------------------------------------------------
# (d) CUDA tests
# ---------------------------------------------------------------------------------------------
TESTS_LOG=$OUT/tests.log
: >"$TESTS_LOG"
if ! want tests; then
    skip_step tests "not in PARTS"
elif [ $HAVE_PYTEST = 1 ]; then
    run_step tests "$TESTS_LOG" "$T_TESTS" "$PY" -m pytest tests -x -q -m cuda -p no:cacheprovider
else
    skip_step tests "pytest / pytest-benchmark not available"
fi

# ---------------------------------------------------------------------------------------------
# (e) sampling benchmark (issue 6 goal: context drop + CUDA graphs vs eager)
# ---------------------------------------------------------------------------------------------
SAMPLE_LOG=$OUT/sample.log
SAMPLE_JSON=$OUT/sample.json
: >"$SAMPLE_LOG"
rm -f "$SAMPLE_JSON"
if ! want sample; then
    skip_step sample "not in PARTS"
elif [ $HAVE_PYTEST = 1 ]; then
    run_step sample "$SAMPLE_LOG" "$T_SAMPLE" "$PY" -m pytest benchmarks/bench_sampling.py --benchmark-only -m cuda -q \
        -p no:cacheprovider --benchmark-json="$SAMPLE_JSON" --benchmark-columns=median,rounds
else
    skip_step sample "pytest / pytest-benchmark not available"
fi

# ---------------------------------------------------------------------------------------------
# (f) CUDA kernel benchmarks
# ---------------------------------------------------------------------------------------------
BENCH_LOG=$OUT/bench.log
BENCH_JSON=$OUT/bench.json
: >"$BENCH_LOG"
rm -f "$BENCH_JSON"
if ! want bench; then
    skip_step bench "not in PARTS"
elif [ $HAVE_PYTEST = 1 ]; then
    # shellcheck disable=SC2086  # BENCH_ARGS is meant to split
    eval "set -- ${BENCH_ARGS:-}"
    run_step bench "$BENCH_LOG" "$T_BENCH" "$PY" -m pytest benchmarks --benchmark-only -m cuda -q -p no:cacheprovider \
        --ignore=benchmarks/bench_sampling.py \
        --benchmark-json="$BENCH_JSON" --benchmark-columns=median,iqr,rounds,iterations "$@"
else
    skip_step bench "pytest / pytest-benchmark not available"
fi

# ---------------------------------------------------------------------------------------------
# (f2) end to end against diffusers (needs diffusers: carried as wheels, see LUMINA_WHEELS)
# ---------------------------------------------------------------------------------------------
E2E_LOG=$OUT/e2e.log
if want e2e; then
    : >"$E2E_LOG"
    run_step e2e "$E2E_LOG" "$T_E2E" "$PY" -m benchmarks.e2e --device cuda --runs 1 --modes eager,drop+graphs \
        --deadline $((T_E2E - 90)) --out "$OUT/e2e.md"
fi

# ---------------------------------------------------------------------------------------------
# (g) the table, last
# ---------------------------------------------------------------------------------------------
echo
echo "=== steps (total $(($(date +%s) - T0))s; logs in $OUT)"
printf '  %s\n' "${STATUS[@]}"
echo
if ! want bench; then
    :
elif [ -s "$BENCH_JSON" ]; then
    if ! "$PY" benchmarks/summarize.py "$BENCH_JSON" --device cuda --out "$OUT/summary.md"; then
        echo "summarize.py failed"
        FAILED=1
    elif ! grep -q '"device": "cuda"' "$BENCH_JSON"; then
        echo "no CUDA benchmark ran"
        FAILED=1
    fi
else
    echo "no benchmark JSON ($BENCH_JSON): no table"
    [ $HAVE_PYTEST = 1 ] && FAILED=1
fi
if [ -s "$SAMPLE_JSON" ]; then
    echo
    "$PY" benchmarks/summarize.py "$SAMPLE_JSON" --device cuda --out "$OUT/sample.md" && cat "$OUT/sample.md" >>"$OUT/summary.md"
    rm -f "$OUT/sample.md"
elif want sample; then
    echo "no sampling JSON ($SAMPLE_JSON)"
fi
[ -s "$OUT/e2e.md" ] && cat "$OUT/e2e.md"
exit $FAILED
