"""merge-universal (ESP-MedSAM's universal path): converted ACDC crop volumes and real Kvasir-SEG pairs -> one 2D
dataset with a modality channel per case, labels joined, folds that follow the source cases; and what it refuses.
The training and prediction through nnU-Net's commands: test_universal_end_to_end.py."""
import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
from PIL import Image

from sam_nnunet.datasets.common import DatasetLayoutError
from sam_nnunet.datasets.kvasir import convert_kvasir
from sam_nnunet.datasets.universal import UNIVERSAL_KEY, merge_universal, write_modality_channel


def universal_sources(acdc_preprocessed, nnunet_env, kvasir, n_kvasir=4):
    """The converted ACDC crop (with its patient-grouped splits) and ``n_kvasir`` converted Kvasir-SEG pairs in
    the (empty, exported) ``nnunet_env`` folders."""
    raw, pre = nnunet_env["nnUNet_raw"], nnunet_env["nnUNet_preprocessed"]
    shutil.copytree(acdc_preprocessed["nnUNet_raw"] / "Dataset027_ACDC", raw / "Dataset027_ACDC")
    (pre / "Dataset027_ACDC").mkdir()
    shutil.copyfile(acdc_preprocessed["nnUNet_preprocessed"] / "Dataset027_ACDC" / "splits_final.json",
                    pre / "Dataset027_ACDC" / "splits_final.json")
    convert_kvasir(kvasir(n_kvasir), 311, verbose=False)
    return raw, pre


def read(path):
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_merged_cases_channels_labels_and_folds(acdc_preprocessed, nnunet_env, kvasir):
    raw, pre = universal_sources(acdc_preprocessed, nnunet_env, kvasir)
    target = merge_universal(["27", "311"], 400, verbose=False)
    assert target == raw / "Dataset400_Universal"
    info = json.loads((target / "dataset.json").read_text())
    assert info["channel_names"] == {"0": "R", "1": "G", "2": "B", "3": "noNorm"}
    assert info["labels"] == {"background": 0, "RV": 1, "MLV": 2, "LVC": 3, "polyp": 4}
    universal = info[UNIVERSAL_KEY]
    assert universal["modality_codes"] == {"MRI": 10.0, "endoscopy": 40.0}
    assert universal["sources"] == {"Dataset027_ACDC": "MRI", "Dataset311_KvasirSEG": "endoscopy"}

    # an ACDC volume -> one case per slice: its intensities in R = G = B, its labels, the MRI code
    acdc = raw / "Dataset027_ACDC"
    volume = sorted((acdc / "imagesTr").glob("*_0000.nii.gz"))[0]
    case = volume.name[: -len("_0000.nii.gz")]
    image, label = read(volume), read(acdc / "labelsTr" / f"{case}.nii.gz")
    assert image.shape[0] == 3  # the crop's three slices
    for z in range(3):
        new = f"ACDC_{case}_z{z:02d}"
        for c in range(3):
            np.testing.assert_array_equal(read(target / "imagesTr" / f"{new}_{c:04d}.nii.gz"), image[z])
        np.testing.assert_array_equal(read(target / "labelsTr" / f"{new}.nii.gz"), label[z])
        assert np.all(read(target / "imagesTr" / f"{new}_0003.nii.gz") == 10.0)
        assert universal["case_modalities"][new] == "MRI"
    # a Kvasir-SEG image: its colours, the polyp as label 4, the endoscopy code
    png = sorted((raw / "Dataset311_KvasirSEG" / "imagesTr").glob("*_0000.png"))[0]
    kcase = png.name[: -len("_0000.png")]
    rgb = np.asarray(Image.open(png))
    for c in range(3):
        np.testing.assert_array_equal(read(target / "imagesTr" / f"KvasirSEG_{kcase}_{c:04d}.nii.gz"), rgb[..., c])
    mask = np.asarray(Image.open(raw / "Dataset311_KvasirSEG" / "labelsTr" / f"{kcase}.png"))
    np.testing.assert_array_equal(read(target / "labelsTr" / f"KvasirSEG_{kcase}.nii.gz"), mask * 4)
    assert np.all(read(target / "imagesTr" / f"KvasirSEG_{kcase}_0003.nii.gz") == 40.0)

    # five folds; each merged case validated once, in the fold where its source case (ACDC: patient) is
    splits = json.loads((pre / "Dataset400_Universal" / "splits_final.json").read_text())
    source = json.loads((pre / "Dataset027_ACDC" / "splits_final.json").read_text())
    cases = set(universal["case_modalities"])
    assert len(splits) == 5 and sorted(c for f in splits for c in f["val"]) == sorted(cases)
    for fold, acdc_fold in zip(splits, source):
        assert not set(fold["train"]) & set(fold["val"])
        acdc_val = {c for c in fold["val"] if c.startswith("ACDC_")}
        assert acdc_val == {f"ACDC_{c}_z{z:02d}" for c in acdc_fold["val"] for z in range(3)}
    assert len(cases) == 3 * len(list((acdc / "labelsTr").glob("*.nii.gz"))) + 4


@pytest.mark.bad_input("converters", cases=3)
def test_what_merge_universal_refuses(acdc_preprocessed, nnunet_env, kvasir, tmp_path):
    raw, pre = universal_sources(acdc_preprocessed, nnunet_env, kvasir, n_kvasir=2)
    with pytest.raises(DatasetLayoutError, match="are all MRI"):
        merge_universal(["27", "Dataset027_ACDC"], 400, verbose=False)
    with pytest.raises(DatasetLayoutError, match="no converted dataset '99'"):
        merge_universal(["27", "99"], 400, verbose=False)
    (pre / "Dataset400_Universal").mkdir()
    (pre / "Dataset400_Universal" / "splits_final.json").write_text("[]\n")
    with pytest.raises(FileExistsError, match="other splits"):
        merge_universal(["27", "311"], 400, verbose=False)
    assert not list(raw.glob("Dataset400_*")) and not list(raw.glob(".Dataset400_*"))  # nothing left behind
    assert (pre / "Dataset400_Universal" / "splits_final.json").read_text() == "[]\n"


def test_the_modality_channel_for_images_to_predict(acdc_preprocessed, nnunet_env, kvasir, tmp_path):
    raw, _ = universal_sources(acdc_preprocessed, nnunet_env, kvasir, n_kvasir=2)
    target = merge_universal(["27", "311"], 400, verbose=False)
    images = tmp_path / "in"
    images.mkdir()
    first = sorted((target / "imagesTr").glob("KvasirSEG_*_0000.nii.gz"))[0]
    for c in range(3):
        shutil.copyfile(str(first).replace("_0000.", f"_{c:04d}."), images / f"polyp_{c:04d}.nii.gz")
    written = write_modality_channel(images, "400", "Endoscopy")
    assert written == [images / "polyp_0003.nii.gz"]
    channel, reference = sitk.ReadImage(str(written[0])), sitk.ReadImage(str(images / "polyp_0000.nii.gz"))
    assert channel.GetSize() == reference.GetSize() and channel.GetSpacing() == reference.GetSpacing()
    assert np.all(sitk.GetArrayFromImage(channel) == 40.0)
    with pytest.raises(FileExistsError):
        write_modality_channel(images, "400", "endoscopy")
    with pytest.raises(ValueError, match="not 'CT'"):
        write_modality_channel(images, "400", "CT")
    with pytest.raises(ValueError, match="not a universal dataset"):
        write_modality_channel(images, "27", "MRI")
