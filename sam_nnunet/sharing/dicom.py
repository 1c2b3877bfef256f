"""DICOM in and out: a series folder read with SimpleITK's series reader, masks written as DICOM-SEG with highdicom.

Reading: :func:`find_series` lists the series in a folder (``ImageSeriesReader.GetGDCMSeriesIDs``), each with its
files in the order the series reader stacks them (by position along the slice normal); :func:`read_series` gives the
volume with its geometry (spacing, origin, direction from the slices' position and orientation). The volume is then
written as a temporary NIfTI and predicted like any other file, so a series and the NIfTI of the same volume take one
code path and give the same mask.

Writing (``--output-type dicom_seg``, extra ``[dicom]``): :func:`write_dicom_seg` writes one DICOM Segmentation
object per series (BINARY, one segment per class of the model, named after the dataset's labels), whose frames
reference the source images (``ReferencedSeriesSequence``, per-frame source image references), so a viewer overlays
it on the series it came from. Frame ``z`` of the mask is the slice of ``files[z]``.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np


def find_series(folder: Path) -> List[Tuple[str, List[Path]]]:
    """(SeriesInstanceUID, its files in stacking order) for every series in ``folder`` (not its subfolders)."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    return [(uid, [Path(f) for f in reader.GetGDCMSeriesFileNames(str(folder), uid)])
            for uid in reader.GetGDCMSeriesIDs(str(folder))]


def read_series(files: Sequence[Path]):
    """The series as one SimpleITK image (geometry from the slices)."""
    import SimpleITK as sitk

    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    return reader.Execute()


def _require_highdicom():
    try:
        import highdicom
    except ImportError as e:
        raise ImportError("--output-type dicom_seg writes DICOM-SEG with highdicom: pip install \"sam_nnunet[dicom]\" "
                          "(or pip install highdicom)") from e
    return highdicom


def write_dicom_seg(mask: np.ndarray, files: Sequence[Path], labels: Dict[int, str], path: Path,
                    algorithm: str, version: str) -> None:
    """Write ``mask`` (Z x Y x X label values, frame z on ``files[z]``) as DICOM-SEG at ``path``; ``labels``: label
    value -> class name for the foreground classes (segment numbers are the label values)."""
    hd = _require_highdicom()
    import pydicom
    from pydicom.sr.codedict import codes

    sources = [pydicom.dcmread(str(f)) for f in files]
    if mask.shape != (len(sources), int(sources[0].Rows), int(sources[0].Columns)):
        raise ValueError(f"mask of shape {mask.shape} does not fit the series ({len(sources)} slices of "
                         f"{sources[0].Rows} x {sources[0].Columns})")
    present = sorted(labels)
    if present != list(range(1, len(present) + 1)):
        raise ValueError(f"DICOM-SEG needs segment numbers 1..N; the model's labels are {present}")
    algorithm_id = hd.AlgorithmIdentificationSequence(name=algorithm, version=version,
                                                      family=codes.cid7162.ArtificialIntelligence)
    descriptions = [hd.seg.SegmentDescription(
        segment_number=value, segment_label=name,
        segmented_property_category=hd.sr.CodedConcept("91723000", "SCT", "Anatomical Structure"),
        segmented_property_type=hd.sr.CodedConcept("85756007", "SCT", "Tissue"),
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC, algorithm_identification=algorithm_id)
        for value, name in sorted(labels.items())]
    seg = hd.seg.Segmentation(
        source_images=sources, pixel_array=mask.astype(np.uint16),
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY, segment_descriptions=descriptions,
        series_instance_uid=hd.UID(), series_number=900, sop_instance_uid=hd.UID(), instance_number=1,
        manufacturer="sam_nnunet", manufacturer_model_name=algorithm, software_versions=version,
        device_serial_number="none", series_description=f"{algorithm} segmentation")
    seg.save_as(str(path))
