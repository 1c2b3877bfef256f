"""A trained fold's image encoder as a SAM checkpoint: the project's own pretrained weights.

``sam_nnunet export-encoder -d 27 -c 2d -tr HSPSAMTrainer -p nnUNetPlans_SAMcpu -f 0 -o enc.pth`` writes
the fold's ViT (patch embedding, position embedding, blocks, relative-position tables) and neck under
the keys of an official SAM checkpoint (``image_encoder.blocks.3.attn.qkv.weight`` ...). Any trainer
loads it through ``SAM_NNUNET_CHECKPOINT`` exactly as it loads ``sam_vit_b_01ec64.pth``, so the papers'
setting (a frozen pretrained encoder with LoRA or adapters) can be run without downloading SAM:
pretrain on one task, fine-tune on another.

What goes in, and choices made:

* LoRA is merged: the exported ``qkv`` weight is ``W + (alpha / r) B A``, the encoder the fold actually
  used. (A frozen copy of the *unmerged* weights would throw the adaptation away.)
* Parts that are not SAM's (Self-Prompt-SAM's adapters and depth embedding, HSP-SAM's Q-prompts) are
  left out; the file holds what an official checkpoint holds for the image encoder. The neck is the
  one the network maps SAM's neck to (HSP-SAM: the deepest level's).
* SAM's layout has an RGB patch embedding. A 1-channel fold's filter ``w`` is written as
  ``[w/3, w/3, w/3]``: loading sums RGB onto one channel (``checkpoint.adapt_patch_embed``), which gives
  ``w`` back exactly; an RGB fold's is written as it is. Other channel counts are refused (the mapping
  back would not be exact).
* The position embedding and relative-position tables keep the fold's patch grid; loading resizes them
  to the new network's grid, as it does for SAM's 64x64.
* Prompt encoder and mask decoder are not exported (a new task's classes differ); they are trained.

Nothing is overwritten: the output file must not exist. It is written to a temporary name and renamed.
"""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Dict, Optional, Union

import torch
from torch import nn

from sam_nnunet.modeling.weights.checkpoint import is_trunk_key, official_sam_keys
from sam_nnunet.modeling.interface import SAMNetwork
from sam_nnunet.modeling.blocks.lora import merge_lora

PATCH_EMBED = "image_encoder.patch_embed.proj.weight"


def encoder_state_dict(network: nn.Module) -> Dict[str, torch.Tensor]:
    """``image_encoder.*`` tensors in SAM's key layout from a network with ``encoder`` and ``sam_key_map``.

    The network is not changed (LoRA is merged on a copy).
    """
    if not hasattr(network.encoder, "blocks"):
        raise ValueError(f"{type(network).__name__}'s image encoder is a TinyViT, not a SAM ViT: export-encoder "
                         f"writes SAM's ViT layout only")
    net = copy.deepcopy(network).cpu().float()
    merge_lora(net.encoder)
    state = net.state_dict()
    out: Dict[str, torch.Tensor] = {}
    for key in official_sam_keys(len(net.encoder.blocks)):
        if not key.startswith("image_encoder."):
            continue
        sources = [d for d in net.sam_key_map(key) if d in state]
        if sources:
            out[key] = state[sources[0]].clone()
    absent = [k for k in official_sam_keys(len(net.encoder.blocks)) if is_trunk_key(k) and k not in out]
    if absent:
        raise ValueError(f"{type(network).__name__} has no tensor for {absent[:4]} ({len(absent)} in all): it does "
                         f"not map SAM's image encoder one to one, so it cannot be exported as one")
    weight = out[PATCH_EMBED]
    if weight.shape[1] == 1:
        out[PATCH_EMBED] = weight.repeat(1, 3, 1, 1) / 3
    elif weight.shape[1] != 3:
        raise ValueError(f"the network takes {weight.shape[1]} input channels; SAM's layout has 3 (RGB) and only "
                         f"1- and 3-channel encoders map back exactly")
    return out


def export_encoder(model_folder: Union[str, os.PathLike], fold: Union[int, str], out_file: Union[str, os.PathLike],
                   checkpoint_name: str = "checkpoint_final.pth") -> Path:
    """Write fold ``fold`` of a trained model folder's image encoder to ``out_file`` (SAM key layout)."""
    from sam_nnunet.export.model import load_fold_network

    out = Path(out_file)
    if out.exists():
        raise FileExistsError(f"{out} already exists; not overwriting it")
    network, predictor = load_fold_network(model_folder, fold, checkpoint_name)
    if not isinstance(network, SAMNetwork):
        raise ValueError(f"{predictor.trainer_name} does not train a SAM network (its network is "
                         f"{type(network).__name__}); only SAM trainers' encoders can be exported")
    state = encoder_state_dict(network)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".partial")
    torch.save(state, tmp)
    os.replace(tmp, out)
    return out


def export_encoder_from_results(dataset: str, configuration: str, trainer: str, plans: str, fold: Union[int, str],
                                out_file: Union[str, os.PathLike], checkpoint_name: str = "checkpoint_final.pth",
                                results: Optional[str] = None) -> Path:
    """:func:`export_encoder` for a model in ``$nnUNet_results``, named as for ``nnUNetv2_predict``."""
    from sam_nnunet.export.model import model_folder

    return export_encoder(model_folder(dataset, configuration, trainer, plans, results), fold, out_file,
                          checkpoint_name)
