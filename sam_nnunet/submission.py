"""Challenge-submission entrypoint: image files in, masks out, with a trained nnU-Net model (any trainer).

Used as the Docker image's entrypoint (``docker/Dockerfile``) and runnable as is::

    python -m sam_nnunet.submission --model MODEL_DIR [--input /input] [--output /output]
                                    [--folds 0 1 2 3 4] [--no-mirroring] [--device auto|cuda|cpu]

* ``MODEL_DIR``: a trained-model folder (``<Trainer>__<Plans>__<configuration>`` holding plans.json,
  dataset.json and fold_X/checkpoint_final.pth), or a folder with exactly one such folder below it
  (what ``nnUNetv2_export_model_to_zip`` packs). Default: ``$SAM_NNUNET_MODEL``.
* Inputs: ``.nii.gz``, ``.nii`` and ``.mha`` files. For a one-channel model every file is a case. For a
  model with N channels, a case is N files named ``CASE_0000`` ... ``CASE_000{N-1}`` (nnU-Net's naming).
* Outputs: one mask per case named like the case (``CASE`` plus the input's extension, so an
  ``.mha`` input gives an ``.mha`` mask), with the input's size, spacing, origin and direction.
* Exit codes: 0 done; 2 bad input or usage (empty input folder, unreadable file, wrong channel
  count, output folder inside the input folder). The input folder is only ever read.

Prediction uses nnU-Net's ``nnUNetPredictor`` (sliding window, Gaussian weighting, optional mirroring)
on the GPU when there is one, else on the CPU, reading and writing with the model's own image I/O
class so that the axis conventions match training.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

EXTENSIONS = (".nii.gz", ".nii", ".mha")
CHANNEL_SUFFIX = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


class SubmissionError(Exception):
    """Bad input or usage; the message says what was expected."""


def split_extension(name: str) -> tuple[str, str]:
    for ext in EXTENSIONS:
        if name.lower().endswith(ext):
            return name[: -len(ext)], ext
    return name, ""


def find_model_folder(path: Path) -> Path:
    if (path / "plans.json").is_file() and (path / "dataset.json").is_file():
        return path
    found = sorted(p.parent for p in path.glob("*/*/plans.json")) + sorted(p.parent for p in path.glob("*/plans.json"))
    found = [p for p in dict.fromkeys(found) if (p / "dataset.json").is_file()]
    if len(found) != 1:
        raise SubmissionError(f"expected one trained nnU-Net model (plans.json + dataset.json + fold_X/) in or "
                              f"below {path}; found {len(found)}: {[str(p) for p in found]}")
    return found[0]


def group_cases(input_dir: Path, num_channels: int) -> Dict[str, List[Path]]:
    """case name -> its channel files, in channel order."""
    if not input_dir.is_dir():
        raise SubmissionError(f"input folder {input_dir} does not exist")
    files = sorted(p for p in input_dir.iterdir() if p.is_file() and split_extension(p.name)[1])
    if not files:
        raise SubmissionError(f"input folder {input_dir} holds no {', '.join(EXTENSIONS)} files")
    cases: Dict[str, List[Path]] = {}
    if num_channels == 1:
        for f in files:
            stem, _ = split_extension(f.name)
            m = CHANNEL_SUFFIX.match(stem)
            case = m.group("case") if m and m.group("channel") == "0000" else stem
            if case in cases:
                raise SubmissionError(f"two inputs map to case {case!r}: {cases[case][0].name} and {f.name}")
            cases[case] = [f]
        return cases
    by_case: Dict[str, Dict[int, Path]] = {}
    for f in files:
        m = CHANNEL_SUFFIX.match(split_extension(f.name)[0])
        if not m:
            raise SubmissionError(f"{f.name}: this model takes {num_channels} channels per case, named "
                                  f"CASE_0000{split_extension(f.name)[1]} ... CASE_{num_channels - 1:04d}")
        by_case.setdefault(m.group("case"), {})[int(m.group("channel"))] = f
    for case, channels in by_case.items():
        if sorted(channels) != list(range(num_channels)):
            raise SubmissionError(f"case {case!r} has channel files {sorted(channels)}; the model expects "
                                  f"{list(range(num_channels))}")
        cases[case] = [channels[i] for i in range(num_channels)]
    return cases


def read_case(reader, files: Sequence[Path], num_channels: int):
    """Read one case with the model's image I/O class and check it: returns (data C x ..., properties)."""
    import SimpleITK as sitk

    for f in files:
        try:
            info = sitk.ImageFileReader()
            info.SetFileName(str(f))
            info.ReadImageInformation()
        except RuntimeError as e:
            raise SubmissionError(f"cannot read {f.name} as a medical image: {str(e).strip().splitlines()[-1]}")
        if info.GetNumberOfComponents() != 1 or info.GetDimension() not in (2, 3):
            raise SubmissionError(
                f"{f.name} is a {info.GetDimension()}D image with {info.GetNumberOfComponents()} component(s); "
                f"the model expects {num_channels} channel(s), each a scalar 2D/3D image"
                + (f" in files CASE_0000 ... CASE_{num_channels - 1:04d}" if num_channels > 1 else ""))
    data, props = reader.read_images([str(f) for f in files])
    if data.shape[0] != num_channels:
        raise SubmissionError(f"{files[0].name}: read {data.shape[0]} channel(s), the model expects {num_channels}")
    return data, props


