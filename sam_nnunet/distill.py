"""MMDKD as a command (shared/papers/004, section III-B, Eq. 1): ``sam_nnunet distill``.

    L = || f_ViT-SAM(x) - f_LIE(x) ||^2  +  sum_n || f_ViT-Med(x^n) - f_MC(x^n) ||^2

* Teacher. Either a trained fold of an ESP-MedSAM ViT network (``ESPMedSAMTeacherTrainer``: SAM's ViT plus the
  modality bags it learnt; ``--teacher-model FOLDER -f FOLD``), whose encoder without bags is f_ViT-SAM and with
  the bags of modality n is f_ViT-Med; or a SAM / MedSAM checkpoint file (``--teacher-checkpoint``), which has no
  bags and so gives the universal term only. What the teacher returns is its image embedding (after the neck).
* Student: the TinyViT (``--student``, default MobileSAM's ``tiny_vit_5m``; ``--init mobile_sam.pt`` starts from
  MobileSAM) with its neck and one bag per modality of the datasets: f_LIE is the student without bags, f_MC with
  the bags of modality n. It is built with 3 input channels, MobileSAM's layout; 1-channel images are repeated to
  3, which is what the loader's channel adaptation (a sum over RGB) undoes when a 1-channel dataset loads the file.
* Data: the preprocessed 2d data of one or more nnU-Net datasets (``-d 27 311``), patches from nnU-Net's own
  data loader at each dataset's plans patch size (a third with foreground, as nnU-Net samples), no augmentation.
  Only the training cases of ``--fold`` (default 0) are used, so the fold's validation cases stay unseen. The
  paper's universal term uses natural images (SA-1B), which are not available offline: here it uses the
  medical images too. Each dataset's modality comes from its plans or dataset.json (as the trainers take it).
* Widths: when the teacher's embedding is not as wide as the student's (e.g. a 128-wide ``vit_small`` teacher
  and MobileSAM's 256-wide student), a 1x1 convolution maps the student's embedding onto the teacher's width for
  the loss only (FitNets' regressor); it is not written to the file.
* Output: ``-o student.pth``, a MobileSAM-layout state dict (``image_encoder.*`` with the neck) plus
  ``modality_controller.*`` (the bags), under ``"model"``, with what was distilled under ``"sam_nnunet_distill"``.
  ``ESPMedSAMTrainer`` loads it with ``SAM_NNUNET_CHECKPOINT``. An existing output is never overwritten.
* Resuming: every ``--save-every`` steps the student, the optimiser and the loss history go to ``OUT.partial``;
  a run started again with the same arguments continues from there (other arguments: refused). The loss per
  step is written to ``OUT.log.json``.
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


def load_teacher(model_folder: Optional[str] = None, fold: str = "0",
                 checkpoint: Optional[str] = None) -> ESPMedSAM:
    """The teacher network (eval, frozen): a trained ESP-MedSAM ViT fold, or a SAM checkpoint in a bag-less one."""
    if (model_folder is None) == (checkpoint is None):
        raise ValueError("give exactly one teacher: --teacher-model FOLDER (a trained ESPMedSAMTeacherTrainer fold) "
                         "or --teacher-checkpoint SAM.pth")
    if model_folder is not None:
        from sam_nnunet.export.model import load_fold_network

        network, _ = load_fold_network(model_folder, fold if fold == "all" else int(fold))
        if not isinstance(network, ESPMedSAM) or network.light:
            raise ValueError(f"{model_folder} holds a {type(network).__name__} "
                             f"{'with a TinyViT' if isinstance(network, ESPMedSAM) else ''}; the teacher must be an "
                             f"ESP-MedSAM network with a SAM ViT (trained with ESPMedSAMTeacherTrainer)")
    else:
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
    network.requires_grad_(False)
    return network.eval()


def _to_channels(x: torch.Tensor, channels: int, who: str) -> torch.Tensor:
    if x.shape[1] == channels:
        return x
    if x.shape[1] == 1:
        return x.expand(-1, channels, -1, -1)
    raise ValueError(f"the {who} takes {channels} channel(s); a {x.shape[1]}-channel dataset cannot be fed to it")


def distill(*, datasets: Sequence[str], out: str, configuration: str = "2d", plans: str = "nnUNetPlans",
            teacher_model: Optional[str] = None, teacher_fold: str = "0", teacher_checkpoint: Optional[str] = None,
            student: str = "tiny_vit_5m", init: Optional[str] = None, steps: int = 2000, batch_size: int = 8,
            lr: float = 1e-3, fold: int = 0, save_every: int = 100, device: str = "cpu", seed: int = 0,
            progress: bool = True) -> Path:
    """Distil a TinyViT student (+ bags) from a teacher on nnU-Net datasets; returns the written file."""
    from tqdm import tqdm

    out_path = Path(out)
    if out_path.exists():
        raise FileExistsError(f"{out_path} exists; distill never overwrites a result (choose another -o)")
    partial, log_path = Path(f"{out}.partial"), Path(f"{out}.log.json")
    out_path.parent.mkdir(parents=True, exist_ok=True)
    args = {"datasets": list(map(str, datasets)), "configuration": configuration, "plans": plans,
            "teacher_model": str(teacher_model) if teacher_model else None, "teacher_fold": str(teacher_fold),
            "teacher_checkpoint": str(teacher_checkpoint) if teacher_checkpoint else None, "student": student,
            "init": str(init) if init else None, "steps": steps, "batch_size": batch_size, "lr": lr, "fold": fold}

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    dev = torch.device(device)
    sources = [_source(d, configuration, plans, batch_size, fold) for d in datasets]
    teacher = load_teacher(teacher_model, teacher_fold, teacher_checkpoint).to(dev)
    teacher_modalities = set(teacher.controller.modalities) if teacher.controller is not None else set()
    modalities = sorted({s.modality for s in sources})
    net = ESPMedSAM(num_input_channels=3, num_classes=2, img_size=(256, 256), modality=modalities[0],
                    modalities=modalities, light_encoder=student, patch_prompts=False, modality_queries=False,
                    deep_supervision=False)
    if init:
        report = net.load_pretrained(init)
        print(f"student initialised from {init}: {len(report.loaded)} tensors")
    width_t, width_s = teacher.neck[-1].weight.shape[0], net.neck[-1].weight.shape[0]
    regressor = nn.Conv2d(width_s, width_t, kernel_size=1) if width_t != width_s else nn.Identity()
    net.to(dev).train()
    regressor.to(dev)
    params = [*net.encoder.parameters(), *net.neck.parameters(), *net.controller.parameters(),
              *regressor.parameters()]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=1e-4)
    start, history = 0, []
    if partial.is_file():
        from sam_nnunet.sharing.trust import load_checkpoint

        state = load_checkpoint(partial, map_location=dev)  # weights-only: a resumed file runs no code
        if state["args"] != args:
            changed = sorted(k for k in args if state["args"].get(k) != args[k])
            raise ValueError(f"{partial} was written by a distill run with other arguments ({changed}); run with "
                             f"the same ones to resume it, or remove it to start over")
        net.load_state_dict(state["student"])
        regressor.load_state_dict(state["regressor"])
        optimizer.load_state_dict(state["optimizer"])
        start, history = state["step"], state["history"]
        print(f"resuming {out_path.name} from step {start} of {steps} ({partial})")

    print(f"MMDKD: teacher {teacher_model or teacher_checkpoint} (bags: {sorted(teacher_modalities) or 'none'}), "
          f"student {student} with bags for {modalities}; datasets "
          + ", ".join(f"{s.name} ({s.modality})" for s in sources)
          + ("" if width_t == width_s else f"; 1x1 regressor {width_s} -> {width_t} for the loss"))
    bar = tqdm(range(start, steps), initial=start, total=steps, disable=not progress, desc="distill")
    for step in bar:
        source = sources[step % len(sources)]
        x = source.batch().to(dev)
        x, _ = pad_to_multiple(x, 16)
        x_t = _to_channels(x, teacher.num_input_channels, "teacher")
        x_s = _to_channels(x, 3, "student")
        with_bag = source.modality in teacher_modalities
        net.select_modality(source.modality)
        with torch.no_grad():
            plain_t = teacher.image_embedding(x_t, with_bags=False)
            if with_bag:
                teacher.select_modality(source.modality)
                med_t = teacher.image_embedding(x_t)
        universal = F.mse_loss(regressor(net.image_embedding(x_s, with_bags=False)), plain_t)
        modality = F.mse_loss(regressor(net.image_embedding(x_s)), med_t) if with_bag else torch.zeros((), device=dev)
        loss = universal + modality
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        history.append({"step": step, "dataset": source.name, "universal": universal.item(),
                        "modality": modality.item()})
        bar.set_postfix(universal=f"{universal.item():.4f}", modality=f"{modality.item():.4f}")
        if (step + 1) % save_every == 0 and step + 1 < steps:
            _write_partial(partial, {"args": args, "step": step + 1, "history": history, "student": net.state_dict(),
                                     "regressor": regressor.state_dict(), "optimizer": optimizer.state_dict()})
            log_path.write_text(json.dumps(history))

    meta = {"student": student, "modalities": modalities, "teacher": args["teacher_model"] or args["teacher_checkpoint"],
            "teacher_fold": args["teacher_fold"], "datasets": [s.name for s in sources], "steps": steps,
            "first_loss": history[0]["universal"] + history[0]["modality"] if history else None,
            "last_loss": history[-1]["universal"] + history[-1]["modality"] if history else None}
    tmp = Path(f"{out}.writing")
    torch.save({"model": student_file_state(net), "sam_nnunet_distill": meta}, tmp)
    os.replace(tmp, out_path)
    log_path.write_text(json.dumps(history))
    if partial.is_file():
        partial.unlink()
    print(f"wrote {out_path}: set SAM_NNUNET_CHECKPOINT={out_path} for ESPMedSAMTrainer (light_encoder {student})")
    return out_path


def _write_partial(path: Path, state: dict) -> None:
    """The resume point, written to a temporary name and renamed (a run killed while saving keeps the last one)."""
    tmp = Path(f"{path}.writing")
    torch.save(state, tmp)
    os.replace(tmp, path)

