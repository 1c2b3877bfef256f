"""What every converter shares (sam_nnunet/datasets/common.py): permissions of what it writes, and the raw
dataset and its splits_final.json published together or not at all. On the real ACDC crop, whose converter
writes both, and ISIC (2D, official split)."""
import json
import os
import re
import shutil
import stat

import pytest

import sam_nnunet.datasets.acdc as acdc_module
from sam_nnunet.datasets.acdc import convert_acdc, patient_grouped_splits
from sam_nnunet.datasets.isic import convert_isic

pytestmark = pytest.mark.faults


@pytest.fixture
def umask():
    """umask(value): set the process umask for this test; the previous one is put back afterwards."""
    previous = os.umask(0o022)
    os.umask(previous)
    yield lambda value: os.umask(value)
    os.umask(previous)


def modes(*folders):
    """path -> permission bits of each folder and of everything below it."""
    return {str(p): stat.S_IMODE(p.stat().st_mode) for f in folders for p in [f, *f.rglob("*")]}


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_everything_written_has_the_modes_of_a_plain_mkdir(acdc_crop, nnunet_env, umask, mask):
    """The dataset folder was 0o700 (tempfile.mkdtemp) and so unreadable by the group; now it and everything in
    it, and the splits, get 0o777 / 0o666 & ~umask like any folder or file the user creates."""
    umask(mask)
    out = convert_acdc(acdc_crop, 27, verbose=False)
    splits_folder = nnunet_env["nnUNet_preprocessed"] / out.name
    found = modes(out, splits_folder)
    assert len(found) > 20
    assert found == {p: (0o777 if os.path.isdir(p) else 0o666) & ~mask for p in found}


def test_isic_dataset_and_splits_are_group_readable(isic, nnunet_env, umask):
    umask(0o027)
    out = convert_isic(isic(2018, {"train": [0, 1], "val": [10]}), verbose=False)
    found = modes(out, nnunet_env["nnUNet_preprocessed"] / out.name)
    assert str(out / "imagesTr" / "ISIC_0000010_0000.png") in found and str(out.parent) not in found
    assert found == {p: (0o750 if os.path.isdir(p) else 0o640) for p in found}


@pytest.mark.bad_input("converters")
def test_conflicting_splits_file_stops_acdc_before_anything_is_written(acdc_crop, refused, nnunet_env, tmp_path,
                                                                      make):
    """Before: the raw dataset was renamed into place, then write_splits refused the file, leaving a dataset
    without patient-grouped splits (nnU-Net would then split it by volume). Now the file is checked before
    any case is read: a damaged image in the same copy is not even reached."""
    source = shutil.copytree(acdc_crop, tmp_path / "ACDC")
    damaged = make.truncated(sorted(source.glob("training/*/*_frame??.nii.gz"))[0])
    splits_file = nnunet_env["nnUNet_preprocessed"] / "Dataset027_ACDC" / "splits_final.json"
    splits_file.parent.mkdir()
    splits_file.write_text('[{"train": ["patient001_frame01"], "val": ["patient002_frame01"]}]')
    refused(lambda: convert_acdc(source, 27, verbose=False), source,
            rf"{re.escape(str(splits_file))} exists with other splits; not overwriting it\. Remove it", FileExistsError)
    splits_file.unlink()
    shutil.copyfile(acdc_crop / damaged.relative_to(source), damaged)
    out = convert_acdc(source, 27, verbose=False)
    assert len(json.loads(splits_file.read_text())) == 5 and (out / "dataset.json").is_file()


def racing(monkeypatch, action):
    """Make ``action()`` happen while convert_acdc assembles its dataset, as another process might."""
    real_write = acdc_module.write_dataset_json

    def write_dataset_json(folder, **kwargs):
        action()
        return real_write(folder, **kwargs)

    monkeypatch.setattr(acdc_module, "write_dataset_json", write_dataset_json)


def test_splits_written_meanwhile_are_kept_and_no_dataset_is_published(acdc_crop, nnunet_env, monkeypatch):
    """Splits are written before the raw dataset is renamed into place, never over an existing file: when
    another conversion wrote other splits meanwhile, theirs stay and no raw dataset appears."""
    splits_file = nnunet_env["nnUNet_preprocessed"] / "Dataset027_ACDC" / "splits_final.json"
    theirs = '[{"train": ["a"], "val": ["b"]}]'

    def write_theirs():
        splits_file.parent.mkdir()
        splits_file.write_text(theirs)

    racing(monkeypatch, write_theirs)
    with pytest.raises(FileExistsError, match="splits_final.json"):
        convert_acdc(acdc_crop, 27, verbose=False)
    assert splits_file.read_text() == theirs
    assert list(nnunet_env["nnUNet_raw"].iterdir()) == []  # no dataset, no .partial folder


def test_failed_publication_takes_the_new_splits_back(acdc_crop, nnunet_env, monkeypatch):
    """When the rename that publishes the raw dataset fails (here: another process made the dataset folder
    meanwhile), the splits file written just before it, and its folder, are removed again."""
    target = nnunet_env["nnUNet_raw"] / "Dataset027_ACDC"
    racing(monkeypatch, lambda: (target / "theirs").mkdir(parents=True))
    with pytest.raises(OSError, match="Dataset027_ACDC"):
        convert_acdc(acdc_crop, 27, verbose=False)
    assert [p.name for p in nnunet_env["nnUNet_raw"].iterdir()] == ["Dataset027_ACDC"]  # no .partial left
    assert [p.name for p in target.iterdir()] == ["theirs"]  # not ours to touch
    assert list(nnunet_env["nnUNet_preprocessed"].iterdir()) == []  # neither splits file nor its folder


def test_splits_left_by_an_interrupted_run_are_accepted_when_they_match(acdc_crop, nnunet_env):
    """Splits go first, so an interruption can leave a splits file without a dataset; a rerun computing the same
    splits takes it as it is."""
    out = convert_acdc(acdc_crop, 27, verbose=False)
    splits_file = nnunet_env["nnUNet_preprocessed"] / out.name / "splits_final.json"
    before = splits_file.read_bytes()
    shutil.rmtree(out)
    assert convert_acdc(acdc_crop, 27, verbose=False) == out
    assert splits_file.read_bytes() == before


def test_acdc_splits_are_known_before_conversion_and_equal_nnunets(acdc_crop, nnunet_env):
    """patient_grouped_splits(case ids) gives what nnU-Net's create_ACDC_split gives on the converted labelsTr."""
    from nnunetv2.dataset_conversion.Dataset027_ACDC import create_ACDC_split

    out = convert_acdc(acdc_crop, 27, holdout=1, verbose=False)
    cases = [p.name[: -len(".nii.gz")] for p in (out / "labelsTr").iterdir()]
    nnunet = [{k: sorted(v) for k, v in split.items()} for split in create_ACDC_split(str(out / "labelsTr"))]
    assert patient_grouped_splits(cases) == nnunet
    assert json.loads((nnunet_env["nnUNet_preprocessed"] / out.name / "splits_final.json").read_text()) == nnunet
