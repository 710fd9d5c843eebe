#!/usr/bin/env bash
# The GPU run: a short bf16 generation check through the app's paths (the shared decode loop and the
# ZeroGPU `spaces.GPU` path), then the serving and decoding figures of the benchmark on CUDA. Its
# figures land in assets/results/benchmark.json under "gpu", with the device's name.
#
#   scripts/gpu_run.sh                 # on a machine with CUDA
#   DEVICE=cpu QUICK=1 scripts/gpu_run.sh   # the same steps, small, on CPU (how it was tested)
set -euo pipefail
cd "$(dirname "$0")/.."
DEVICE=${DEVICE:-cuda}
OUT=${OUT:-runs/gpu}
RESULTS=${RESULTS:-assets/results/benchmark.json}
mkdir -p "$OUT"
if [ "$DEVICE" = cuda ]; then nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || true; fi

if [ -n "${QUICK:-}" ]; then
    check_args=(--requests 2 --max-new-tokens 8)
    bench_args=(--repeats 1 --new-tokens 8 --skip first_token encoding aggregator cold_start training tune
                compute_sharing serving)
    dtype=float32
else
    check_args=(--requests 16 --max-new-tokens 48)
    bench_args=(--repeats 5 --serving-repeats 2 --serving-visitors 1 4 16 64
                --skip first_token encoding aggregator cold_start training tune compute_sharing)
    dtype=bfloat16
fi

python -m demo.app.gpu_check --device "$DEVICE" --dtype "$dtype" --out "$OUT/check.json" "${check_args[@]}"
PPLUG_DEVICE=$DEVICE PPLUG_LLM_DTYPE=$dtype \
    python -m demo.research.benchmark --out "$OUT/benchmark" "${bench_args[@]}"

python - "$OUT" "$RESULTS" <<'PY'
import json, sys, time
from pathlib import Path
out, results_file = Path(sys.argv[1]), Path(sys.argv[2])
check = json.loads((out / "check.json").read_text())
bench = json.loads((out / "benchmark.json").read_text())
results = json.loads(results_file.read_text()) if results_file.is_file() else {}
keep = ("machine", "dtype", "device", "pair", "rows", "serving")
results["gpu"] = {"device": check["device"], "measured_at": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                  "check": check, **{k: bench[k] for k in keep if k in bench}}
results_file.write_text(json.dumps(results, indent=2) + "\n")
print(f"GPU figures ({check['device']}) written to {results_file} under \"gpu\"")
PY
