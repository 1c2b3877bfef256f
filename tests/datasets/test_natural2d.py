"""The 2D converters on damaged files (sam_nnunet/datasets/natural2d.py): real Kvasir-SEG JPEGs cut short,
and the CVC-ClinicDB (TIFF, PNG) and ISIC layouts. Every case checks the message and that nothing was written
or changed (the ``refused`` fixture)."""
import re

import pytest
from PIL import ImageFile

from sam_nnunet.datasets.cvc import convert_cvc
from sam_nnunet.datasets.isic import convert_isic
from sam_nnunet.datasets.kvasir import convert_kvasir

pytestmark = pytest.mark.faults


@pytest.mark.parametrize("folder, what", [("images", "image"), ("masks", "mask")])
@pytest.mark.bad_input("converters")
def test_truncated_kvasir_jpeg_is_named_and_nothing_is_written(kvasir, refused, make, folder, what):
    source = kvasir(4)
    bad = make.truncated(sorted((source / folder).iterdir())[-1])  # the last case: three are written before it
    refused(lambda: convert_kvasir(source, verbose=False), source,
            rf"{what} .*{folder}/{re.escape(bad.name)} is truncated or corrupt \(image file is truncated")


@pytest.mark.bad_input("converters")
def test_truncation_is_caught_even_when_another_library_allows_truncated_images(kvasir, refused, make, monkeypatch):
    """Some libraries set PIL's LOAD_TRUNCATED_IMAGES for the whole process (PIL then pads with grey)."""
    monkeypatch.setattr(ImageFile, "LOAD_TRUNCATED_IMAGES", True)
    source = kvasir(2)
    bad = make.truncated(sorted((source / "images").iterdir())[-1])
    refused(lambda: convert_kvasir(source, verbose=False), source,
            rf"image .*{re.escape(bad.name)} is truncated or corrupt")
    assert ImageFile.LOAD_TRUNCATED_IMAGES is True  # the process-wide setting is given back


@pytest.mark.parametrize("ext", [".tif", ".png"])
@pytest.mark.parametrize("folder, what", [("Original", "image"), ("Ground Truth", "mask")])
@pytest.mark.bad_input("converters")
def test_truncated_cvc_tiff_or_png_is_caught(cvc, refused, make, ext, folder, what):
    source = cvc(ext)
    make.truncated(source / folder / f"10{ext}")  # frame 10 is converted last
    refused(lambda: convert_cvc(source, verbose=False), source,
            rf"{what} .*{folder}/10{re.escape(ext)} is truncated or corrupt")


@pytest.mark.bad_input("converters")
def test_empty_file_says_it_is_not_an_image(cvc, refused):
    source = cvc(".png")
    (source / "Ground Truth" / "2.png").write_bytes(b"")
    refused(lambda: convert_cvc(source, verbose=False), source,
            r"cannot read mask .*Ground Truth/2.png: PIL does not recognise it as an image \(empty, cut off")


@pytest.mark.bad_input("converters")
def test_truncated_isic_test_image_leaves_neither_dataset_nor_splits(isic, refused, make):
    """ISIC writes the official split to $nnUNet_preprocessed: a late failure must not leave that file either."""
    source = isic(2018, {"train": [0, 1], "val": [10], "test": [20]}, test_masks=False)
    make.truncated(source / "ISIC2018_Task1-2_Test_Input" / "ISIC_0000020.jpg")  # the last file converted
    refused(lambda: convert_isic(source, verbose=False), source,
            r"image .*Test_Input/ISIC_0000020.jpg is truncated or corrupt")
