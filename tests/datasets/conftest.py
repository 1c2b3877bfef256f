"""Dataset-converter fixtures: real Kvasir-SEG pairs, tiny files in the documented layouts of the
datasets that are not shipped (Synapse, AMOS22, CVC-ClinicDB, ISIC), and ``refused`` for bad-input tests."""
import hashlib
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import nibabel as nib
import numpy as np
import pytest
from PIL import Image

from sam_nnunet.datasets.common import DatasetLayoutError

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "data"
KVASIR = Path(os.environ.get("SAM_NNUNET_KVASIR", SHARED / "Kvasir-SEG"))
# a typical abdominal CT header: LPS-flipped in-plane axes, 0.75 mm pixels, 2.5 mm slices, off-centre origin
CT_AFFINE = np.array([[-0.75, 0, 0, 170.0], [0, -0.75, 0, 190.0], [0, 0, 2.5, -300.0], [0, 0, 0, 1]])


@pytest.fixture
def kvasir(tmp_path):
    """Factory: kvasir(n) copies the first n real Kvasir-SEG pairs, unchanged, to <tmp>/Kvasir-SEG/{images,masks}."""
    def copy(n: int) -> Path:
        if not (KVASIR / "images").is_dir():
            pytest.fail(f"the shipped Kvasir-SEG data is missing at {KVASIR} (set SAM_NNUNET_KVASIR to its folder)")
        dest = tmp_path / "Kvasir-SEG"
        for sub in ("images", "masks"):
            (dest / sub).mkdir(parents=True)
        for image in sorted((KVASIR / "images").glob("*.jpg"))[:n]:
            shutil.copyfile(image, dest / "images" / image.name)
            shutil.copyfile(KVASIR / "masks" / image.name, dest / "masks" / image.name)
        return dest
    return copy


def save_nifti(path: Path, data: np.ndarray, affine: np.ndarray = CT_AFFINE) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def ct_volume(seed: int, shape=(8, 8, 4)) -> np.ndarray:
    return np.random.default_rng(seed).integers(-1000, 1500, shape).astype(np.int16)


def every_label(n_labels: int, seed: int, shape=(8, 8, 4)) -> np.ndarray:
    """A label volume holding every value 0..n_labels (shifted by seed so cases differ)."""
    return ((np.arange(np.prod(shape)) + seed) % (n_labels + 1)).reshape(shape).astype(np.uint8)


@pytest.fixture
def synapse(tmp_path):
    """Three 8x8x4 cases in the official Synapse layout: 0001 (TransUNet test), 0005 and 0006 (training),
    labels using all 13 BTCV organs."""
    root = tmp_path / "Abdomen"
    for n in (1, 5, 6):
        save_nifti(root / "RawData" / "Training" / "img" / f"img{n:04d}.nii.gz", ct_volume(n))
        save_nifti(root / "RawData" / "Training" / "label" / f"label{n:04d}.nii.gz", every_label(13, n))
    return root


AMOS_NAMES = ["background", "spleen", "right kidney", "left kidney", "gall bladder", "esophagus", "liver", "stomach",
              "arota", "postcava", "pancreas", "right adrenal gland", "left adrenal gland", "duodenum", "bladder",
              "prostate/uterus"]


@pytest.fixture
def amos(tmp_path):
    """The official AMOS22 layout: CT amos_0001 + MRI amos_0507 in imagesTr, CT amos_0008 in imagesVa,
    CT amos_0002 + MRI amos_0540 in imagesTs; dataset.json as released (label names keyed by value strings)."""
    root = tmp_path / "amos22"
    for folder, case in (("Tr", 1), ("Tr", 507), ("Va", 8)):
        save_nifti(root / f"images{folder}" / f"amos_{case:04d}.nii.gz", ct_volume(case))
        save_nifti(root / f"labels{folder}" / f"amos_{case:04d}.nii.gz", every_label(15, case))
    for case in (2, 540):
        save_nifti(root / "imagesTs" / f"amos_{case:04d}.nii.gz", ct_volume(case))
    meta = {"name": "AMOS", "licence": "CC-BY-SA 4.0", "labels": {str(i): n for i, n in enumerate(AMOS_NAMES)},
            "training": [{"image": "./imagesTr/amos_0001.nii.gz", "label": "./labelsTr/amos_0001.nii.gz"}]}
    (root / "dataset.json").write_text(json.dumps(meta))
    return root


