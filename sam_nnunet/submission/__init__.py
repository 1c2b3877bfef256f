"""Challenge-submission entrypoint: image files in, masks out, with a trained nnU-Net model (any trainer).

Used as the Docker image's entrypoint (``docker/Dockerfile``) and runnable as is::

    python -m sam_nnunet.submission [--model MODEL] [--input /input] [--output /output]
        [--layout auto|flat|grand-challenge] [--input-slug SLUG ...] [--output-slug SLUG] [--overwrite]
        [--folds 0 1 2 3 4] [--no-mirroring] [--device auto|cuda|cpu] [--checkpoint checkpoint_final.pth]

Model
  ``MODEL``: anything :func:`sam_nnunet.sharing.model.locate_model` takes: a model zip (``sam_nnunet export-model
  --zip``, ``nnUNetv2_export_model_to_zip``), a trained-model folder (``<Trainer>__<Plans>__<configuration>`` holding
  plans.json, dataset.json and fold_X/checkpoint_final.pth), a ``DatasetXXX_Name`` folder, or a folder with exactly
  one of these below it (what ``sam_nnunet export-model`` writes). Default: grand-challenge's separately uploaded
  model in ``/opt/ml/model`` when one is there, else the baked-in ``$SAM_NNUNET_MODEL``. A dataset folder with
  ``inference_information.json`` runs its winning configuration, an ensemble of several models included, and the
  postprocessing that cross-validation chose; so does a zip that holds them. Checkpoints are loaded weights-only
  (:mod:`sam_nnunet.sharing.trust`). On the CPU, torch uses as many threads as the process may use
  (:func:`sam_nnunet.cpus.usable_cpus`: affinity, cgroup quota, ``OMP_NUM_THREADS``), not the host's core count.
  A folder written by ``sam_nnunet export-onnx`` (``onnx_export.json``, ``fold_X/model.onnx``) runs on ONNX Runtime
  on the CPU (:mod:`sam_nnunet.export.onnx_predictor`), with the same preprocessing, sliding window and export. The
  model's nnU-Net image I/O class (plans.json ``image_reader_writer``) decides what a case is:

  * volume models (SimpleITKIO and nnU-Net's other medical readers): scalar 2D/3D images, one file per
    channel, read and written by the model's own I/O class so that the axis conventions match training;
  * natural-image models (``NaturalImage2DIO``, dataset.json ``file_ending`` ``.png``: Kvasir-SEG,
    CVC-ClinicDB, ISIC): one 2D 8-bit image holds all channels. Inputs are converted the way
    :mod:`sam_nnunet.datasets.natural2d` converted the training images (PIL ``convert("RGB")``): grey is
    replicated to R = G = B, a palette is expanded, an alpha channel is dropped (not composited); a note
    is printed for each converted file. 16-bit or float pixels and 3D images (other than one slice) are
    refused. A one-channel (grey) natural-image model takes grey images only.

Layouts (``--layout``; ``auto``, the default, is grand-challenge when ``INPUT/images/`` exists, else flat)
  flat
    The files directly in INPUT. Volume models: ``.nii.gz``, ``.nii``, ``.mha``, ``.nrrd``; a model with N channels
    takes N files per case, ``CASE_0000`` ... ``CASE_000{N-1}`` (nnU-Net's naming). Natural-image models:
    ``.png``, ``.jpg``, ``.jpeg``, one file per case. Masks: ``OUTPUT/CASE`` plus the input's extension
    (volume models; with the input's size, spacing, origin and direction), ``OUTPUT/CASE.png``
    (natural-image models: lossless, never JPEG), holding nnU-Net's label values.
  grand-challenge
    grand-challenge.org mounts one folder per input interface, ``INPUT/images/<slug>/<uuid>.mha``, and
    collects ``OUTPUT/images/<slug>/<name>.mha``. Inputs: what the flat layout takes, plus ``.mha``,
    ``.tif`` and ``.tiff`` (an RGB image there is a 2D image with 3 components of 8 bits). Each channel
    file comes from its own slug, named with ``--input-slug`` once per channel in channel order (else
    ``$SAM_NNUNET_INPUT_SLUGS``, comma-separated; else the one folder under ``INPUT/images/``, and an
    error listing the folders when there are several). Natural-image models take one slug. A mask goes to
    ``OUTPUT/images/<output slug>/<input name>.mha`` (``--output-slug``, else ``$SAM_NNUNET_OUTPUT_SLUG``,
    else ``segmentation``; it must match the algorithm's output interface), where the input name is the
    first slug's file name without its extension, with the input's size, spacing, origin and direction.
    Grand-challenge gives one file per interface and job; several files per slug are paired across slugs
    by sorted file name, only when every slug holds as many files (the pairs are printed), else an error.

Order of work
  1. Usage and layout: the output folder must not be the input folder or inside it; no two inputs may
     map to one mask; masks that exist already stop the run, listed, unless ``--overwrite``.
  2. One pass over all cases before the first prediction, reading each case fully and releasing it: every
     file must hold all the pixel data its header promises (:mod:`sam_nnunet.submission.image_checks`: truncated
     ``.nii.gz``, ``.nii``, ``.mha``, ``.nrrd``, TIFF, PNG, JPEG), the pixels must suit the model (components,
     dimension, bit depth), all channel files of a case must share one grid, the case must read as the
     model's channel count, and every value must be finite (NaN/inf is an error naming the file).
  3. Prediction, one case at a time (read, predict, write, release), so memory does not grow with the
     number of cases; progress ``[i/n] case -> mask (seconds)``. A mask is written under a hidden name
     (``.NAME.partial-PID<ext>``) in its output folder and renamed into place, so a run killed while
     writing leaves no half-written file under a mask's name.
  The input folder is only ever read.

Exit codes: 0 done; 2 bad input or usage (:class:`SubmissionError`, reason on stderr, nothing written).
"""
from __future__ import annotations

# the modules: images (what a case is for the model), layouts (where the cases are), run (checks, prediction, main);
# image_checks (is a file complete) stands alone
from sam_nnunet.submission.images import NaturalImages, SubmissionError, VolumeImages, model_images
from sam_nnunet.submission.layouts import Case, find_cases, grand_challenge_cases
from sam_nnunet.submission.run import main, predict_folder

__all__ = ["Case", "NaturalImages", "SubmissionError", "VolumeImages", "find_cases", "grand_challenge_cases", "main",
           "model_images", "predict_folder"]
