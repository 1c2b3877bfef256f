"""Several converted datasets -> one 2D nnU-Net dataset for ESP-MedSAM's universal path (shared/papers/004).

ESP-MedSAM's headline is one model across imaging modalities, with each image's own modality bags and query set.
``sam_nnunet merge-universal -d 27 311 -o 400`` builds that training set from datasets already converted into
``$nnUNet_raw`` (e.g. ACDC cine-MRI and Kvasir-SEG endoscopy):

* **Cases.** Every training case of every source; a 3D volume (ACDC) gives one 2D case per slice
  (``<source>_<case>_z<k>``), a 2D image one case (``<source>_<case>``).
* **Channels made compatible.** Three image channels (``R``, ``G``, ``B``; nnU-Net z-scores each per image): an RGB
  source keeps its colours, a one-channel source is repeated into the three (ESP-MedSAM's TinyViT, like MobileSAM's
  and LiteMedSAM's, takes three). A fourth channel, ``noNorm``, holds the case's modality code
  (:mod:`sam_nnunet.modeling.blocks.modality_channel`): that is how the modality reaches the batch and the
  network through nnU-Net's unchanged data loading, validation and ``nnUNetv2_predict``.
* **The modality of each source** comes from its converter's metadata, as the trainers read it
  (:func:`~sam_nnunet.modeling.blocks.modality_controller.resolve_modality`: dataset.json's ``imaging_modality``,
  or its channel names); ``case_modalities`` in dataset.json records it per case.
* **Labels.** Background 0, then every source's foreground labels in source order (a name two sources share gets
  the source's name as prefix). A case holds only its source's labels.
* **Geometry.** Pixel spacing 1 x 1 for all: endoscopy has no physical pixel size and ACDC's is nominal, so nnU-Net
  resamples none of them; images keep their pixel grid.
* **Splits.** ``splits_final.json`` with five folds in which a case's slices follow their source case: a source's
  own ``splits_final.json`` (ACDC's patient-grouped folds) when it has one, else nnU-Net's split of that source's
  cases (seed 12345; with fewer than five cases, case i is validated in fold i). So a fold's validation slices
  come from volumes (and patients) it never trained on.

Prediction on new images needs the modality channel as well: ``sam_nnunet modality-channel -i FOLDER -d DATASET -m
MODALITY`` writes ``<case>_0003.nii.gz`` beside each case's images. Limitations: sources must be single-label-per-
pixel (no regions) and have one or three image channels.
"""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from sam_nnunet.datasets.common import (DatasetLayoutError, PathLike, Splits, assembling, env_folder,
                                        new_dataset_folder, splits_path, write_dataset_json)
from sam_nnunet.modeling.blocks.modality_channel import UNIVERSAL_KEY

FILE_ENDING = ".nii.gz"
SPLIT_SEED = 12345  # nnU-Net's own (nnunetv2.utilities.crossval_split)


def _source_folder(raw_root: Path, dataset: str) -> Path:
    """``raw_root/Dataset<id>_*`` for an id, ``raw_root/<name>`` for a name."""
    found = sorted(raw_root.glob(f"Dataset{int(dataset):03d}_*")) if str(dataset).isdigit() else \
        [raw_root / dataset] if (raw_root / dataset).is_dir() else []
    if len(found) != 1 or not (found[0] / "dataset.json").is_file():
        raise DatasetLayoutError(f"no converted dataset {dataset!r} (with a dataset.json) in nnUNet_raw ({raw_root})")
    return found[0]


def _source_splits(name: str, cases: List[str], preprocessed_root: Optional[PathLike]) -> Splits:
    """The source's own five folds (its splits_final.json), or nnU-Net's split of its cases."""
    own = splits_path(preprocessed_root, name)
    if own.is_file():
        splits = json.loads(own.read_text())
        covered = {c for fold in splits for c in fold["train"] + fold["val"]}
        if covered >= set(cases):
            return splits
    cases = sorted(cases)
    if len(cases) < 5:  # too few for five folds (quick runs): case i is validated in fold i
        return [{"train": [c for j, c in enumerate(cases) if j != k], "val": cases[k: k + 1]} for k in range(5)]
    from nnunetv2.utilities.crossval_split import generate_crossval_split

    return [{"train": [str(c) for c in f["train"]], "val": [str(c) for c in f["val"]]}
            for f in generate_crossval_split(cases, seed=SPLIT_SEED, n_splits=5)]


def slice_case(volume: str, z: int) -> str:
    """The 2D case of slice ``z`` of a source volume (already prefixed with its source)."""
    return f"{volume}_z{z:02d}"


