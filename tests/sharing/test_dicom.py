"""DICOM in and out: a series written from a shipped ACDC volume (its pixels and geometry) predicts the mask of the
volume's NIfTI, and the DICOM-SEG read back matches that mask voxel for voxel and references the series."""
import json
import locale

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk

from sam_nnunet.cli import main as cli
from tests.sharing.conftest import heart_crop

STUDY_UID, SERIES_UID, FRAME_UID = "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.2", \
    "1.2.826.0.1.3680043.8.498.3"


def write_series(image: sitk.Image, folder):
    """``image`` as an MR DICOM series, one file per slice, as a scanner export lays it out (SimpleITK/GDCM)."""
    folder.mkdir(parents=True)
    direction = image.GetDirection()
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    # GDCM's DICOM writer sets the process's locale to "C" (ASCII): subprocesses started later with text=True would
    # then fail to decode UTF-8 output. Put it back.
    saved = locale.setlocale(locale.LC_ALL)
    try:
        write_slices(image, folder, direction, writer)
    finally:
        locale.setlocale(locale.LC_ALL, saved)
    return folder


def write_slices(image: sitk.Image, folder, direction, writer) -> None:
    for z in range(image.GetDepth()):
        slice_ = image[:, :, z]
        tags = {"0008|0016": "1.2.840.10008.5.1.4.1.1.4", "0008|0060": "MR", "0010|0010": "ACDC^patient023",
                "0010|0020": "patient023", "0020|000d": STUDY_UID, "0020|000e": SERIES_UID, "0020|0052": FRAME_UID,
                "0020|0011": "1", "0020|0013": str(z + 1), "0018|0050": str(image.GetSpacing()[2]),
                "0008|0020": "20261205", "0008|0030": "120000", "0008|0018": f"1.2.826.0.1.3680043.8.498.4.{z + 1}",
                "0020|0037": "\\".join(str(v) for v in (direction[0], direction[3], direction[6],
                                                        direction[1], direction[4], direction[7])),
                "0020|0032": "\\".join(str(v) for v in image.TransformIndexToPhysicalPoint((0, 0, z)))}
        for tag, value in tags.items():
            slice_.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"IM{z:04d}.dcm"))
        writer.Execute(slice_)


@pytest.fixture
def series_and_nifti(held_out_volume, tmp_path):
    """The held-out heart crop as a DICOM series folder and as NIfTI (the same int16 pixels)."""
    image = heart_crop(held_out_volume)
    assert image.GetPixelID() == sitk.sitkInt16  # ACDC stores int16: DICOM holds the pixels exactly
    nifti = tmp_path / "nifti" / "patient023.nii.gz"
    nifti.parent.mkdir()
    sitk.WriteImage(image, str(nifti))
    return write_series(image, tmp_path / "dicom" / "patient023"), nifti


def test_a_dicom_series_predicts_the_mask_of_its_nifti(model_copy, series_and_nifti, tmp_path):
    series, nifti = series_and_nifti
    read_back = sitk.ReadImage([str(p) for p in sorted(series.iterdir())])
    np.testing.assert_array_equal(sitk.GetArrayFromImage(read_back), sitk.GetArrayFromImage(sitk.ReadImage(str(nifti))))
    assert cli(["predict", "-i", str(series), "-o", str(tmp_path / "from_dicom"), "-m", str(model_copy), "--fast",
                "--disable-progress-bar"]) == 0
    assert cli(["predict", "-i", str(nifti), "-o", str(tmp_path / "from_nifti"), "-m", str(model_copy), "--fast",
                "--disable-progress-bar"]) == 0
    from_dicom = sitk.ReadImage(str(tmp_path / "from_dicom" / "patient023.nii.gz"))
    from_nifti = sitk.ReadImage(str(tmp_path / "from_nifti" / "patient023.nii.gz"))
    np.testing.assert_allclose(from_dicom.GetOrigin(), from_nifti.GetOrigin(), atol=1e-3)
    np.testing.assert_allclose(from_dicom.GetSpacing(), from_nifti.GetSpacing(), atol=1e-4)
    np.testing.assert_allclose(from_dicom.GetDirection(), from_nifti.GetDirection(), atol=1e-5)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(from_dicom), sitk.GetArrayFromImage(from_nifti))
    record = json.loads((tmp_path / "from_dicom" / "predictions.json").read_text())
    assert len(record["cases"][0]["input"]) == 9  # the slices


def test_dicom_seg_matches_the_mask_and_references_the_series(model_copy, series_and_nifti, tmp_path):
    import highdicom  # the [dicom] extra, part of [test]

    series, nifti = series_and_nifti
    assert cli(["predict", "-i", str(series.parent), "-o", str(tmp_path / "seg"), "-m", str(model_copy), "--fast",
                "--output-type", "dicom_seg", "--disable-progress-bar"]) == 0
    assert cli(["predict", "-i", str(nifti), "-o", str(tmp_path / "nii"), "-m", str(model_copy), "--fast",
                "--disable-progress-bar"]) == 0
    mask = sitk.ReadImage(str(tmp_path / "nii" / "patient023.nii.gz"))
    expected = sitk.GetArrayFromImage(mask)
    seg = highdicom.seg.segread(str(tmp_path / "seg" / "patient023.dcm"))
    assert seg.Modality == "SEG" and seg.ReferencedSeriesSequence[0].SeriesInstanceUID == SERIES_UID
    assert seg.StudyInstanceUID == STUDY_UID and seg.FrameOfReferenceUID == FRAME_UID
    assert [s.SegmentLabel for s in seg.SegmentSequence] == ["RV", "MLV", "LVC"]
    # the source slice of each mask slice z, found by position in space (not by file order)
    by_position = {tuple(np.round(np.asarray(d.ImagePositionPatient, float), 2)): d
                   for d in (pydicom.dcmread(str(p)) for p in series.iterdir())}
    sources = [by_position[tuple(np.round(mask.TransformIndexToPhysicalPoint((0, 0, z)), 2))]
               for z in range(mask.GetDepth())]
    labels = seg.get_pixels_by_source_instance(source_sop_instance_uids=[d.SOPInstanceUID for d in sources],
                                               combine_segments=True, relabel=False,
                                               assert_missing_frames_are_empty=True)
    assert labels.shape == expected.shape
    np.testing.assert_array_equal(labels, expected)
    assert set(np.unique(labels)) == {0, 1, 2, 3}


@pytest.mark.bad_input("predict")
def test_dicom_seg_needs_dicom_input(model_copy, series_and_nifti, tmp_path, capsys):
    _, nifti = series_and_nifti
    assert cli(["predict", "-i", str(nifti), "-o", str(tmp_path / "out"), "-m", str(model_copy),
                "--output-type", "dicom_seg"]) == 2
    assert "give DICOM series" in capsys.readouterr().err and not (tmp_path / "out").exists()


def test_writing_a_series_leaves_the_locale_as_it_was(held_out_volume, tmp_path):
    before = locale.setlocale(locale.LC_ALL)
    write_series(heart_crop(held_out_volume)[:, :, :2], tmp_path / "series")
    assert locale.setlocale(locale.LC_ALL) == before
