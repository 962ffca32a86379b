#!/usr/bin/env bash
# Fill the git-ignored .whl/ with what scripts/gpu_checks.sh needs on a GPU machine that has
# its own torch and no internet: wheels of the project's dependencies that such an image
# usually lacks (torchao for FP8 first; all --no-deps, never torch), the project itself as a
# wheel, the RetinaFace weights from the local model store, and redis-server with its two
# uncommon libraries. The folder travels with the working tree, so it must stay small: the
# large optional wheels are added only while it stays under LIMIT_MB (default 60).
#
# Usage: scripts/gpu_wheels.sh            (PYTHON=... to download for another interpreter)
set -euo pipefail

REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
PY=${PYTHON:-$REPO/.venv/bin/python}
[ -x "$PY" ] || PY=python3
DEST=$REPO/.whl
LIMIT_MB=${LIMIT_MB:-60}
rm -rf "$DEST"  # a fresh set each time, so that the size check counts only this one
mkdir -p "$DEST/weights" "$DEST/bin" "$DEST/lib"
export PYTHONPATH=$REPO${PYTHONPATH:+:$PYTHONPATH}

# Pinned to what is installed here (so the GPU run uses the tested versions), --no-deps
# each: a resolver would pull in torch. Heavy libraries a PyTorch image normally has (numpy,
# scipy, pillow, opencv) are left to it; gpu_checks.sh records any import that is missing.
ESSENTIAL=(
  torchao open_clip_torch ftfy wcwidth timm safetensors huggingface_hub
  typer click shellingham rich markdown-it-py mdurl pygments
  pydantic pydantic-core pydantic-settings annotated-types typing-inspection python-dotenv
  pyyaml platformdirs redis hiredis orjson prometheus-client psutil
  pytest pytest-timeout pytest-asyncio pluggy iniconfig
)
# Added in this order while the folder stays under LIMIT_MB: the gate's face crops
# (skimage.data), then the pipeline's decoder and WebRTC stack (the service imports both),
# then the face detector's ONNX weights reader.
IF_ROOM=(scikit-image lazy-loader imageio tifffile av aiortc aioice pyee pylibsrtp
         google-crc32c dnspython ifaddr onnx)

download() {
  local name=$1 version
  version=$("$PY" -m pip show "$name" 2>/dev/null | awk '/^Version:/ {print $2}')
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$DEST" \
    "$name${version:+==$version}" || echo "warning: could not download $name" >&2
}
for name in "${ESSENTIAL[@]}"; do download "$name"; done
"$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w "$DEST" "$REPO" \
  || echo "warning: could not build the dfstream wheel" >&2

weights=$("$PY" -c 'from engines import artifacts; print(artifacts.resolve("retinaface-mobilenet0.25"))')
cp "$weights" "$DEST/weights/"

if binary=$(command -v redis-server); then
  cp "$(readlink -f "$binary")" "$DEST/bin/redis-server"
  for lib in $(ldd "$binary" | awk '/liblzf|libjemalloc/ {print $3}'); do
    cp "$lib" "$DEST/lib/"
  done
fi

for name in "${IF_ROOM[@]}"; do
  before=$(ls "$DEST")
  download "$name"
  if [ "$(du -sm "$DEST" | cut -f1)" -gt "$LIMIT_MB" ]; then
    comm -13 <(echo "$before") <(ls "$DEST") | while read -r added; do rm -f "$DEST/$added"; done
    echo "left out $name: it would take $DEST over LIMIT_MB=$LIMIT_MB" >&2
  fi
done

ls -la "$DEST"
echo "$DEST: $(du -sm "$DEST" | cut -f1) MB"