def volume_of(case: str) -> str:
    """The source volume a 2D case comes from (the case itself for a 2D source image)."""
    return re.sub(r"_z\d+$", "", case)


def _write_2d(path: Path, pixels: np.ndarray) -> None:
    import SimpleITK as sitk

    image = sitk.GetImageFromArray(pixels)
    image.SetSpacing((1.0, 1.0))
    sitk.WriteImage(image, str(path), useCompression=True)


def merge_universal(datasets: Sequence[str], dataset_id: int, *, name: str = "Universal",
                    max_cases: Optional[int] = None, raw_root: Optional[PathLike] = None,
                    preprocessed_root: Optional[PathLike] = None, verbose: bool = True) -> Path:
    """Merge the converted ``datasets`` (ids or names in ``raw_root``, default $nnUNet_raw) into
    ``Dataset{dataset_id:03d}_{name}``; ``max_cases`` per source (the first, sorted). Returns the new folder."""
    from nnunetv2.imageio.reader_writer_registry import determine_reader_writer_from_dataset_json
    from nnunetv2.utilities.utils import get_filenames_of_train_images_and_targets

    from sam_nnunet.modeling.blocks.modality_channel import CHANNEL_NAME, modality_codes
    from sam_nnunet.modeling.blocks.modality_controller import resolve_modality

    if len(datasets) < 2:
        raise ValueError("merge-universal joins two or more datasets (of different modalities)")
    raw = Path(raw_root) if raw_root else env_folder("nnUNet_raw")
    sources = []
    for dataset in datasets:
        folder = _source_folder(raw, str(dataset))
        dataset_json = json.loads((folder / "dataset.json").read_text())
        if "regions_class_order" in dataset_json:
            raise DatasetLayoutError(f"{folder.name} is region-based: merge-universal takes one label per pixel")
        channels = len(dataset_json["channel_names"])
        if channels not in (1, 3):
            raise DatasetLayoutError(f"{folder.name} has {channels} image channels; merge-universal takes 1 (repeated "
                                     f"into R, G, B) or 3 (RGB)")
        try:
            modality = resolve_modality(dataset_json)
        except ValueError as e:
            raise DatasetLayoutError(f"{folder.name}: {e}") from None
        sources.append((folder, dataset_json, modality))
    modalities = list(dict.fromkeys(m for _, _, m in sources))
    if len(modalities) < 2:
        raise DatasetLayoutError(f"the datasets {[f.name for f, _, _ in sources]} are all {modalities[0]}: the "
                                 f"universal path is for several modalities")
    codes = modality_codes(modalities)

    labels: Dict[str, int] = {"background": 0}
    label_maps = []
    for folder, dataset_json, _ in sources:
        mapping = {}
        for label, value in sorted(((k, v) for k, v in dataset_json["labels"].items() if k != "background"),
                                   key=lambda kv: kv[1]):
            new_name = label if label not in labels else f"{folder.name.split('_', 1)[-1]}_{label}"
            labels[new_name] = len(labels)
            mapping[int(value)] = labels[new_name]
        label_maps.append(mapping)

    target = new_dataset_folder(raw_root, dataset_id, name)
    merged_splits: Splits = [{"train": [], "val": []} for _ in range(5)]
    case_modalities: Dict[str, str] = {}
    # the splits are filled while the cases are written; assembling publishes this same list with the dataset (and
    # refuses, before anything is written, a splits_final.json already there)
    with assembling(target, splits=merged_splits, preprocessed_root=preprocessed_root) as tmp:
        (tmp / "imagesTr").mkdir()
        (tmp / "labelsTr").mkdir()
        for (folder, dataset_json, modality), mapping in zip(sources, label_maps):
            files = get_filenames_of_train_images_and_targets(str(folder), dataset_json)
            cases = sorted(files)[: max_cases or None]
            reader = determine_reader_writer_from_dataset_json(dataset_json, files[cases[0]]["images"][0])()
            splits = _source_splits(folder.name, sorted(files), preprocessed_root)
            short = folder.name.split("_", 1)[-1]
            written: Dict[str, List[str]] = {}
            for case in cases:
                image, _ = reader.read_images(files[case]["images"])  # C x Z x Y x X
                seg, _ = reader.read_seg(files[case]["label"])  # 1 x Z x Y x X
                unknown = sorted(set(np.unique(seg).astype(int).tolist()) - set(mapping) - {0})
                if unknown:
                    raise DatasetLayoutError(f"{folder.name} case {case}: label values {unknown} are not in its "
                                             f"dataset.json labels")
                lut = np.zeros(int(seg.max()) + 1, dtype=np.uint8)
                for old, new in mapping.items():
                    if old < len(lut):
                        lut[old] = new
                seg = lut[seg.astype(np.int64)]
                rgb = image if image.shape[0] == 3 else np.repeat(image, 3, axis=0)
                depth = rgb.shape[1]
                written[case] = []
                for z in range(depth):
                    new_case = f"{short}_{case}" if depth == 1 else slice_case(f"{short}_{case}", z)
                    for c in range(3):
                        channel_file = tmp / "imagesTr" / f"{new_case}_{c:04d}{FILE_ENDING}"
                        if c and image.shape[0] == 1:  # a one-channel source: G and B are R's file
                            shutil.copyfile(channel_file.with_name(f"{new_case}_0000{FILE_ENDING}"), channel_file)
                        else:
                            _write_2d(channel_file, rgb[c, z].astype(np.float32))
                    _write_2d(tmp / "imagesTr" / f"{new_case}_0003{FILE_ENDING}",
                              np.full(rgb.shape[2:], codes[modality], dtype=np.float32))
                    _write_2d(tmp / "labelsTr" / f"{new_case}{FILE_ENDING}", seg[0, z])
                    case_modalities[new_case] = modality
                    written[case].append(new_case)
            for k, fold in enumerate(splits[:5]):
                for part in ("train", "val"):
                    merged_splits[k][part] += [c for source_case in fold[part] for c in written.get(source_case, [])]
            if verbose:
                print(f"{folder.name} ({modality}): {len(cases)} cases -> {sum(map(len, written.values()))} 2D cases")
        write_dataset_json(tmp, channel_names={0: "R", 1: "G", 2: "B", 3: CHANNEL_NAME}, labels=labels,
                           file_ending=FILE_ENDING, dataset_name=target.name,
                           reference="; ".join(str(j.get("reference", "")) for _, j, _ in sources),
                           licence="; ".join(f"{f.name}: {j.get('licence', j.get('license', ''))}"
                                             for f, j, _ in sources),
                           description=f"ESP-MedSAM universal training set: {[f.name for f, _, _ in sources]}",
                           **{UNIVERSAL_KEY: {"modality_codes": codes,
                                              "sources": {f.name: m for f, _, m in sources},
                                              "case_modalities": case_modalities}})
    if verbose:
        print(f"-> {target}: {len(case_modalities)} 2D cases, modalities {codes}; splits: "
              f"{splits_path(preprocessed_root, target.name)}")
    return target


