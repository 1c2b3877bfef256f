import json

import numpy as np
import pytest
from PIL import Image

from sam_nnunet.datasets.common import DatasetLayoutError
from sam_nnunet.datasets.isic import convert_isic


def names(folder):
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("year, dataset", [(2018, "Dataset318_ISIC2018"), (2017, "Dataset317_ISIC2017")])
def test_keeps_the_official_split(isic, nnunet_env, year, dataset):
    source = isic(year, {"train": [0, 1, 2], "val": [10, 11], "test": [20, 21]})
    out = convert_isic(source, verbose=False)
    assert out == nnunet_env["nnUNet_raw"] / dataset
    assert names(out / "imagesTr") == [f"ISIC_{i:07d}_0000.png" for i in (0, 1, 2, 10, 11)]
    assert names(out / "labelsTr") == [f"ISIC_{i:07d}.png" for i in (0, 1, 2, 10, 11)]
    assert names(out / "imagesTs") == ["ISIC_0000020_0000.png", "ISIC_0000021_0000.png"]
    assert names(out / "labelsTs") == ["ISIC_0000020.png", "ISIC_0000021.png"]
    splits = json.loads((nnunet_env["nnUNet_preprocessed"] / out.name / "splits_final.json").read_text())
    assert splits == [{"train": ["ISIC_0000000", "ISIC_0000001", "ISIC_0000002"],
                       "val": ["ISIC_0000010", "ISIC_0000011"]}]
    ds = json.loads((out / "dataset.json").read_text())
    assert ds["labels"] == {"background": 0, "lesion": 1} and ds["numTraining"] == 5
    assert ds["channel_names"] == {"0": "R", "1": "G", "2": "B"} and ds["file_ending"] == ".png"
    assert ds["overwrite_image_reader_writer"] == "NaturalImage2DIO"
    image = np.asarray(Image.open(out / "imagesTr" / "ISIC_0000010_0000.png"))
    label = np.asarray(Image.open(out / "labelsTs" / "ISIC_0000021.png"))
    assert image.shape == (20, 28, 3) and label.shape == (20, 28) and set(np.unique(label)) == {0, 1}


def test_isic2017_ignores_superpixels_and_licences(isic, nnunet_env):
    source = isic(2017, {"train": [3, 4], "test": [30]}, test_masks=False)
    assert (source / "ISIC-2017_Training_Data" / "ISIC_0000003_superpixels.png").is_file()
    out = convert_isic(source, max_cases=1, verbose=False)
    assert out.name == "Dataset317_ISIC2017"
    assert names(out / "imagesTr") == ["ISIC_0000003_0000.png"]
    assert names(out / "imagesTs") == ["ISIC_0000030_0000.png"] and not (out / "labelsTs").exists()
    # no validation folder: no official split to keep, nnU-Net makes its 5 folds
    assert not (nnunet_env["nnUNet_preprocessed"] / out.name).exists()


def test_year_must_be_chosen_when_both_are_present(isic, nnunet_env):
    source = isic(2018, {"train": [0]})
    isic(2017, {"train": [5]})  # written to its own root; move its folders next to the 2018 ones
    (source.parent / "ISIC2017" / "ISIC-2017_Training_Data").rename(source / "ISIC-2017_Training_Data")
    (source.parent / "ISIC2017" / "ISIC-2017_Training_Part1_GroundTruth").rename(
        source / "ISIC-2017_Training_Part1_GroundTruth")
    with pytest.raises(DatasetLayoutError, match="both ISIC 2017 and ISIC 2018"):
        convert_isic(source, verbose=False)
    out = convert_isic(source, year=2017, verbose=False)
    assert names(out / "labelsTr") == ["ISIC_0000005.png"]


def test_errors_name_the_file_and_leave_nothing(isic, nnunet_env, make, tmp_path):
    with pytest.raises(DatasetLayoutError, match="holds neither ISIC2018_Task1-2_Training_Input/"):
        convert_isic(tmp_path / "empty", verbose=False)
    source = isic(2018, {"train": [0, 1], "val": [10], "test": [20]})
    gt = source / "ISIC2018_Task1_Validation_GroundTruth" / "ISIC_0000010_segmentation.png"
    gt.unlink()
    with pytest.raises(DatasetLayoutError, match=r"Validation_Input/ISIC_0000010.jpg has no mask: expected "
                                                 r".*ISIC_0000010_segmentation.png"):
        convert_isic(source, verbose=False)
    make.image(gt, make.disc(20, 28))
    bad = source / "ISIC2018_Task1_Test_GroundTruth" / "ISIC_0000020_segmentation.png"
    make.image(bad, make.disc(28, 20))  # the test mask is converted last
    with pytest.raises(DatasetLayoutError, match=r"ISIC_0000020.jpg is 28x20 but its mask .*"
                                                 r"ISIC_0000020_segmentation.png is 20x28"):
        convert_isic(source, verbose=False)
    assert list(nnunet_env["nnUNet_raw"].iterdir()) == []
    assert not (nnunet_env["nnUNet_preprocessed"] / "Dataset318_ISIC2018").exists()


def test_conflicting_splits_file_is_kept_and_no_dataset_is_left(isic, nnunet_env):
    source = isic(2018, {"train": [0, 1], "val": [10]})
    splits_file = nnunet_env["nnUNet_preprocessed"] / "Dataset318_ISIC2018" / "splits_final.json"
    splits_file.parent.mkdir()
    splits_file.write_text('[{"train": ["a"], "val": ["b"]}]')
    with pytest.raises(FileExistsError, match="exists with other splits; not overwriting"):
        convert_isic(source, verbose=False)
    assert splits_file.read_text() == '[{"train": ["a"], "val": ["b"]}]'
    assert list(nnunet_env["nnUNet_raw"].iterdir()) == []
