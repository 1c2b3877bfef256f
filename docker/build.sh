#!/usr/bin/env bash
# Build the challenge-submission image from a trained model.
#
#   docker/build.sh -d 27 -c 2d -tr HSPSAMTrainer -p nnUNetPlans_SAMvitb -f "0 1 2 3 4" -t sam_nnunet_acdc:1
#
# Options: -d dataset, -c configuration, -tr trainer, -p plans, -f folds (quoted list), -t image tag,
#          --engine docker|podman|buildah (default: docker if found, else podman; buildah builds
#          with chroot isolation, which works where a sandbox forbids container runtimes),
#          --base IMAGE (base image with Python and torch; default: the Dockerfile's pytorch/pytorch),
#          --input-slugs SLUGS, --output-slug SLUG (grand-challenge interfaces baked into the image;
#          comma-separated input slugs, one per channel; default: whatever single folder /input/images holds),
#          --context-only DIR (assemble the build context in DIR and stop; no container engine needed),
#          --backend torch|onnx (default torch; onnx: the folds exported with sam_nnunet export-onnx and the
#          image installs ONNX Runtime (extra [onnxruntime]) and predicts on the CPU).
# Needs nnUNet_results set (as for nnUNetv2_predict). The project is packed as committed (git archive HEAD):
# uncommitted changes are left out, with a warning naming them.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(dirname "$here")"
dataset="" config="" trainer="HSPSAMTrainer" plans="nnUNetPlans" folds="0 1 2 3 4" tag="sam_nnunet:latest"
engine="" context_only="" base="" input_slugs="" output_slug="" backend="torch"
while [ $# -gt 0 ]; do
  case "$1" in
    -d) dataset="$2"; shift 2 ;;
    -c) config="$2"; shift 2 ;;
    -tr) trainer="$2"; shift 2 ;;
    -p) plans="$2"; shift 2 ;;
    -f) folds="$2"; shift 2 ;;
    -t) tag="$2"; shift 2 ;;
    --engine) engine="$2"; shift 2 ;;
    --base) base="$2"; shift 2 ;;
    --input-slugs) input_slugs="$2"; shift 2 ;;
    --output-slug) output_slug="$2"; shift 2 ;;
    --context-only) context_only="$2"; shift 2 ;;
    --backend) backend="$2"; shift 2 ;;
    *) echo "unknown option $1 (see the header of $0)" >&2; exit 2 ;;
  esac
done
[ -n "$dataset" ] && [ -n "$config" ] || { echo "give -d DATASET and -c CONFIGURATION" >&2; exit 2; }
case "$backend" in torch|onnx) ;; *) echo "--backend must be torch or onnx, got '$backend'" >&2; exit 2 ;; esac
git -C "$repo" rev-parse --verify -q HEAD >/dev/null || {
  echo "$repo is not a git checkout with a commit: the image packs the project as committed (git archive)" >&2; exit 2; }

if [ -n "$context_only" ]; then
  ctx="$context_only"
  [ ! -e "$ctx" ] || [ -z "$(ls -A "$ctx")" ] || { echo "$ctx is not empty" >&2; exit 2; }
  mkdir -p "$ctx"
else
  ctx="$(mktemp -d)"
  trap 'rm -rf "$ctx"' EXIT
fi

parts=(setup.py README.md sam_nnunet trainers plans)
mkdir -p "$ctx/src" "$ctx/model"
# the project as committed (what CI tests), not whatever else lies in the working tree
git -C "$repo" archive --format=tar HEAD -- "${parts[@]}" | tar -x -C "$ctx/src"
changed="$(git -C "$repo" status --porcelain -- "${parts[@]}")"
[ -z "$changed" ] || printf 'warning: uncommitted changes are not in the image:\n%s\n' "$changed" >&2
if [ "$backend" = onnx ]; then
  # shellcheck disable=SC2086  # folds is a list
  python -m sam_nnunet.cli export-onnx -d "$dataset" -c "$config" -tr "$trainer" -p "$plans" -f $folds -o "$ctx/model"
  sed 's/^ARG EXTRAS=""$/ARG EXTRAS="[onnxruntime]"/' "$here/Dockerfile" > "$ctx/Dockerfile"
else
  # the model zip (weights, plans, card, and the cross-validation's postprocessing and winning configuration when
  # crossval has run), installed as the image's results folder: the entrypoint runs that postprocessing
  # shellcheck disable=SC2086  # folds is a list
  python -m sam_nnunet.cli export-model -d "$dataset" -c "$config" -tr "$trainer" -p "$plans" -f $folds \
    --zip "$ctx/model.zip"
  python -m sam_nnunet.cli install-model "$ctx/model.zip" --results "$ctx/model"
  rm "$ctx/model.zip"
  cp "$here/Dockerfile" "$ctx/Dockerfile"
fi
echo "build context: $ctx"
[ -z "$context_only" ] || exit 0

if [ -z "$engine" ]; then
  if command -v docker >/dev/null 2>&1; then engine=docker; else engine=podman; fi
fi
build_args=(--build-arg "INPUT_SLUGS=$input_slugs" --build-arg "OUTPUT_SLUG=$output_slug")
[ -z "$base" ] || build_args+=(--build-arg "BASE_IMAGE=$base")
# docker format: OCI images drop the Dockerfile's SHELL (pipefail) in buildah and podman
if [ "$engine" = buildah ]; then
  buildah bud --isolation chroot --format docker "${build_args[@]}" -t "$tag" "$ctx"
elif [ "$engine" = podman ]; then
  podman build --format docker "${build_args[@]}" -t "$tag" "$ctx"
else
  "$engine" build "${build_args[@]}" -t "$tag" "$ctx"
fi
runner="$engine"
[ "$engine" != buildah ] || runner=podman
echo "built $tag. Run it with:"
gpus="--gpus all "; [ "$backend" = torch ] || gpus=""
echo "  $runner run --rm ${gpus}--network none -v \$PWD/input:/input:ro -v \$PWD/output:/output $tag"
