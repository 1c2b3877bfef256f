"""The 3D converters on damaged input (sam_nnunet/datasets/volumes.py): real ACDC crops made bad the way
downloads and label tools make them, and the AMOS/Synapse layouts for what ACDC lacks. Every case checks the
message and that nothing was written or changed (the ``refused`` fixture)."""
import re
import shutil

import nibabel as nib
import numpy as np
import pytest

from sam_nnunet.datasets.acdc import convert_acdc
from sam_nnunet.datasets.amos import convert_amos
from sam_nnunet.datasets.synapse import convert_synapse
from sam_nnunet.datasets.volumes import DIRECTION_TOLERANCE, ORIGIN_TOLERANCE, SPACING_TOLERANCE

pytestmark = pytest.mark.faults


@pytest.fixture
def acdc(acdc_crop, tmp_path):
    """A private copy of the six-patient real ACDC crop (official layout), free to damage."""
    return shutil.copytree(acdc_crop, tmp_path / "ACDC")


def last_frame(source, suffix=""):
    """The last patient's last frame (``suffix="_gt"``: its label); earlier cases are written before it is read."""
    return sorted(source.glob(f"training/*/*_frame??{suffix}.nii.gz"))[-1]


@pytest.mark.parametrize("suffix, what", [("", "image"), ("_gt", "label")])
@pytest.mark.bad_input("converters")
def test_truncated_acdc_file_is_named_and_nothing_is_written(acdc, refused, make, suffix, what):
    bad = make.truncated(last_frame(acdc, suffix))
    refused(lambda: convert_acdc(acdc, 27, verbose=False), acdc,
            rf"{what} .*{re.escape(bad.name)} is truncated or corrupt \(Compressed file ended before the "
            rf"end-of-stream marker.*download or extract it again")


