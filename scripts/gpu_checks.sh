#!/usr/bin/env bash
# Every GPU check in one prepared run (about 8 minutes on one Hopper GPU), results as JSON in
# OUTDIR. Run where a GPU is lent for a short time, with its own torch and no internet:
#
#   scripts/gpu_wheels.sh               # on a connected machine first: fills .whl/
#   scripts/gpu_checks.sh "$OUT"        # on the GPU machine, .whl/ carried with the tree
#   DRY_RUN=1 scripts/gpu_checks.sh /tmp/gpu-dry   # the same steps on the CPU, tiny sizes
#
# Steps, each under its own timeout, each recorded in OUTDIR/steps.jsonl (rc, seconds) whether
# it passes or not, the run going on past a failed one:
#   install    wheels from .whl/ for distributions missing here (--no-deps: torch stays)
#   preflight  versions, GPU, which project imports work (preflight.json)
#   pytest     the GPU-marked tests: CUDA vs CPU parity of the face detector and the scorer
#              engines, compiled vs eager, fused attention, the FP8 gate (pytest-gpu.xml)
#   scorer     dfstream bench scorer: ViT-L/14 eager bf16/fp16, compiled bf16/FP8, TensorRT
#              where it imports, batch 1..128, bf16 and FP8 matmul ceilings (scorer.json);
#              the compiled engines with a symbolic batch size (two compilations each rather
#              than five), so that they compile within the step's share of the 8 minutes
#   engines    the compiled engines the scorer step built, started again from their cache:
#              warm start, accuracy gate, crops/s (engines.json, engines-list.json)
#   pipeline   dfstream bench pipeline: 720p streams at 5 fps on this GPU (pipeline.json)
# Exit status: 0 when every step passed, else 1 (the JSON files say what failed).
set -u -o pipefail

OUT=${1:?usage: scripts/gpu_checks.sh OUTDIR}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
PY=${PYTHON:-}
if [ -z "$PY" ]; then
  if [ -x "$REPO/.venv/bin/python" ]; then PY=$REPO/.venv/bin/python; else PY=python3; fi
fi
DRY_RUN=${DRY_RUN:-0}
# Compiled engines and the model store live outside OUTDIR: only results travel back.
WORK=${WORK:-$(mktemp -d -t gpu-checks-XXXXXX)}
CACHE=$WORK/home/models/engines
export DFSTREAM_HOME=$WORK/home
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}
[ -d "$REPO/.whl/weights" ] && export DFSTREAM_WEIGHTS_DIR=$REPO/.whl/weights
if ! command -v redis-server >/dev/null && [ -x "$REPO/.whl/bin/redis-server" ]; then
  export PATH=$REPO/.whl/bin:$PATH
  export LD_LIBRARY_PATH=$REPO/.whl/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
fi

if [ "$DRY_RUN" = 1 ]; then
  DEVICE=cpu ARCH=tiny BATCHES=1,2 SECONDS_PER_POINT=0 ROUNDS=1 CEILING=256
  ENGINES=torch:fp32,torch-compile:fp32,torch-compile:fp8,tensorrt:fp16
  PIPELINE=(--size 640x360 --streams 1,2 --video-seconds 3 --warmup 1 --window 2
            --gain-seconds 1 --gain-rounds 1 --max-frames 4)
  T_INSTALL=60 T_PREFLIGHT=120 T_PYTEST=300 T_SCORER=600 T_ENGINES=600 T_PIPELINE=600
else
  DEVICE=cuda ARCH=ViT-L-14 BATCHES=1,8,32,64,128 SECONDS_PER_POINT=1 ROUNDS=2 CEILING=8192
  ENGINES=torch:bf16,torch:fp16,torch-compile:bf16,torch-compile:fp8,tensorrt:fp16
  PIPELINE=(--size 1280x720 --streams 8,16,32,48,64,80,96,112,128,160 --video-seconds 20
            --warmup 2 --window 5 --gain-seconds 3 --gain-rounds 1 --max-frames 32)
  T_INSTALL=45 T_PREFLIGHT=30 T_PYTEST=100 T_SCORER=170 T_ENGINES=60 T_PIPELINE=120
fi

dfstream() { "$PY" -c 'from stream.cli import main; main()' "$@"; }
export -f dfstream
export PY

