"""CVC-ClinicDB and ISIC 2017/2018 on tiny files written in their documented release layouts."""
import json

import numpy as np
import pytest
from PIL import Image

from sam_nnunet.datasets.common import DatasetLayoutError
from sam_nnunet.datasets.cvc import convert_cvc
from sam_nnunet.datasets.isic import convert_isic


@pytest.mark.parametrize("ext", [".tif", ".png"])
def test_cvc_tiff_and_png_releases(cvc, nnunet_env, ext):
    source = cvc(ext)
    out = convert_cvc(source, verbose=False)
    assert out.name == "Dataset312_CVCClinicDB"
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == ["cvc_0001.png", "cvc_0002.png", "cvc_0010.png"]
    image = np.asarray(Image.open(out / "imagesTr" / "cvc_0010_0000.png"))
    np.testing.assert_array_equal(image, np.asarray(Image.open(source / "Original" / f"10{ext}")))
    label = np.asarray(Image.open(out / "labelsTr" / "cvc_0010.png"))
    assert label.shape == (24, 32) and set(np.unique(label)) == {0, 1}
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["labels"] == {"background": 0, "polyp": 1} and ds["numTraining"] == 3


def test_cvc_bad_input_names_the_file_and_leaves_nothing(cvc, nnunet_env, make):
    source = cvc(".png")
    (source / "Ground Truth" / "2.png").unlink()
    with pytest.raises(DatasetLayoutError, match="2"):
        convert_cvc(source, verbose=False)
    make.image(source / "Ground Truth" / "2.png", make.disc(10, 10))  # wrong size
    with pytest.raises(DatasetLayoutError, match="must be the same size"):
        convert_cvc(source, verbose=False)
    make.image(source / "Ground Truth" / "2.png", (np.arange(24 * 32).reshape(24, 32) % 200).astype(np.uint8))
    with pytest.raises(DatasetLayoutError, match="not binary"):
        convert_cvc(source, verbose=False)
    assert list(nnunet_env["nnUNet_raw"].iterdir()) == []  # no partial dataset
    with pytest.raises(DatasetLayoutError, match="does not exist"):
        convert_cvc(source.parent / "missing", verbose=False)


@pytest.mark.parametrize("year", [2017, 2018])
def test_isic_keeps_the_official_split(isic, nnunet_env, year):
    source = isic(year, {"train": [1, 2, 3], "val": [4], "test": [5, 6]})
    out = convert_isic(source, verbose=False)
    assert out.name == f"Dataset{317 if year == 2017 else 318}_ISIC{year}"
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == [f"ISIC_000000{i}.png" for i in (1, 2, 3, 4)]
    assert sorted(p.name for p in (out / "imagesTs").iterdir()) == ["ISIC_0000005_0000.png", "ISIC_0000006_0000.png"]
    assert sorted(p.name for p in (out / "labelsTs").iterdir()) == ["ISIC_0000005.png", "ISIC_0000006.png"]
    splits = json.loads((nnunet_env["nnUNet_preprocessed"] / out.name / "splits_final.json").read_text())
    assert splits == [{"train": ["ISIC_0000001", "ISIC_0000002", "ISIC_0000003"], "val": ["ISIC_0000004"]}]
    image = np.asarray(Image.open(out / "imagesTr" / "ISIC_0000001_0000.png"))
    assert image.shape == (20, 28, 3)
    assert set(np.unique(np.asarray(Image.open(out / "labelsTr" / "ISIC_0000001.png")))) == {0, 1}
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["labels"] == {"background": 0, "lesion": 1} and ds["overwrite_image_reader_writer"] == "NaturalImage2DIO"


def test_isic_image_without_mask_is_an_error_naming_it(isic, nnunet_env):
    source = isic(2018, {"train": [1, 2]})
    (source / "ISIC2018_Task1_Training_GroundTruth" / "ISIC_0000002_segmentation.png").unlink()
    with pytest.raises(DatasetLayoutError, match="ISIC_0000002"):
        convert_isic(source, verbose=False)
    assert list(nnunet_env["nnUNet_raw"].iterdir()) == []
