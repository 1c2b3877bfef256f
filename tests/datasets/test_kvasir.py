"""Kvasir-SEG on real pairs of the shipped release (unchanged JPEGs in the official images/ + masks/ layout)."""
import json
import shutil

import numpy as np
import pytest
from nnunetv2.experiment_planning.verify_dataset_integrity import verify_dataset_integrity
from nnunetv2.imageio.natural_image_reader_writer import NaturalImage2DIO
from PIL import Image

from sam_nnunet.datasets.common import DatasetLayoutError
from sam_nnunet.datasets.kvasir import convert_kvasir


def test_converts_real_kvasir_pairs_into_an_nnunet_2d_dataset(kvasir, nnunet_env):
    source = kvasir(6)
    stems = sorted(p.stem for p in (source / "images").iterdir())
    out = convert_kvasir(source, verbose=False)
    assert out == nnunet_env["nnUNet_raw"] / "Dataset311_KvasirSEG"
    assert sorted(p.name for p in (out / "imagesTr").iterdir()) == [f"{s}_0000.png" for s in stems]
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == [f"{s}.png" for s in stems]
    assert list((out / "imagesTs").iterdir()) == []

    ds = json.loads((out / "dataset.json").read_text())
    assert ds["channel_names"] == {"0": "R", "1": "G", "2": "B"} and ds["labels"] == {"background": 0, "polyp": 1}
    assert ds["numTraining"] == 6 and ds["file_ending"] == ".png"
    assert ds["overwrite_image_reader_writer"] == "NaturalImage2DIO"
    assert not (nnunet_env["nnUNet_preprocessed"] / out.name).exists()  # no official split: nnU-Net's 5 folds

    for stem in stems:
        jpeg = np.asarray(Image.open(source / "images" / f"{stem}.jpg"))
        image = np.asarray(Image.open(out / "imagesTr" / f"{stem}_0000.png"))
        label = np.asarray(Image.open(out / "labelsTr" / f"{stem}.png"))
        np.testing.assert_array_equal(image, jpeg)  # decoded once, stored losslessly, RGB
        assert image.ndim == 3 and image.shape[2] == 3 and label.shape == image.shape[:2]
        assert set(np.unique(label)) == {0, 1}
        mask = np.asarray(Image.open(source / "masks" / f"{stem}.jpg"))[..., 0]
        np.testing.assert_array_equal(label, (mask > 127).astype(np.uint8))

    # nnU-Net reads it: its own integrity check passes and its reader sees 3 channels
    verify_dataset_integrity(str(out), num_processes=1)
    images, props = NaturalImage2DIO().read_images([str(out / "imagesTr" / f"{stems[0]}_0000.png")])
    assert images.shape[:2] == (3, 1) and props["spacing"] == (999, 1, 1)


def test_max_cases_takes_the_first_pairs_by_name(kvasir, nnunet_env):
    source = kvasir(4)
    out = convert_kvasir(source, 340, max_cases=2, verbose=False)
    assert out.name == "Dataset340_KvasirSEG"
    first_two = sorted(p.stem for p in (source / "images").iterdir())[:2]
    assert sorted(p.name for p in (out / "labelsTr").iterdir()) == [f"{s}.png" for s in first_two]


def test_image_without_mask_names_the_image(kvasir, nnunet_env):
    source = kvasir(3)
    lost = sorted((source / "masks").iterdir())[1]
    lost.unlink()
    with pytest.raises(DatasetLayoutError, match=f"images/{lost.stem}.jpg has no mask"):
        convert_kvasir(source, verbose=False)
    assert list(nnunet_env["nnUNet_raw"].iterdir()) == []


def test_mask_of_another_size_names_both_files_and_leaves_nothing(kvasir, nnunet_env):
    source = kvasir(6)
    masks = sorted((source / "masks").iterdir())
    sizes = [Image.open(m).size for m in masks]
    other = next(i for i, s in enumerate(sizes) if s != sizes[-1])
    shutil.copyfile(masks[other], masks[-1])  # the last case gets a real mask of another size
    with pytest.raises(DatasetLayoutError, match=f"{masks[-1].stem}.jpg is .* but its mask .*{masks[-1].name} is "):
        convert_kvasir(source, verbose=False)
    assert list(nnunet_env["nnUNet_raw"].iterdir()) == []  # earlier cases were written, then removed


def test_existing_dataset_or_id_is_not_overwritten(kvasir, nnunet_env):
    source = kvasir(2)
    out = convert_kvasir(source, verbose=False)
    before = (out / "dataset.json").read_bytes()
    with pytest.raises(FileExistsError, match="not overwriting"):
        convert_kvasir(source, verbose=False)
    (nnunet_env["nnUNet_raw"] / "Dataset312_Other").mkdir()
    with pytest.raises(FileExistsError, match="id 312 is already used by .*Dataset312_Other"):
        convert_kvasir(source, 312, verbose=False)
    assert (out / "dataset.json").read_bytes() == before


def test_missing_folder_is_a_clear_error(tmp_path, nnunet_env):
    with pytest.raises(DatasetLayoutError, match="images does not exist: expected the Kvasir-SEG layout"):
        convert_kvasir(tmp_path / "Kvasir-SEG", verbose=False)
