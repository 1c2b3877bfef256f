"""Completeness checks of single files, for the cases the entrypoint's bad-input matrix (test_submission.py) does
not reach: valid files that a naive check would refuse, corruption other than a cut, and header comparisons."""
import gzip
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import tifffile

from sam_nnunet.submission.image_checks import ImageCheckError, check_complete, grid_difference, read_header

pytestmark = pytest.mark.faults

ACDC = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "ACDC"


@pytest.fixture
def acdc_volume():
    """One real ACDC cine-MRI volume of the shipped data (int16, 10 slices)."""
    files = sorted((ACDC / "training").glob("patient*/patient*_frame01.nii.gz"))
    if not files:
        pytest.fail(f"the shipped ACDC data is missing at {ACDC}")
    return files[0]


def test_several_gzip_members_are_one_complete_stream(acdc_volume, tmp_path):
    """bgzip and concatenated gzip files hold several members; the check must read past the first."""
    raw = gzip.decompress(acdc_volume.read_bytes())
    members = tmp_path / "members.nii.gz"
    members.write_bytes(b"".join(gzip.compress(raw[i:i + 100_000]) for i in range(0, len(raw), 100_000)))
    check_complete(members)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(members))),
                                  sitk.GetArrayFromImage(sitk.ReadImage(str(acdc_volume))))
    cut = tmp_path / "cut_members.nii.gz"
    cut.write_bytes(b"".join(gzip.compress(raw[i:i + 100_000]) for i in range(0, len(raw) // 2, 100_000)))
    with pytest.raises(ImageCheckError, match="cut_members.nii.gz is truncated: its header promises"):
        check_complete(cut)


def test_a_gzip_checksum_mismatch_is_corruption(acdc_volume, tmp_path):
    data = bytearray(acdc_volume.read_bytes())
    data[-6] ^= 0xFF  # inside the CRC-32 of the gzip trailer: every byte still inflates
    corrupt = tmp_path / "crc.nii.gz"
    corrupt.write_bytes(bytes(data))
    with pytest.raises(ImageCheckError, match=r"crc.nii.gz is corrupt: its compressed data do not inflate"):
        check_complete(corrupt)


def test_mha_with_pixels_in_another_file_is_refused(acdc_volume, tmp_path):
    sitk.WriteImage(sitk.ReadImage(str(acdc_volume)), str(tmp_path / "split.mhd"))
    header = tmp_path / "split.mha"
    header.write_bytes((tmp_path / "split.mhd").read_bytes())  # ElementDataFile = split.raw
    with pytest.raises(ImageCheckError, match=r"keeps its pixels in another file \(split.raw\); expected one "
                                              r"self-contained .mha"):
        check_complete(header)


def test_tiff_strip_past_the_end_of_the_file(tmp_path):
    """A one-page TIFF written IFD first: a cut leaves the page intact but its strip short."""
    whole = tmp_path / "rgb.tif"
    tifffile.imwrite(whole, np.arange(64 * 80 * 3, dtype=np.uint8).reshape(64, 80, 3), photometric="rgb")
    check_complete(whole)
    cut = tmp_path / "cut.tif"
    cut.write_bytes(whole.read_bytes()[:-10])
    with pytest.raises(ImageCheckError, match=r"cut.tif is truncated or corrupt \(pixel data up to byte \d+, file "
                                              r"size \d+\)"):
        check_complete(cut)


def test_grid_difference_names_what_differs(acdc_volume, tmp_path):
    image = sitk.ReadImage(str(acdc_volume))
    sitk.WriteImage(image, str(tmp_path / "a.mha"))
    image.SetOrigin([o + 1e-6 for o in image.GetOrigin()])  # rounding noise of an export: the same grid
    sitk.WriteImage(image, str(tmp_path / "b.mha"))
    image.SetOrigin([o + 0.5 for o in image.GetOrigin()])
    sitk.WriteImage(image, str(tmp_path / "c.mha"))
    a, b, c = (read_header(tmp_path / f"{n}.mha") for n in "abc")
    assert grid_difference(a, b) is None
    assert grid_difference(a, c).startswith("origin ")


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("suffix", [".nii.gz", ".nii"])
def test_non_finite_nifti_voxels_are_found_although_simpleitk_reads_them_as_zero(acdc_volume, tmp_path, value, suffix):
    import nibabel as nib

    source = nib.load(str(acdc_volume))
    header = source.header.copy()
    header.set_data_dtype(np.float32)  # float voxels, as an exported or resampled image has
    voxels = np.asarray(source.dataobj, dtype=np.float32)
    voxels[5, 6, 1] = value
    path = tmp_path / f"bad{suffix}"
    nib.save(nib.Nifti1Image(voxels, source.affine, header), str(path))
    assert np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))).all()  # why the read array cannot be checked
    with pytest.raises(ImageCheckError, match=rf"bad{suffix} holds NaN or infinite values \(1 voxels\)"):
        check_complete(path)
    voxels[5, 6, 1] = 0
    nib.save(nib.Nifti1Image(voxels, source.affine, header), str(path))
    check_complete(path)  # the same file, finite: complete
    check_complete(acdc_volume)  # integer voxels cannot be NaN


def test_entries_that_are_not_readable_files_say_what_they_are(tmp_path):
    from sam_nnunet.submission.layouts import not_a_readable_file

    (tmp_path / "file.nii.gz").write_bytes(b"x")
    (tmp_path / "dangling.nii.gz").symlink_to(tmp_path / "gone.nii.gz")
    (tmp_path / "loop.nii.gz").symlink_to(tmp_path / "loop.nii.gz")
    (tmp_path / "folder.nii.gz").mkdir()
    (tmp_path / "link.nii.gz").symlink_to(tmp_path / "file.nii.gz")
    assert {p.name: not_a_readable_file(p) for p in sorted(tmp_path.iterdir())} == {
        "dangling.nii.gz": f"a symbolic link to a missing file ({tmp_path / 'gone.nii.gz'})",
        "file.nii.gz": "", "folder.nii.gz": "a folder", "link.nii.gz": "", "loop.nii.gz": "a symbolic link loop"}