@pytest.mark.bad_input("converters")
def test_corrupt_byte_inside_the_data_is_caught(acdc, refused):
    """A flipped byte leaves a file nibabel (and SimpleITK) read without complaint; the gzip CRC catches it."""
    bad = last_frame(acdc)
    content = bytearray(bad.read_bytes())
    content[len(content) // 2] ^= 0x55
    bad.write_bytes(bytes(content))
    np.asanyarray(nib.load(str(bad)).dataobj)  # the premise: nibabel alone reads it
    refused(lambda: convert_acdc(acdc, 27, verbose=False), acdc,
            rf"image .*{re.escape(bad.name)} is truncated or corrupt \(")


@pytest.mark.bad_input("converters")
def test_truncated_test_image_without_label_is_caught(acdc, refused, make):
    """Unlabelled test images (ACDC testing/) are copied too, so they are read in full as well."""
    patient = acdc / "testing" / "patient101"
    patient.mkdir()
    bad = make.truncated(shutil.copyfile(last_frame(acdc), patient / "patient101_frame01.nii.gz"))
    refused(lambda: convert_acdc(acdc, 27, verbose=False), acdc,
            rf"image .*testing/patient101/{re.escape(bad.name)} is truncated or corrupt")


@pytest.mark.bad_input("converters")
def test_truncated_amos_test_image_is_caught(amos, refused, make):
    make.truncated(amos / "imagesTs" / "amos_0002.nii.gz")
    refused(lambda: convert_amos(amos, verbose=False), amos, r"image .*imagesTs/amos_0002.nii.gz is truncated")


@pytest.mark.bad_input("converters", cases=2)
def test_nan_and_inf_voxels_are_counted_and_located(acdc, refused):
    frame = last_frame(acdc)
    img = nib.load(str(frame))
    data = np.asanyarray(img.dataobj).astype(np.float32)
    data[1, 2, 0], data[5, 5, 2] = np.nan, np.inf
    float_image = nib.Nifti1Image(data, img.affine, img.header)
    float_image.set_data_dtype(np.float32)
    nib.save(float_image, str(frame))
    refused(lambda: convert_acdc(acdc, 27, verbose=False), acdc,
            rf"image .*{re.escape(frame.name)} holds 2 NaN or infinite voxel values \(the first at voxel \(1, 2, 0\)\)")


def lps(values):
    """nibabel's RAS numbers as SimpleITK/nnU-Net show them (LPS: x and y negated), formatted like the messages."""
    values = np.asarray(values, dtype=float)
    values = values * (np.array([-1, -1, 1])[:, None] if values.ndim == 2 else np.array([-1, -1, 1]))
    return "(" + ", ".join(str(round(float(v), 6) + 0.0) for v in values.ravel()) + ")"


def direction(affine):
    """The direction matrix SimpleITK reads from ``affine`` (unit columns, rows in LPS), flattened row by row."""
    return lps((affine[:3, :3] / np.linalg.norm(affine[:3, :3], axis=0)))


def rewrite_label(gt, affine):
    """``gt`` saved again by nibabel with the same voxels and header but another affine (as a label tool might)."""
    seg = nib.load(str(gt))
    nib.save(nib.Nifti1Image(np.asanyarray(seg.dataobj), affine, seg.header), str(gt))


@pytest.mark.parametrize("fault", ["origin", "spacing", "direction"])
@pytest.mark.bad_input("converters")
def test_label_off_the_image_grid_gives_both_numbers(acdc, refused, fault):
    gt = last_frame(acdc, "_gt")
    image = gt.with_name(gt.name.replace("_gt", ""))
    image_affine = nib.load(str(image)).affine
    affine = image_affine.copy()
    if fault == "origin":
        affine[2, 3] += 0.5  # half a millimetre along the slices
        shown = lps(affine[:3, 3]), lps(image_affine[:3, 3]), ORIGIN_TOLERANCE
    elif fault == "spacing":
        affine[:3, 2] *= 0.5  # 10 mm slices declared as 5 mm
        shown = "(1.5, 1.5, 5.0)", "(1.5, 1.5, 10.0)", SPACING_TOLERANCE
    else:
        affine[:3, 0] *= -1  # left-right mirrored
        shown = direction(affine), direction(image_affine), DIRECTION_TOLERANCE
    rewrite_label(gt, affine)
    label_numbers, image_numbers, tolerance = (re.escape(str(s)) for s in shown)
    refused(lambda: convert_acdc(acdc, 27, verbose=False), acdc,
            rf"label .*{re.escape(gt.name)} does not lie on the voxel grid of image .*{re.escape(image.name)}: "
            rf"label {fault} {label_numbers} vs image {fault} {image_numbers} \(tolerance {tolerance}\)\. If the "
            rf"voxels do correspond, give the label the image's header geometry")


def test_label_within_tolerance_is_accepted(acdc, nnunet_env):
    """A sub-micrometre origin difference (float rounding by another tool) is not a misalignment, even where
    np.allclose with nnU-Net's defaults (absolute 1e-8 + 1e-5 x |origin|) would call it one."""
    gt = last_frame(acdc, "_gt")
    affine = nib.load(str(gt)).affine.copy()
    affine[2, 3] += 1e-5 * abs(affine[2, 3]) + 5e-4
    rewrite_label(gt, affine)
    out = convert_acdc(acdc, 27, verbose=False)
    assert (out / "labelsTr" / gt.name.replace("_gt", "")).read_bytes() == gt.read_bytes()


@pytest.mark.bad_input("converters")
def test_synapse_remapped_label_is_checked_before_it_is_written(synapse, refused, make):
    """Synapse rewrites its labels (13 -> 8 organs); the grid check still runs on the source pair."""
    shifted = nib.load(str(synapse / "RawData/Training/img/img0001.nii.gz")).affine
    shifted[0, 3] += 3.0  # 3 mm along x (RAS), i.e. -3 mm in SimpleITK's LPS
    make.nifti(synapse / "RawData/Training/label/label0001.nii.gz", make.labels(13, 1), shifted)
    refused(lambda: convert_synapse(synapse, verbose=False), synapse,
            r"label .*label0001.nii.gz does not lie on the voxel grid of image .*img0001.nii.gz: label origin "
            r"\(-173.0, -190.0, -300.0\) vs image origin \(-170.0, -190.0, -300.0\)")
