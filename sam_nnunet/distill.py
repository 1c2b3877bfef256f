"""MMDKD as a command (shared/papers/004, section III-B, Eq. 1): ``sam_nnunet distill``.

    L = || f_ViT-SAM(x) - f_LIE(x) ||^2  +  sum_n || f_ViT-Med(x^n) - f_MC(x^n) ||^2

**Decoupled, as the paper does it** ("we first transfer the knowledge from f_ViT-SAM to a lightweight image
encoder f_LIE. Secondly, we extract the specific knowledge of each medical modality from f_ViT-Med, and store it
in a separate set of parameter bags"): two stages, each with its own optimiser.

1. *Universal* (``--steps``): term 1 only. The student's TinyViT and neck (and a 1x1 regressor, see Widths) learn
   to give frozen SAM's image embedding; no bag takes part.
2. *Modality* (``--modality-steps``, default ``--steps``): term 2 only, per dataset whose modality the teacher
   has bags for. The TinyViT and neck are frozen (their batch norms keep their statistics); only that modality's
   bags (and the regressor of this term) are updated, so the encoder leaves this stage bit-for-bit as it came in.

Teachers:

* f_ViT-SAM, term 1's: frozen SAM, a SAM / MedSAM checkpoint file (``--teacher-checkpoint``), its own neck
  included. When the teacher fold (below) was trained from a SAM file, that file must be given here (its
  fingerprint is checked against the fold's run record): the fold fine-tuned its neck, so the fold without bags
  is not SAM. Only a fold trained from scratch (no SAM file exists for it: tests, CPU demos) serves term 1 itself,
  without its bags, and the command says so.
* f_ViT-Med, term 2's: a trained ESP-MedSAM ViT fold (``ESPMedSAMTeacherTrainer``: SAM's ViT plus the modality
  bags it learnt; ``--teacher-model FOLDER -f FOLD``), run with the bags of modality n.

Student: the TinyViT (``--student``, default MobileSAM's ``tiny_vit_5m``; ``tiny_vit_21m`` is the paper's size;
``--init mobile_sam.pt`` starts from MobileSAM, which is itself term 1's result: then ``--steps 0`` is allowed) with
its neck and one bag per modality of the datasets. It is built with 3 input channels, MobileSAM's layout;
1-channel images are repeated to 3, which is what the loader's channel adaptation (a sum over RGB) undoes when a
1-channel dataset loads the file.

Data: the preprocessed 2d data of one or more nnU-Net datasets (``-d 27 311``), patches from nnU-Net's own data
loader at each dataset's plans patch size (a third with foreground, as nnU-Net samples), no augmentation. Only the
training cases of ``--fold`` (default 0) are used, so the fold's validation cases stay unseen. The paper's
universal term uses natural images (SA-1B), which are not available offline: here it uses the medical images too.
Each dataset's modality comes from its plans or dataset.json (as the trainers take it).

Widths: when a teacher's embedding is not as wide as the student's (e.g. a 64-wide ``vit_tiny`` teacher and
MobileSAM's 256-wide student), a 1x1 convolution per term maps the student's embedding onto that teacher's width
for the loss only (FitNets' regressor); it is not written to the file.

Output: ``-o student.pth``, a MobileSAM-layout state dict (``image_encoder.*`` with the neck) plus
``modality_controller.*`` (the bags), under ``"model"``, with what was distilled under ``"sam_nnunet_distill"``
(:data:`DISTILL_KEY`; ``bag_modalities`` lists the modalities whose bags term 2 trained). ``ESPMedSAMTrainer``
loads it with ``SAM_NNUNET_CHECKPOINT``; Table VI's MMDKD rows accept nothing else
(:func:`check_distilled_student`). An existing output is never overwritten.

Resuming: every ``--save-every`` steps the student, both optimisers and regressors and the loss history go to
``OUT.partial``; a run started again with the same arguments continues from there (other arguments: refused). The
loss per step (with its stage) is written to ``OUT.log.json``.
"""
from __future__ import annotations