def disc_mask(height: int, width: int, foreground: int = 255) -> np.ndarray:
    """A filled disc (a lesion/polyp-like blob) as a 0/foreground uint8 mask."""
    yy, xx = np.mgrid[:height, :width]
    inside = (yy - height / 2) ** 2 + (xx - width / 2) ** 2 < (min(height, width) / 3) ** 2
    return (inside * foreground).astype(np.uint8)


def rgb_image(height: int, width: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3)).astype(np.uint8)


def save_image(path: Path, pixels: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return path


def truncate(path: Path) -> Path:
    """Cut ``path`` to half its bytes, as an interrupted download or copy leaves it."""
    content = path.read_bytes()
    path.write_bytes(content[: len(content) // 2])
    return path


@pytest.fixture
def make():
    """The writers above, for tests that alter a layout: make.nifti, make.labels, make.image, make.disc, make.rgb,
    and make.truncated (a file cut to half its bytes)."""
    return SimpleNamespace(nifti=save_nifti, labels=every_label, image=save_image, disc=disc_mask, rgb=rgb_image,
                           truncated=truncate)


@pytest.fixture
def cvc(tmp_path):
    """Factory: cvc(ext) writes frames 1, 2 and 10 of the CVC-ClinicDB layout (Original/ + Ground Truth/),
    24x32 pixels, as .tif (the original release) or .png."""
    def make(ext: str = ".tif") -> Path:
        root = tmp_path / f"CVC-ClinicDB{ext}"
        for n in (10, 1, 2):
            save_image(root / "Original" / f"{n}{ext}", rgb_image(24, 32, n))
            save_image(root / "Ground Truth" / f"{n}{ext}", disc_mask(24, 32))
        return root
    return make


ISIC_FOLDERS = {
    2018: ("ISIC2018_Task1-2_{}_Input", "ISIC2018_Task1_{}_GroundTruth", {"train": "Training", "val": "Validation",
                                                                          "test": "Test"}),
    2017: ("ISIC-2017_{}_Data", "ISIC-2017_{}_Part1_GroundTruth", {"train": "Training", "val": "Validation",
                                                                  "test": "Test_v2"}),
}


@pytest.fixture
def isic(tmp_path):
    """Factory: isic(year, subsets={"train": [ids], ...}, test_masks=True) writes the challenge folders with
    20x28 images and 0/255 masks, plus the release's extra files (LICENSE.txt, ATTRIBUTION.txt, and for 2017
    the *_superpixels.png maps)."""
    def make(year: int, subsets: dict, test_masks: bool = True) -> Path:
        root = tmp_path / f"ISIC{year}"
        image_pattern, mask_pattern, names = ISIC_FOLDERS[year]
        for subset, ids in subsets.items():
            images = root / image_pattern.format(names[subset])
            masks = root / mask_pattern.format(names[subset])
            for i in ids:
                save_image(images / f"ISIC_{i:07d}.jpg", rgb_image(20, 28, i))
                if year == 2017:
                    save_image(images / f"ISIC_{i:07d}_superpixels.png", rgb_image(20, 28, i + 1))
                if subset != "test" or test_masks:
                    save_image(masks / f"ISIC_{i:07d}_segmentation.png", disc_mask(20, 28))
            for folder in (images, masks) if (subset != "test" or test_masks) else (images,):
                (folder / "LICENSE.txt").write_text("CC-BY-NC")
                (folder / "ATTRIBUTION.txt").write_text("ISIC Archive")
        return root
    return make


def tree_state(folder: Path) -> dict:
    """relative path -> sha256 of every file, "folder" for every folder, hidden ones included."""
    return {str(p.relative_to(folder)): "folder" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))}


@pytest.fixture
def refused(nnunet_env):
    """refused(convert, source, match, error=DatasetLayoutError): runs ``convert()``, expects ``error`` with a
    message matching ``match`` (re.search), and checks that the conversion left no trace: $nnUNet_raw and
    $nnUNet_preprocessed hold exactly what they held before (no dataset, no hidden .partial folder, no
    splits file) and every file under ``source`` is byte for byte as before. Returns the error."""
    def run(convert, source: Path, match: str, error=DatasetLayoutError):
        watched = (source, nnunet_env["nnUNet_raw"], nnunet_env["nnUNet_preprocessed"])
        before = [tree_state(folder) for folder in watched]
        with pytest.raises(error, match=match) as caught:
            convert()
        assert [tree_state(folder) for folder in watched] == before
        return caught.value
    return run
