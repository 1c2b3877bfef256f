"""Regenerate the golden model and its reference masks (tests/golden/), after an intended numerics change.

    python tests/golden/make_golden.py --work /tmp/golden_work

1. ``sam_nnunet demo`` trains HSPSAMTrainer_20epochs (cpu_tiny plans, 50 iterations per epoch, seed 0) on the
   first 20 shipped ACDC patients, the last 2 of them held out (about 6 minutes on 2 cores);
2. ``sam_nnunet export-model`` copies it for inference only into ``tests/golden/model`` (about 3 MB);
3. the held-out volumes are predicted exactly as ``test_golden.py`` predicts them, and the masks are written
   to ``tests/golden/reference/``.

Training is not bit-for-bit repeatable (nnU-Net's augmentation workers keep their own RNGs), which is why the
model itself is committed: the test checks inference numerics, which are repeatable.
"""
import argparse
import shutil
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from golden import ACDC, MODEL, REFERENCE, held_out_cases, predict  # noqa: E402


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--work", required=True, help="new folder for the demo run")
    p.add_argument("--acdc", default=str(ACDC))
    args = p.parse_args()
    work = Path(args.work)
    subprocess.run(["sam_nnunet", "demo", "-i", args.acdc, "--out", str(work), "--patients", "20", "--holdout", "2",
                    "--epochs", "20", "--iterations", "50", "--seed", "0", "--preset", "cpu_tiny"], check=True)
    shutil.rmtree(MODEL, ignore_errors=True)
    shutil.rmtree(REFERENCE, ignore_errors=True)
    env_results = work / "nnUNet_results"
    subprocess.run(["sam_nnunet", "export-model", "-d", "27", "-c", "2d", "-tr", "HSPSAMTrainer_20epochs",
                    "-p", "nnUNetPlans_SAMcpu", "-f", "0", "-o", str(MODEL)], check=True,
                   env={**__import__("os").environ, "nnUNet_results": str(env_results),
                        "nnUNet_raw": str(work / "nnUNet_raw"), "nnUNet_preprocessed": str(work / "nnUNet_preprocessed")})
    REFERENCE.mkdir()
    for case, image in held_out_cases(Path(args.acdc)).items():
        predict(image, REFERENCE / f"{case}.nii.gz")
        print(f"reference {case}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