def write_modality_channel(folder: PathLike, dataset: str, modality: str, *,
                           raw_root: Optional[PathLike] = None) -> List[Path]:
    """For every case of ``folder`` (images ``<case>_0000.nii.gz`` ... ``_0002``), the constant channel
    ``<case>_0003.nii.gz`` with ``modality``'s code of universal ``dataset``, on the case's own grid. Returns the
    files written; an existing one is never overwritten."""
    import SimpleITK as sitk

    from sam_nnunet.modeling.blocks.modality_controller import canonical_modality

    raw = Path(raw_root) if raw_root else env_folder("nnUNet_raw")
    dataset_json = json.loads((_source_folder(raw, str(dataset)) / "dataset.json").read_text())
    universal = dataset_json.get(UNIVERSAL_KEY)
    if not universal:
        raise ValueError(f"dataset {dataset} is not a universal dataset (no {UNIVERSAL_KEY} in its dataset.json)")
    modality = canonical_modality(modality)
    if modality not in universal["modality_codes"]:
        raise ValueError(f"dataset {dataset} was trained on {list(universal['modality_codes'])}, not {modality!r}")
    firsts = sorted(Path(folder).glob(f"*_0000{FILE_ENDING}"))
    if not firsts:
        raise FileNotFoundError(f"no <case>_0000{FILE_ENDING} images in {folder}")
    written = []
    for first in firsts:
        out = first.with_name(first.name.replace(f"_0000{FILE_ENDING}", f"_0003{FILE_ENDING}"))
        if out.exists():
            raise FileExistsError(f"{out} exists; not overwriting it")
        reference = sitk.ReadImage(str(first))
        channel = sitk.GetImageFromArray(np.full(sitk.GetArrayFromImage(reference).shape,
                                                 universal["modality_codes"][modality], dtype=np.float32))
        channel.CopyInformation(reference)
        sitk.WriteImage(channel, str(out), useCompression=True)
        written.append(out)
    return written
