#!/usr/bin/env bash
# GPU readiness in under 5 minutes on one GPU machine:
#   1. the device-parametrised tests (pytest -m device) on CUDA,
#   2. per-step times of every registered optimizer on CPU and GPU side by side,
#   3. the benchmark suite's quick protocols on CUDA (python -m natgrad.bench --quick --device cuda).
# Everything printed also goes to OUT_DIR/gpu_check.txt (default OUT_DIR: gpu-check/).
# Usage: bash scripts/gpu_check.sh [OUT_DIR]       DEVICE=cpu bash scripts/gpu_check.sh  (a dry run)
set -uo pipefail
cd "$(dirname "$0")/.."
OUT_DIR=${1:-gpu-check}
DEVICE=${DEVICE:-cuda}
PYTHON=${PYTHON:-$(command -v python3 || command -v python)}
export PYTHONUNBUFFERED=1
mkdir -p "$OUT_DIR"
LOG="$OUT_DIR/gpu_check.txt"
: > "$LOG"
say() { echo "$@" | tee -a "$LOG"; }
status=0

say "== gpu_check $(date -u +%Y-%m-%dT%H:%M:%SZ) on $(hostname), device $DEVICE"
"$PYTHON" - "$DEVICE" <<'PY' 2>&1 | tee -a "$LOG"
import sys, torch
dev = sys.argv[1]
print(f"torch {torch.__version__}, CUDA available: {torch.cuda.is_available()}, CUDA {torch.version.cuda}")
if torch.cuda.is_available():
    print("GPU:", torch.cuda.get_device_name(0))
if dev == "cuda" and not torch.cuda.is_available():
    sys.exit("no CUDA device: nothing to check here (DEVICE=cpu runs the same steps on the CPU)")
PY
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 1

say "== 1/3 device-parametrised tests (pytest -m device)"
timeout 150 "$PYTHON" -m pytest -m device -q --tb=short -p no:cacheprovider tests/natgrad 2>&1 | tail -n 80 | tee -a "$LOG"
[ "${PIPESTATUS[0]}" -eq 0 ] || { status=1; say "!! device tests failed or timed out"; }

say "== 2/3 time per step, CPU and $DEVICE side by side"
DEVS="cpu"; [ "$DEVICE" != "cpu" ] && DEVS="cpu $DEVICE"
timeout 90 "$PYTHON" -m natgrad.bench.devices --devices $DEVS --steps 20 --warmup 5 --out "$OUT_DIR/step_times.txt" \
    2>&1 | tee -a "$LOG"
[ "${PIPESTATUS[0]}" -eq 0 ] || { status=1; say "!! step times failed or timed out"; }

say "== 3/3 python -m natgrad.bench --quick --device $DEVICE"
timeout 180 "$PYTHON" -m natgrad.bench --quick --device "$DEVICE" --report-dir "$OUT_DIR/bench" 2>&1 | tee -a "$LOG"
[ "${PIPESTATUS[0]}" -eq 0 ] || { status=1; say "!! quick benchmarks failed or timed out"; }

say "== done (exit $status); per-step times: $OUT_DIR/step_times.txt, report: $OUT_DIR/bench/report.html"
exit $status
