#!/usr/bin/env bash
# What benchmarks/gpu_check.py needs on the lent GPU machine besides the checkout: the pure-Python wheels of the
# packages it imports that the machine's image lacks (it has torch, timm, numpy, tqdm; no package registry), at the
# versions installed here. Downloads them into .whl/ (ignored by git, carried by the device tool's `carry`) and prints
# the command to run there.
#   bash benchmarks/gpu_carry.sh            # then: run(command=<printed>, carry=[".whl"], timeout_s=540)
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
mkdir -p .whl
version() { python -c "import importlib.metadata as m; print(m.version('$1'))"; }
for package in nnunetv2 dynamic_network_architectures segment_anything; do
  python -m pip download -q --no-deps --only-binary=:all: --dest .whl "$package==$(version "$package")" \
    || python -m pip download -q --no-deps --no-binary=:none: --dest .whl "$package==$(version "$package")"
done
# a wheel for each (a source archive is built into one here: the device cannot build)
for sdist in .whl/*.tar.gz; do
  [ -e "$sdist" ] || continue
  python -m pip wheel -q --no-deps --wheel-dir .whl "$sdist" && rm "$sdist"
done
du -sh .whl
echo 'python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site && PYTHONUNBUFFERED=1 python3 benchmarks/gpu_check.py --out "$OUT"'