import json
import os
import random
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sam_nnunet.modeling.common import pad_to_multiple
from sam_nnunet.modeling.esp_medsam import CONTROLLER_PREFIX, ESPMedSAM
from sam_nnunet.modeling.blocks.modality_controller import resolve_modality

_TO_MOBILE_SAM = ((re.compile(r"^patch_embed\.conv1\."), "patch_embed.seq.0."),
                  (re.compile(r"^patch_embed\.conv2\."), "patch_embed.seq.2."),
                  (re.compile(r"\.conv\.weight$"), ".c.weight"))


def to_mobile_sam_key(key: str) -> str:
    """A :class:`~sam_nnunet.modeling.blocks.light_encoder.TinyViTEncoder` key -> MobileSAM's (inverse of
    ``mobile_sam_key_map``), without the ``image_encoder.`` prefix."""
    for pattern, repl in _TO_MOBILE_SAM:
        key = pattern.sub(repl, key)
    return key


def student_file_state(student: ESPMedSAM) -> Dict[str, torch.Tensor]:
    """The student's encoder, neck and bags under the keys ESP-MedSAM loads (MobileSAM layout + controller)."""
    state = {f"image_encoder.{to_mobile_sam_key(k)}": v for k, v in student.encoder.state_dict().items()}
    state.update({f"image_encoder.neck.{k}": v for k, v in student.neck.state_dict().items()})
    state.update({f"{CONTROLLER_PREFIX}{k}": v for k, v in student.controller.state_dict().items()})
    return {k: v.detach().cpu().clone() for k, v in state.items()}


@dataclass
class _Source:
    """One dataset's patches: nnU-Net's data loader over the fold's training cases."""

    name: str
    modality: str
    channels: int
    loader: object

    def batch(self) -> torch.Tensor:
        return torch.as_tensor(next(self.loader)["data"]).float()


def _source(dataset: str, configuration: str, plans: str, batch_size: int, fold: int) -> _Source:
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.training.dataloading.data_loader import nnUNetDataLoader
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class
    from nnunetv2.utilities.dataset_name_id_conversion import maybe_convert_to_dataset_name
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    root = os.environ.get("nnUNet_preprocessed")
    if not root:
        raise ValueError("nnUNet_preprocessed is not set: export it as for nnUNetv2_train")
    name = str(maybe_convert_to_dataset_name(dataset))
    folder = Path(root) / name
    plans_file = folder / f"{plans}.json"
    if not plans_file.is_file():
        raise FileNotFoundError(f"{plans_file} not found (run nnUNetv2_plan_and_preprocess, or check -p)")
    manager = PlansManager(str(plans_file))
    conf = manager.get_configuration(configuration)
    if len(conf.patch_size) != 2:
        raise ValueError(f"distill reads a 2d configuration (the student is a 2D encoder), not {configuration!r} "
                         f"with patch {conf.patch_size}")
    dataset_json = load_json(str(folder / "dataset.json"))
    data_folder = folder / conf.data_identifier
    if not data_folder.is_dir():
        raise FileNotFoundError(f"{data_folder} not found: preprocess configuration {configuration!r} of {name}")
    cases = None
    splits = folder / "splits_final.json"
    if splits.is_file():
        cases = list(load_json(str(splits))[fold]["train"])
    data = infer_dataset_class(str(data_folder))(str(data_folder), cases)
    loader = nnUNetDataLoader(data, batch_size, conf.patch_size, conf.patch_size,
                              manager.get_label_manager(dataset_json), oversample_foreground_percent=0.33)
    block = conf.configuration.get("sam_nnunet") or {}
    return _Source(name, resolve_modality(dataset_json, block.get("modality")), len(dataset_json["channel_names"]),
                   loader)


#: the record ``distill`` writes into its file, beside ``"model"``
DISTILL_KEY = "sam_nnunet_distill"