def predict_folder(model: Path, input_dir: Path, output_dir: Path, folds: Optional[Sequence] = None,
                   mirroring: bool = True, device: str = "auto", checkpoint: str = "checkpoint_final.pth") -> List[Path]:
    input_dir, output_dir = input_dir.resolve(), output_dir.resolve()
    if output_dir == input_dir or input_dir in output_dir.parents:
        raise SubmissionError(f"output folder {output_dir} must not be the input folder or inside it")
    model_dir = find_model_folder(model)

    from sam_nnunet import trainers_folder

    # nnU-Net looks the trainer class up by name; ours live in the installed trainers/ folder
    os.environ.setdefault("nnUNet_extTrainer", trainers_folder())
    import torch
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    dataset_json = load_json(str(model_dir / "dataset.json"))
    num_channels = len(dataset_json.get("channel_names", dataset_json.get("modality", {})))
    cases = group_cases(input_dir, num_channels)
    reader_cls = PlansManager(str(model_dir / "plans.json")).image_reader_writer_class

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type == "cpu":
        torch.set_num_threads(max(1, os.cpu_count() or 1))
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=mirroring,
                                perform_everything_on_device=dev.type == "cuda", device=dev, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(model_dir), use_folds=folds, checkpoint_name=checkpoint)
    print(f"model {model_dir} (folds {list(folds) if folds else 'all found'}), device {dev}, "
          f"mirroring {'on' if mirroring else 'off'}; {len(cases)} case(s) in {input_dir}", flush=True)

    # read and check every case first: a bad file stops the run before any prediction is written
    loaded = {case: read_case(reader_cls(), files, num_channels) for case, files in cases.items()}
    output_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for i, (case, (data, props)) in enumerate(loaded.items(), 1):
        start = time.time()
        seg = predictor.predict_single_npy_array(data, props, None, None, False)
        out = output_dir / (case + split_extension(cases[case][0].name)[1])
        reader_cls().write_seg(seg, str(out), props)
        written.append(out)
        print(f"[{i}/{len(loaded)}] {case} -> {out.name} ({time.time() - start:.1f} s)", flush=True)
    return written


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="sam_nnunet.submission", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default=os.environ.get("SAM_NNUNET_MODEL"), help="trained model folder")
    p.add_argument("--input", default="/input")
    p.add_argument("--output", default="/output")
    p.add_argument("--folds", nargs="+", default=None, help="folds to ensemble (default: all found)")
    p.add_argument("--no-mirroring", action="store_true", help="disable test-time mirroring (faster)")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--checkpoint", default="checkpoint_final.pth")
    args = p.parse_args(argv)
    if not args.model:
        print("error: give --model or set SAM_NNUNET_MODEL", file=sys.stderr)
        return 2
    folds = [f if f == "all" else int(f) for f in args.folds] if args.folds else None
    try:
        written = predict_folder(Path(args.model), Path(args.input), Path(args.output), folds,
                                 mirroring=not args.no_mirroring, device=args.device, checkpoint=args.checkpoint)
    except SubmissionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"done: {len(written)} mask(s) in {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