FAILED=0
# step NAME TIMEOUT_S STDOUT_FILE COMMAND...: run it, log stderr, record rc and seconds.
step() {
  local name=$1 limit=$2 stdout=$3
  shift 3
  echo "== $name (timeout ${limit}s): $*" >&2
  local start=$SECONDS rc
  timeout --kill-after=10 "$limit" bash -c '"$@"' _ "$@" >"$stdout" 2>"$OUT/$name.log"
  rc=$?
  local took=$((SECONDS - start)) timed_out=false
  if [ "$rc" -eq 124 ] || [ "$rc" -eq 137 ]; then timed_out=true; fi
  [ "$rc" -eq 0 ] || FAILED=1
  printf '{"step": "%s", "rc": %d, "seconds": %d, "timed_out": %s, "dry_run": %s}\n' \
    "$name" "$rc" "$took" "$timed_out" "$([ "$DRY_RUN" = 1 ] && echo true || echo false)" \
    >>"$OUT/steps.jsonl"
  echo "== $name: rc $rc in ${took}s" >&2
  tail -n 3 "$OUT/$name.log" >&2
}

install_missing() {
  shopt -s nullglob
  local wheels=("$REPO"/.whl/*.whl) wheel dist missing=()
  for wheel in "${wheels[@]}"; do
    dist=$(basename "$wheel" | cut -d- -f1)
    "$PY" -c "import importlib.metadata as m, sys; m.version(sys.argv[1])" "$dist" \
      2>/dev/null || missing+=("$wheel")
  done
  echo "missing here: ${#missing[@]} of ${#wheels[@]} carried wheels"
  [ "${#missing[@]}" -eq 0 ] && return 0
  "$PY" -m pip install --no-deps --no-index --find-links "$REPO/.whl" "${missing[@]}"
}
export -f install_missing
export REPO

preflight() {
  "$PY" - <<'EOF'
import importlib, json, os, platform, shutil
info = {"python": platform.python_version(), "cpus": os.cpu_count(),
        "redis_server": shutil.which("redis-server"), "imports": {}}
for name in ("torch", "torchao", "open_clip", "scipy", "skimage", "cv2", "av", "onnxruntime",
             "tensorrt", "aiortc", "redis", "typer", "pydantic_settings", "engines", "stream.cli",
             "stream.service"):
    try:
        module = importlib.import_module(name)
        info["imports"][name] = getattr(module, "__version__", "ok")
    except Exception as exc:  # noqa: BLE001 - every failure is what this step reports
        info["imports"][name] = f"missing: {type(exc).__name__}: {exc}"[:300]
import torch
info["cuda"] = torch.cuda.is_available()
if info["cuda"]:
    info["gpu"] = torch.cuda.get_device_name()
    info["capability"] = ".".join(map(str, torch.cuda.get_device_capability()))
    info["bf16"] = torch.cuda.is_bf16_supported()
try:
    import av
    info["pyav_hwaccels"] = sorted(av.codec.hwaccel.hwdevices_available())
except Exception as exc:  # noqa: BLE001
    info["pyav_hwaccels"] = f"unknown: {exc}"
print(json.dumps(info, indent=2))
EOF
}
export -f preflight

step install "$T_INSTALL" "$OUT/install.txt" install_missing
step preflight "$T_PREFLIGHT" "$OUT/preflight.json" preflight
# Only the files with GPU cases: the rest of the suite imports tools (browsers, transformers)
# a GPU image need not have, and one file that cannot be collected must not stop the others.
GPU_TESTS=$(grep -l "pytest.mark.gpu" tests/test_*.py)
step pytest "$T_PYTEST" "$OUT/pytest.txt" "$PY" -m pytest $GPU_TESTS -m gpu -q -rs \
  -p no:cacheprovider --continue-on-collection-errors --junitxml="$OUT/pytest-gpu.xml"
step scorer "$T_SCORER" "$OUT/scorer.json" dfstream bench scorer --device "$DEVICE" --json \
  --archs "$ARCH" --batches "$BATCHES" --backends "$ENGINES" --seconds "$SECONDS_PER_POINT" \
  --rounds "$ROUNDS" --ceiling-size "$CEILING" --ceiling-seconds 1 --cache-dir "$CACHE" \
  --dynamic-batch
step engines "$T_ENGINES" "$OUT/engines.json" dfstream engine bench --device "$DEVICE" \
  --arch "$ARCH" --allow-untrained --cache-dir "$CACHE" --json
step engines-list 30 "$OUT/engines-list.json" dfstream engine list --cache-dir "$CACHE" --json
# The pipeline's scorer is what `auto` picks here: a gated compiled engine at max_batch 128
# when the steps above built one that passed, else eager torch bf16.
export DFSTREAM_DETECTOR__MAX_BATCH=${BATCHES##*,}
step pipeline "$T_PIPELINE" "$OUT/pipeline.json" dfstream bench pipeline --device "$DEVICE" \
  --arch "$ARCH" --json "${PIPELINE[@]}"

echo "results in $OUT:" >&2
cat "$OUT/steps.jsonl" >&2
exit "$FAILED"
