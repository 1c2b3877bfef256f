import json

import numpy as np
import pytest
from PIL import Image

from sam_nnunet.datasets.common import DatasetLayoutError
from sam_nnunet.datasets.cvc import convert_cvc


@pytest.mark.parametrize("ext", [".tif", ".png"])
def test_both_releases_convert_to_numbered_cases(cvc, nnunet_env, ext):
    source = cvc(ext)
    out = convert_cvc(source, verbose=False)
    assert out == nnunet_env["nnUNet_raw"] / "Dataset312_CVCClinicDB"
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == ["cvc_0001_0000.png", "cvc_0002_0000.png",
                                                                     "cvc_0010_0000.png"]
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["labels"] == {"background": 0, "polyp": 1} and ds["numTraining"] == 3 and ds["file_ending"] == ".png"
    image = np.asarray(Image.open(out / "imagesTr" / "cvc_0010_0000.png"))
    np.testing.assert_array_equal(image, np.asarray(Image.open(source / "Original" / f"10{ext}")))
    label = np.asarray(Image.open(out / "labelsTr" / "cvc_0010.png"))
    mask = np.asarray(Image.open(source / "Ground Truth" / f"10{ext}"))
    assert label.shape == (24, 32) and set(np.unique(label)) == {0, 1}
    np.testing.assert_array_equal(label, (mask == 255).astype(np.uint8))
    assert not (nnunet_env["nnUNet_preprocessed"] / out.name).exists()  # no official split


def test_max_cases_follows_frame_numbers(cvc, nnunet_env):
    out = convert_cvc(cvc(".png"), max_cases=2, verbose=False)
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == ["cvc_0001.png", "cvc_0002.png"]


def test_mask_rules(cvc, nnunet_env, make):
    """0/1 masks are kept, anti-aliased 0/255 edges are thresholded at 127, RGB grey masks are accepted."""
    source = cvc(".png")
    disc = make.disc(24, 32)
    make.image(source / "Ground Truth" / "1.png", disc // 255)  # 0/1 encoding
    soft = disc.copy()
    soft[0, :8] = [100, 140, 127, 128, 60, 200, 30, 225]  # a few anti-aliased edge pixels (< 5%)
    make.image(source / "Ground Truth" / "2.png", soft)
    make.image(source / "Ground Truth" / "10.png", np.repeat(disc[..., None], 3, axis=2))  # grey stored as RGB
    out = convert_cvc(source, verbose=False)
    labels = {n: np.asarray(Image.open(out / "labelsTr" / f"cvc_{n:04d}.png")) for n in (1, 2, 10)}
    np.testing.assert_array_equal(labels[1], disc // 255)
    np.testing.assert_array_equal(labels[2][0, :8], [0, 1, 0, 1, 0, 1, 0, 1])
    np.testing.assert_array_equal(labels[10], disc // 255)


@pytest.mark.parametrize("bad_mask, message", [
    (lambda make: (np.arange(24 * 32).reshape(24, 32) % 256).astype(np.uint8), r"is not binary: \d+% of its pixels"),
    (lambda make: (make.disc(24, 32) // 255 * 2).astype(np.uint8), "holds values up to 2"),
    (lambda make: make.rgb(24, 32, 0), "is a colour image"),
])
def test_non_binary_mask_names_the_file_and_leaves_nothing(cvc, nnunet_env, make, bad_mask, message):
    source = cvc(".tif")
    make.image(source / "Ground Truth" / "10.tif", bad_mask(make))
    with pytest.raises(DatasetLayoutError, match=rf"Ground Truth/10.tif {message}"):
        convert_cvc(source, verbose=False)
    assert list(nnunet_env["nnUNet_raw"].iterdir()) == []


def test_pairing_errors_name_the_file(cvc, nnunet_env, make):
    source = cvc(".png")
    (source / "Ground Truth" / "2.png").unlink()
    with pytest.raises(DatasetLayoutError, match=r"Original/2.png has no mask: expected .*Ground Truth/2.tif or .png"):
        convert_cvc(source, verbose=False)
    make.image(source / "Ground Truth" / "2.png", make.disc(24, 32))
    make.image(source / "Ground Truth" / "7.png", make.disc(24, 32))
    with pytest.raises(DatasetLayoutError, match="mask .*Ground Truth/7.png has no image"):
        convert_cvc(source, verbose=False)
    (source / "Ground Truth" / "7.png").unlink()
    make.image(source / "Ground Truth" / "2.png", make.disc(20, 32))
    with pytest.raises(DatasetLayoutError, match=r"Original/2.png is 32x24 but its mask .*2.png is 32x20"):
        convert_cvc(source, verbose=False)
    make.image(source / "Original" / "1.tif", make.rgb(24, 32, 1))
    with pytest.raises(DatasetLayoutError, match="Original/1.png and .*Original/1.tif are both case 1"):
        convert_cvc(source, verbose=False)
    assert list(nnunet_env["nnUNet_raw"].iterdir()) == []


def test_missing_folder_explains_the_layout(tmp_path, nnunet_env):
    with pytest.raises(DatasetLayoutError, match="Original does not exist: expected the CVC-ClinicDB layout .*PNG/"):
        convert_cvc(tmp_path, verbose=False)