@dataclass
class _Teachers:
    """Eq. 1's two targets: f_ViT-SAM (term 1, used without bags) and f_ViT-Med (term 2, with bags), or None."""

    sam: Optional[ESPMedSAM]
    sam_name: Optional[str]
    med: Optional[ESPMedSAM]

    @property
    def bag_modalities(self) -> set:
        has_bags = self.med is not None and self.med.controller is not None
        return set(self.med.controller.modalities) if has_bags else set()


def _teacher_fold(model_folder: str, fold: str) -> ESPMedSAM:
    from sam_nnunet.export.model import load_fold_network

    network, _ = load_fold_network(model_folder, fold if fold == "all" else int(fold))
    if not isinstance(network, ESPMedSAM) or network.light:
        raise ValueError(f"{model_folder} holds a {type(network).__name__} "
                         f"{'with a TinyViT' if isinstance(network, ESPMedSAM) else ''}; the teacher must be an "
                         f"ESP-MedSAM network with a SAM ViT (trained with ESPMedSAMTeacherTrainer)")
    return network


def _sam_file_teacher(checkpoint: str) -> ESPMedSAM:
    from sam_nnunet.modeling.weights.checkpoint import _name_of_size, checkpoint_encoder_size, read_sam_state_dict

    embed_dim, depth = checkpoint_encoder_size(read_sam_state_dict(checkpoint))
    size = _name_of_size(embed_dim, depth)
    if size == "an unknown size":
        raise ValueError(f"{checkpoint}: a ViT with embed dim {embed_dim} and {depth} blocks is none of the "
                         f"registry's sizes")
    network = ESPMedSAM(num_input_channels=3, num_classes=2, img_size=(256, 256), modality="CT",
                        encoder=size, light_encoder=None, controller=False, patch_prompts=False,
                        deep_supervision=False)
    network.load_pretrained(checkpoint)
    return network


def _fold_sam_file(model_folder: str, fold: str) -> Optional[dict]:
    """The SAM file a teacher fold was trained from, as its run record has it ({path, fingerprint}), or None."""
    from sam_nnunet.training.safeguards import RUN_INFO_FILE

    record = Path(model_folder) / f"fold_{fold}" / RUN_INFO_FILE
    if not record.is_file():
        return None
    run = json.loads(record.read_text())
    if not run.get("sam_checkpoint"):
        return None
    return {"path": run["sam_checkpoint"], "fingerprint": run.get("sam_checkpoint_fingerprint")}


def load_teachers(model_folder: Optional[str] = None, fold: str = "0", checkpoint: Optional[str] = None,
                  universal: bool = True) -> _Teachers:
    """Eq. 1's teachers (eval, frozen); see the module docstring. ``universal``: term 1 will run (its teacher is
    needed)."""
    if model_folder is None and checkpoint is None:
        raise ValueError("give the teachers: --teacher-checkpoint SAM.pth (frozen SAM, Eq. 1's first term) and/or "
                         "--teacher-model FOLDER (a trained ESPMedSAMTeacherTrainer fold with modality bags, its "
                         "second term)")
    med = _teacher_fold(model_folder, fold) if model_folder is not None else None
    sam, sam_name = None, None
    if checkpoint is not None:
        origin = _fold_sam_file(model_folder, fold) if model_folder is not None else None
        if origin and origin["fingerprint"]:
            from sam_nnunet.modeling.weights.checkpoint import file_fingerprint

            if file_fingerprint(checkpoint) != origin["fingerprint"]:
                raise ValueError(f"the teacher fold was trained from the SAM file {origin['path']} "
                                 f"({origin['fingerprint']}), not from {checkpoint}: Eq. 1's two teachers must share "
                                 f"their SAM (give that file as --teacher-checkpoint)")
        sam, sam_name = _sam_file_teacher(checkpoint), str(checkpoint)
    elif universal:
        origin = _fold_sam_file(model_folder, fold)
        if origin:
            raise ValueError(f"the teacher fold was trained from the SAM file {origin['path']}, and fine-tuned its "
                             f"neck: without its bags it is not SAM. Give that file as --teacher-checkpoint (Eq. 1's "
                             f"first term is distilled from frozen SAM), or --steps 0 with --init for a student that "
                             f"is already distilled from SAM (MobileSAM's mobile_sam.pt)")
        sam, sam_name = med, f"{model_folder} (fold {fold}) without bags: trained from scratch, no SAM file exists"
    for network in (sam, med):
        if network is not None:
            network.requires_grad_(False)
            network.eval()
    return _Teachers(sam, sam_name, med)


