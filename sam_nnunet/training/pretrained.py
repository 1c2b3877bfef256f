"""Pretrained weights in a SAM trainer: loaded, frozen as the paper freezes them, recorded, and checked on resume.

:class:`PretrainedWeights` is the part of :class:`~sam_nnunet.training.sam_trainer.SAMTrainerBase` that handles the
``checkpoint`` setting (:mod:`sam_nnunet.training.settings`): ``SAM_NNUNET_CHECKPOINT=/path/sam_vit_b_01ec64.pth``
(or MedSAM's file; a network with its own layout loads it through its ``load_pretrained``, e.g. ESP-MedSAM's
TinyViT), or the name of a file a package ships (``litemedsam``, :mod:`sam_nnunet.modeling.weights.pretrained_files`;
also a preset's ``"checkpoint"`` training setting, which the environment overrides).

* A named file is verified by SHA-256 and recorded where nnU-Net users look: as ``sam_nnunet_pretrained`` in the
  plans.json saved with the model, and in the log.
* The network's ``load_pretrained`` loads it and reports every tensor of the file as loaded, resized or unused;
  ``freeze_pretrained`` then freezes what its paper freezes (HSP-SAM: the encoder except LoRA; Self-Prompt-SAM:
  every SAM weight), limited to the tensors the file supplied. The setting ``freeze_pretrained: false`` is full
  fine-tuning. This happens in ``configure_optimizers``, which nnU-Net runs after building the network and *before*
  wrapping it in DDP (freezing after the wrap breaks DDP's reducer at the second step).
* Without a checkpoint the encoder is randomly initialised and *trained*, and the log says so: a frozen random
  encoder is useless.
* ``--c`` / ``--val`` check that the checkpoint is the same *file* as in the first run (size + SHA-256 in
  ``sam_nnunet_run.json``); its path may change (another mount).
"""
from __future__ import annotations

from typing import Optional

from sam_nnunet.modeling.weights.checkpoint import CHECKPOINT_ENV, file_fingerprint
from sam_nnunet.modeling.weights.pretrained_files import named_file

#: configuration entry of the plans saved with a model: the named pretrained file it was trained from
PRETRAINED_KEY = "sam_nnunet_pretrained"


class PretrainedWeights:
    """Mixin of the SAM trainers, before :class:`~sam_nnunet.training.safeguards.RunSafeguards` in the bases: it
    extends the run identity that the safeguards write and check."""

    #: class defaults of the settings ``checkpoint`` and ``freeze_pretrained``
    pretrained_checkpoint: Optional[str] = None
    freeze_pretrained: bool = True
    #: the checkpoint's file (a name resolved to its verified file), or None; set by the trainer's constructor
    sam_checkpoint: Optional[str] = None
    _fingerprint: Optional[dict] = None

    def _record_pretrained(self) -> None:
        """The named file this model starts from, in the plans that nnU-Net saves with it."""
        known = named_file(self.sam_checkpoint)
        for conf in self._plans_configurations():
            conf.pop(PRETRAINED_KEY, None)
            if known is not None:
                conf[PRETRAINED_KEY] = {"name": known.name, "file": known.filename, "bytes": known.size,
                                        "sha256": known.sha256, "licence": known.licence, "source": known.source}

    def _load_pretrained(self) -> None:
        """Load the checkpoint and freeze what it supplied, on the bare network (see the module docstring for when)."""
        net = self._network()
        if not self.sam_checkpoint:
            self.print_to_log_file(self.no_checkpoint_message())
            return
        known = named_file(self.sam_checkpoint)
        if known is not None:
            self.print_to_log_file(f"Pretrained weights {known.name!r}: {known.filename} ({known.size:,} bytes, "
                                   f"SHA-256 {known.sha256}, verified; {known.licence}; {known.source}).")
        report = net.load_pretrained(self.sam_checkpoint)
        self.print_to_log_file(report.format())
        if self.freeze_pretrained:
            frozen, trainable = net.freeze_pretrained(report)
            self.print_to_log_file(f"{type(net).__name__}.freeze_pretrained: {frozen:,} pretrained parameters "
                                   f"frozen, {trainable:,} trained.")
        else:
            trainable = sum(p.numel() for p in net.parameters() if p.requires_grad)
            self.print_to_log_file(f"Full fine-tuning (training setting freeze_pretrained: false): nothing of the "
                                   f"file frozen, {trainable:,} parameters trained.")

    def no_checkpoint_message(self) -> str:
        """What the log says when no checkpoint is given."""
        return (f"No SAM checkpoint ({CHECKPOINT_ENV} is not set): the image encoder is randomly initialised "
                f"and trained in full (nothing frozen). Set {CHECKPOINT_ENV}=/path/to/sam_vit_b_01ec64.pth "
                f"to fine-tune pretrained SAM with LoRA.")

    # -- the run identity (RunSafeguards): the checkpoint, by content
    def run_identity(self) -> dict:
        if self._fingerprint is None:
            self._fingerprint = file_fingerprint(self.sam_checkpoint) if self.sam_checkpoint else {}
        known = named_file(self.sam_checkpoint)
        return {**super().run_identity(), "sam_checkpoint": self.sam_checkpoint,
                "sam_checkpoint_fingerprint": self._fingerprint or None,
                "sam_checkpoint_name": known.name if known is not None else None}

    def check_resume(self, before: dict) -> None:
        super().check_resume(before)
        now = self.run_identity()
        if "sam_checkpoint_fingerprint" in before:
            same = before["sam_checkpoint_fingerprint"] == now["sam_checkpoint_fingerprint"]
        else:  # written by an older version: only the path is known
            same = before.get("sam_checkpoint") == now["sam_checkpoint"]
        if not same:
            raise RuntimeError(
                f"This fold was trained with {CHECKPOINT_ENV}={before.get('sam_checkpoint')!r} "
                f"({before.get('sam_checkpoint_fingerprint')}) but it is now {self.sam_checkpoint!r} "
                f"({now['sam_checkpoint_fingerprint']}). Set it to the same file as before to resume (it decides "
                f"which weights are frozen); the path may differ, the content may not.")
        if before.get("sam_checkpoint") != now["sam_checkpoint"]:
            self.print_to_log_file(f"{CHECKPOINT_ENV}: same file as before ({before.get('sam_checkpoint')} is now "
                                   f"{self.sam_checkpoint}).")
