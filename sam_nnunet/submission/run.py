"""The entrypoint's run: every case checked before the first prediction, then one case at a time, written atomically.

``python -m sam_nnunet.submission`` calls :func:`main`; the package docstring (:mod:`sam_nnunet.submission`) is its
manual.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

import sam_nnunet.submission as package
from sam_nnunet.files import publish
from sam_nnunet.submission.image_checks import ImageCheckError, check_complete, grid_difference, read_header
from sam_nnunet.submission.images import (DEFAULT_OUTPUT_SLUG, FLAT, GRAND_CHALLENGE, INPUT_SLUGS_ENV, MODEL_ENV,
                                          OUTPUT_SLUG_ENV, SubmissionError, model_images,
                                          split_extension)
from sam_nnunet.submission.layouts import Case, check_outputs, find_cases

#: where grand-challenge unpacks a model uploaded separately from the image (its "model" tarball)
UPLOADED_MODEL = Path("/opt/ml/model")


def validate_case(images, case: Case, num_channels: int) -> None:
    """Read ``case`` fully and check it (module docstring, step 2); its pixels are released on return."""
    try:
        headers = [read_header(f) for f in case.files]
        for header in headers:
            images.check_header(header)
        for header in headers[1:]:
            difference = grid_difference(headers[0], header)
            if difference:
                raise SubmissionError(f"case {case.name!r}: {header.path.name} is not on the grid of "
                                      f"{headers[0].path.name} ({difference}); all channel files of a case must "
                                      f"share size, spacing, origin and direction: resample them onto one grid")
        for f in case.files:
            check_complete(f)
    except ImageCheckError as e:
        raise SubmissionError(str(e)) from e
    for header in headers:
        note = images.conversion_note(header)
        if note:
            print(f"note: {note}")
    try:
        data, _ = images.read(case.files)
    except Exception as e:  # the model's reader refuses a complete, well-formed file: name file and reader
        raise SubmissionError(f"case {case.name!r} ({', '.join(f.name for f in case.files)}): the model's image "
                              f"reader failed: {type(e).__name__}: {e}") from e
    if data.shape[0] != num_channels:
        raise SubmissionError(f"{case.files[0].name}: read {data.shape[0]} channel(s), the model expects "
                              f"{num_channels}")
    finite = np.isfinite(data).reshape(len(data), -1).all(axis=1)
    if not finite.all():
        channel = int(np.argmin(finite))
        owner = case.files[channel] if len(case.files) == len(data) else case.files[0]  # a file per channel, or one
        raise SubmissionError(f"{owner.name} holds NaN or infinite values; the model needs finite intensities: "
                              f"replace them (e.g. by the background value) in the exported image")


def write_atomically(images, seg: np.ndarray, properties: dict, target: Path) -> None:
    """Write under a hidden name next to ``target``, then rename: ``target`` is never a half-written file."""
    stem, extension = split_extension(target.name, (".nii.gz", target.suffix.lower()))
    partial = target.with_name(f".{stem}.partial-{os.getpid()}{extension}")
    try:
        images.write(seg, properties, partial)
        publish(partial, target)
    finally:
        partial.unlink(missing_ok=True)


def predict_case(model, images, case: Case) -> None:
    """Read, predict (members, folds, postprocessing: :class:`sam_nnunet.sharing.model.Model`) and write one case;
    its image and mask are released on return."""
    data, properties = images.read(case.files)
    seg, _ = model.predict(data, properties)
    case.output.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(images, seg, properties, case.output)


def check_output_writable(output_dir: Path) -> None:
    """Before any prediction: the output folder, or the nearest folder above it that exists, is a folder this
    process may write to (found late, it would cost every case's prediction)."""
    existing = output_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise SubmissionError(f"output folder {output_dir} cannot be made: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SubmissionError(f"output folder {output_dir}: {existing} is not writable by this process (uid "
                              f"{os.getuid()}); mount the output folder writable")


def check_model_files(model_dir: Path, folds: Optional[Sequence], checkpoint: str) -> None:
    """Before the model is loaded: every fold asked for has its weights (``fold_X/<checkpoint>``, or ``model.onnx``
    in an ONNX export), and without ``--folds`` at least one fold has."""
    from sam_nnunet.export.onnx_model import METADATA_FILE, MODEL_FILE

    name = MODEL_FILE if (model_dir / METADATA_FILE).is_file() else checkpoint
    available = sorted(p.parent.name[len("fold_"):] for p in model_dir.glob(f"fold_*/{name}"))
    if not available:
        raise SubmissionError(f"model {model_dir} holds no fold_X/{name}; expected the weights of at least one fold "
                              f"(--checkpoint names the file, default checkpoint_final.pth)")
    missing = [str(f) for f in folds or () if str(f) not in available]
    if missing:
        raise SubmissionError(f"fold(s) {missing} of model {model_dir} have no {name}; the folds with one are "
                              f"{available}: choose --folds among them")


def predict_folder(model: Path, input_dir: Path, output_dir: Path, folds: Optional[Sequence] = None,
                   mirroring: bool = True, device: str = "auto", checkpoint: str = "checkpoint_final.pth", *,
                   layout: str = "auto", input_slugs: Sequence[str] = (), output_slug: str = DEFAULT_OUTPUT_SLUG,
                   overwrite: bool = False) -> List[Path]:
    """Predict every case of ``input_dir`` into ``output_dir`` (module docstring); returns the masks written."""
    input_dir, output_dir = input_dir.resolve(), output_dir.resolve()
    if output_dir == input_dir or input_dir in output_dir.parents:
        raise SubmissionError(f"output folder {output_dir} must not be the input folder or inside it")
    from sam_nnunet.sharing.model import Model, locate_model

    try:
        files = locate_model(model)
    except (FileNotFoundError, ValueError) as e:
        raise SubmissionError(str(e)) from e
    images = model_images(files.members[0])
    layout, cases = find_cases(layout, input_dir, output_dir, images, input_slugs, output_slug)
    check_outputs(cases, output_dir, overwrite)
    for case in cases:
        validate_case(images, case, len(images.channel_names))
    print(f"checked {len(cases)} case(s) in {input_dir} ({layout} layout): complete, finite, "
          f"{images.describe_case()}", flush=True)
    check_output_writable(output_dir)
    for member in files.members:
        check_model_files(member, folds, checkpoint)
    if device == "cuda" and any((m / "onnx_export.json").is_file() for m in files.members):
        raise SubmissionError("the model is an ONNX export, which runs on the CPU: use --device cpu or auto")
    try:
        loaded = Model(files, folds=folds, device=device, mirroring=mirroring, checkpoint=checkpoint)
    except (FileNotFoundError, ValueError) as e:  # UntrustedModelError is a ValueError
        raise SubmissionError(str(e)) from e
    print(f"model {loaded.describe()}", flush=True)
    for i, case in enumerate(cases, 1):
        start = time.time()
        predict_case(loaded, images, case)
        print(f"[{i}/{len(cases)}] {case.name} -> {case.output.relative_to(output_dir)} "
              f"({time.time() - start:.1f} s)", flush=True)
    return [case.output for case in cases]


def choose_model(given: Optional[str], uploaded: Path = UPLOADED_MODEL, environ=os.environ) -> Optional[Path]:
    """``--model`` when given; else grand-challenge's separately uploaded model, when ``uploaded`` holds anything;
    else the baked-in model ``$SAM_NNUNET_MODEL``; else None."""
    if given:
        return Path(given)
    if uploaded.is_dir() and any(p for p in uploaded.iterdir() if not p.name.startswith(".")):
        print(f"using the uploaded model in {uploaded}", flush=True)
        return uploaded
    return Path(environ[MODEL_ENV]) if environ.get(MODEL_ENV) else None


def main(argv: Optional[List[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="sam_nnunet.submission", description=package.__doc__.split("\n\n")[0])
    p.add_argument("--model", default=None, help=f"trained model: folder or zip (default: {UPLOADED_MODEL} when "
                                                  f"a model is uploaded there, else ${MODEL_ENV})")
    p.add_argument("--input", default="/input")
    p.add_argument("--output", default="/output")
    p.add_argument("--layout", default="auto", choices=["auto", FLAT, GRAND_CHALLENGE],
                   help="auto: grand-challenge when INPUT/images/ exists, else flat")
    p.add_argument("--input-slug", dest="input_slugs", action="append", metavar="SLUG",
                   help=f"grand-challenge layout: the input folder INPUT/images/SLUG/, once per channel in channel "
                        f"order (default ${INPUT_SLUGS_ENV}, comma-separated, else the only folder there)")
    p.add_argument("--output-slug", default=os.environ.get(OUTPUT_SLUG_ENV) or DEFAULT_OUTPUT_SLUG,
                   help=f"grand-challenge layout: masks go to OUTPUT/images/SLUG/ (default ${OUTPUT_SLUG_ENV}, "
                        f"else {DEFAULT_OUTPUT_SLUG})")
    p.add_argument("--overwrite", action="store_true", help="replace masks that exist already")
    p.add_argument("--folds", nargs="+", default=None, help="folds to ensemble (default: all found)")
    p.add_argument("--no-mirroring", action="store_true", help="disable test-time mirroring (faster)")
    p.add_argument("--device", default="auto", choices=["auto", "cuda", "cpu"])
    p.add_argument("--checkpoint", default="checkpoint_final.pth")
    args = p.parse_args(argv)
    model = choose_model(args.model)
    if model is None:
        print(f"error: give --model, upload a model to {UPLOADED_MODEL} or set {MODEL_ENV}", file=sys.stderr)
        return 2
    input_slugs = args.input_slugs or [s.strip() for s in os.environ.get(INPUT_SLUGS_ENV, "").split(",") if s.strip()]
    folds = [f if f == "all" else int(f) for f in args.folds] if args.folds else None
    try:
        written = predict_folder(model, Path(args.input), Path(args.output), folds,
                                 mirroring=not args.no_mirroring, device=args.device, checkpoint=args.checkpoint,
                                 layout=args.layout, input_slugs=input_slugs, output_slug=args.output_slug,
                                 overwrite=args.overwrite)
    except SubmissionError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(f"done: {len(written)} mask(s) in {args.output}")
    return 0