def _to_channels(x: torch.Tensor, channels: int, who: str) -> torch.Tensor:
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, channels, -1, -1)
    raise ValueError(f"the {who} takes {channels} channel(s); a {x.shape[1]}-channel dataset cannot be fed to it")


def _regressor(student: ESPMedSAM, teacher: Optional[ESPMedSAM]) -> nn.Module:
    """The 1x1 convolution from the student's embedding width to ``teacher``'s (Identity when equal)."""
    width_s = student.neck[-1].weight.shape[0]
    width_t = teacher.neck[-1].weight.shape[0] if teacher is not None else width_s
    return nn.Conv2d(width_s, width_t, kernel_size=1) if width_t != width_s else nn.Identity()


def distill(*, datasets: Sequence[str], out: str, configuration: str = "2d", plans: str = "nnUNetPlans",
            teacher_model: Optional[str] = None, teacher_fold: str = "0", teacher_checkpoint: Optional[str] = None,
            student: str = "tiny_vit_5m", init: Optional[str] = None, steps: int = 2000,
            modality_steps: Optional[int] = None, batch_size: int = 8, lr: float = 1e-3, fold: int = 0,
            save_every: int = 100, device: str = "cpu", seed: int = 0, progress: bool = True) -> Path:
    """Distil a TinyViT student (stage 1), then its bags (stage 2), from the teachers on nnU-Net datasets; returns
    the written file."""
    from tqdm import tqdm

    out_path = Path(out)
    if out_path.exists():
        raise FileExistsError(f"{out_path} exists; distill never overwrites a result (choose another -o)")
    if steps < 0 or (modality_steps is not None and modality_steps < 0):
        raise ValueError("--steps and --modality-steps count steps: 0 or more")
    if steps == 0 and not init:
        raise ValueError("--steps 0 skips Eq. 1's first term, which leaves a random TinyViT to freeze: give --init "
                         "with a student already distilled from SAM (MobileSAM's mobile_sam.pt)")
    partial, log_path = Path(f"{out}.partial"), Path(f"{out}.log.json")
    out_path.parent.mkdir(parents=True, exist_ok=True)

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    dev = torch.device(device)
    sources = [_source(d, configuration, plans, batch_size, fold) for d in datasets]
    teachers = load_teachers(teacher_model, teacher_fold, teacher_checkpoint, universal=steps > 0)
    modalities = sorted({s.modality for s in sources})
    bag_sources = [s for s in sources if s.modality in teachers.bag_modalities]
    if modality_steps is None:
        modality_steps = steps if bag_sources else 0
    if modality_steps and not bag_sources:
        raise ValueError(f"--modality-steps {modality_steps}: no teacher has bags for {modalities} (give "
                         f"--teacher-model, a fold trained on them), so Eq. 1's second term has nothing to distil")
    args = {"datasets": list(map(str, datasets)), "configuration": configuration, "plans": plans,
            "teacher_model": str(teacher_model) if teacher_model else None, "teacher_fold": str(teacher_fold),
            "teacher_checkpoint": str(teacher_checkpoint) if teacher_checkpoint else None, "student": student,
            "init": str(init) if init else None, "steps": steps, "modality_steps": modality_steps,
            "batch_size": batch_size, "lr": lr, "fold": fold}

    net = ESPMedSAM(num_input_channels=3, num_classes=2, img_size=(256, 256), modality=modalities[0],
                    modalities=modalities, light_encoder=student, patch_prompts=False, modality_queries=False,
                    deep_supervision=False)
    if init:
        report = net.load_pretrained(init)
        print(f"student initialised from {init}: {len(report.loaded)} tensors")
    regressors = nn.ModuleDict({"universal": _regressor(net, teachers.sam), "modality": _regressor(net, teachers.med)})
    for teacher in (teachers.sam, teachers.med):
        if teacher is not None:
            teacher.to(dev)
    net.to(dev)
    regressors.to(dev)
    optimizers = {  # one per stage: term 1 reaches the TinyViT and neck only, term 2 the bags only
        "universal": torch.optim.AdamW([*net.encoder.parameters(), *net.neck.parameters(),
                                        *regressors["universal"].parameters()], lr=lr, weight_decay=1e-4),
        "modality": torch.optim.AdamW([*net.controller.parameters(), *regressors["modality"].parameters()],
                                      lr=lr, weight_decay=1e-4)}
    start, history = 0, []
    if partial.is_file():
        from sam_nnunet.sharing.trust import load_checkpoint

        state = load_checkpoint(partial, map_location=dev)  # weights-only: a resumed file runs no code
        if state["args"] != args:
            changed = sorted(k for k in args if state["args"].get(k) != args[k])
            raise ValueError(f"{partial} was written by a distill run with other arguments ({changed}); run with "
                             f"the same ones to resume it, or remove it to start over")
        net.load_state_dict(state["student"])
        regressors.load_state_dict(state["regressors"])
        for name, optimizer in optimizers.items():
            optimizer.load_state_dict(state["optimizers"][name])
        start, history = state["step"], state["history"]
        print(f"resuming {out_path.name} from step {start} of {steps + modality_steps} ({partial})")

    print(f"MMDKD, decoupled: {steps} steps of Eq. 1's first term (student {student}: TinyViT + neck; teacher "
          f"{teachers.sam_name or 'none'}), then {modality_steps} of its second (the bags of "
          f"{sorted({s.modality for s in bag_sources}) or 'none'}; TinyViT and neck frozen; teacher "
          f"{teacher_model or 'none'} with bags {sorted(teachers.bag_modalities) or 'none'}); datasets "
          + ", ".join(f"{s.name} ({s.modality})" for s in sources)
          + "".join(f"; 1x1 regressor for term {i + 1}: {r.in_channels} -> {r.out_channels}"
                    for i, r in enumerate(regressors.values()) if isinstance(r, nn.Conv2d)))
    total = steps + modality_steps
    bar = tqdm(range(start, total), initial=start, total=total, disable=not progress, desc="distill")
    for step in bar:
        stage = "universal" if step < steps else "modality"
        if stage == "modality":  # the TinyViT and neck as stage 1 left them (batch norms keep their statistics)
            net.encoder.requires_grad_(False)
            net.neck.requires_grad_(False)
        net.train()
        pool = sources if stage == "universal" else bag_sources
        source = pool[step % len(pool)]
        x = source.batch().to(dev)
        x, _ = pad_to_multiple(x, 16)
        x_s = _to_channels(x, 3, "student")
        if stage == "universal":
            with torch.no_grad():
                target = teachers.sam.image_embedding(_to_channels(x, teachers.sam.num_input_channels, "teacher"),
                                                      with_bags=False)
            loss = F.mse_loss(regressors["universal"](net.image_embedding(x_s, with_bags=False)), target)
        else:
            net.select_modality(source.modality)
            teachers.med.select_modality(source.modality)
            with torch.no_grad():
                target = teachers.med.image_embedding(_to_channels(x, teachers.med.num_input_channels, "teacher"))
            loss = F.mse_loss(regressors["modality"](net.image_embedding(x_s)), target)
        optimizer = optimizers[stage]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append({"step": step, "stage": stage, "dataset": source.name, "loss": loss.item()})
        bar.set_postfix(stage=stage, loss=f"{loss.item():.4f}")
        if (step + 1) % save_every == 0 and step + 1 < total:
            _write_partial(partial, {"args": args, "step": step + 1, "history": history, "student": net.state_dict(),
                                     "regressors": regressors.state_dict(),
                                     "optimizers": {k: o.state_dict() for k, o in optimizers.items()}})
            log_path.write_text(json.dumps(history))

    def losses(stage):
        return [h["loss"] for h in history if h["stage"] == stage]

    meta = {"student": student, "modalities": modalities,
            "bag_modalities": sorted({s.modality for s in bag_sources}) if modality_steps else [],
            "teacher_sam": teachers.sam_name, "teacher_model": args["teacher_model"],
            "teacher_fold": args["teacher_fold"], "init": args["init"], "datasets": [s.name for s in sources],
            "steps": steps, "modality_steps": modality_steps,
            "universal_loss": [losses("universal")[0], losses("universal")[-1]] if steps else None,
            "modality_loss": [losses("modality")[0], losses("modality")[-1]] if modality_steps else None}
    tmp = Path(f"{out}.writing")
    torch.save({"model": student_file_state(net), DISTILL_KEY: meta}, tmp)
    os.replace(tmp, out_path)
    log_path.write_text(json.dumps(history))
    if partial.is_file():
        partial.unlink()
    print(f"wrote {out_path}: set SAM_NNUNET_CHECKPOINT={out_path} for ESPMedSAMTrainer (light_encoder {student})")
    return out_path


