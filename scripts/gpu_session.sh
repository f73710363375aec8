#!/usr/bin/env bash
# The GPU checks and benchmarks in one command, within a time budget: what a session on a lent
# GPU machine runs (its minutes are counted, and it may have no network), and what anyone with a
# CUDA machine can run to check a change.
#
#   PARTS="engine quantized bench cold" TOKENIZER=DIR OUT=DIR [BUDGET=580] [WHEELS=DIR] \
#     bash scripts/gpu_session.sh
#
# Parts, run in the order given:
#   engine | quantized | attention | gemv   scripts/gpu_check.py --only PART (each capped at CHECK_S, default 300 s)
#   bench    scripts/bench_gpu.py --skip "$SKIP" (default eager) [--quant "$QUANT"]
#   burst    scripts/bench_burst.py --device cuda $BURST_ARGS
#   cold     scripts/bench_cold_start.py $COLD_ARGS
# TOKENIZER is a folder with the bundled model's config and tokenizer files (the benchmarks use
# random weights). WHEELS, if set, is a folder of wheels installed first without an index (a
# machine without network lacks pydantic, fastapi and uvicorn). Each part's log is OUT/PART.log;
# a part starts only with 30 s of the budget left, and is cut at what is left. The summary (rc,
# passed and failed checks) goes to stdout; OUT is packed into OUT/all.tgz at the end.
set -uo pipefail
cd "$(dirname "$0")/.."
: "${PARTS:?name the parts to run}" "${TOKENIZER:?a folder with config.json and the tokenizer}" "${OUT:?an output folder}"
BUDGET=${BUDGET:-580}
CHECK_S=${CHECK_S:-300}
start=$(date +%s)
mkdir -p "$OUT"
if [ -n "${WHEELS:-}" ]; then
  python3 -m pip install -q --no-index --no-deps --target /tmp/lmi-gpu-site "$WHEELS"/*.whl
  export PYTHONPATH="/tmp/lmi-gpu-site${PYTHONPATH:+:$PYTHONPATH}"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)"

left() { echo $((BUDGET - ($(date +%s) - start))); }

for part in $PARTS; do
  budget=$(left)
  if [ "$budget" -lt 30 ]; then echo "$part: not run, ${budget} s left"; continue; fi
  log="$OUT/$part.log"
  case "$part" in
    engine|quantized|attention|gemv)
      timeout $((budget < CHECK_S ? budget : CHECK_S)) python3 scripts/gpu_check.py --only "$part" \
        --tokenizer "$TOKENIZER" > "$log" 2>&1 ;;
    bench)
      timeout "$budget" python3 scripts/bench_gpu.py --tokenizer "$TOKENIZER" --skip "${SKIP:-eager}" \
        ${QUANT:+--quant "$QUANT"} --out "$OUT/bench" > "$log" 2>&1 ;;
    burst)
      # shellcheck disable=SC2086  # BURST_ARGS is a list of arguments
      timeout "$budget" python3 scripts/bench_burst.py --device cuda --tokenizer "$TOKENIZER" ${BURST_ARGS:-} \
        > "$log" 2>&1 ;;
    cold)
      # shellcheck disable=SC2086
      timeout "$budget" python3 scripts/bench_cold_start.py --tokenizer "$TOKENIZER" --out "$OUT/cold" ${COLD_ARGS:-} \
        > "$log" 2>&1 ;;
    *) echo "$part: unknown part (engine, quantized, attention, gemv, bench, burst, cold)"; continue ;;
  esac
  rc=$?
  echo "$part: rc $rc ($([ $rc -eq 124 ] && echo 'cut at the budget; ')$(( $(date +%s) - start )) s in), \
$(grep -c '^PASS' "$log") passed, $(grep -c '^FAIL' "$log") failed"
  grep '^FAIL' "$log" | head -20
  [ $rc -ne 0 ] && tail -n 3 "$log"
done
tar -czf "$OUT/all.tgz" -C "$OUT" --exclude all.tgz .