def distill_record(path) -> Optional[dict]:
    """The record ``distill`` wrote into ``path`` (:data:`DISTILL_KEY`), or None: another file, or none at all."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # unreadable or not weights-only: certainly not a distill file (the loader says what it is)
        return None
    record = obj.get(DISTILL_KEY) if isinstance(obj, dict) else None
    return record if isinstance(record, dict) else None


def check_distilled_student(path: Optional[str], modality: str, who: str) -> dict:
    """Table VI's rows with MMDKD: the TinyViT student and the bags of ``modality`` must come from ``distill``
    (Eq. 1's both terms); anything else would run the row without its distillation. Returns the file's record."""
    how = ("distil one with `sam_nnunet distill` (docs/trainers/esp_medsam.md) and set SAM_NNUNET_CHECKPOINT to the "
           "file it writes")
    if not path:
        raise ValueError(f"{who} is a Table VI row with MMDKD, whose TinyViT student and modality bags are "
                         f"distilled, and SAM_NNUNET_CHECKPOINT is not set: it would train without distillation. "
                         f"{how[0].upper()}{how[1:]}.")
    record = distill_record(path)
    if record is None or "bag_modalities" not in record:
        raise ValueError(f"{who} is a Table VI row with MMDKD, but {path} has no distillation record of "
                         f"`sam_nnunet distill` ({DISTILL_KEY!r} with 'bag_modalities'): MobileSAM's and "
                         f"LiteMedSAM's files distil SAM's encoder but hold no modality bags, and files written "
                         f"before MMDKD was decoupled trained encoder and bags together. To train on it, use "
                         f"ESPMedSAMTrainer; for this row, {how}.")
    if modality not in record["bag_modalities"]:
        raise ValueError(f"{who} is a Table VI row with MMDKD, but {path} distilled bags for "
                         f"{record['bag_modalities'] or 'no modality'}, not for this dataset's {modality!r}: "
                         f"{how}, with a teacher fold that has {modality} bags.")
    return record


def _write_partial(path: Path, state: dict) -> None:
    """The resume point, written to a temporary name and renamed (a run killed while saving keeps the last one)."""
    tmp = Path(f"{path}.writing")
    torch.save(state, tmp)
    os.replace(tmp, path)

