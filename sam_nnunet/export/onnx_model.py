"""Trained folds as ONNX models, for nnU-Net's sliding window on ONNX Runtime (:mod:`sam_nnunet.export.onnx_predictor`).

``sam_nnunet export-onnx -d 27 -c 2d -tr HSPSAMTrainer -p nnUNetPlans_SAMcpu -f 0 1 2 3 4 -o DIR`` writes

    DIR/DatasetXXX_Name/TRAINER__PLANS__CONFIG/
        plans.json, dataset.json      (as in the trained model folder: preprocessing and export read them)
        onnx_export.json              (trainer, configuration, versions, opset, input/output, per fold:
                                       mirroring axes, epoch, torch-vs-ONNX Runtime check)
        fold_X/model.onnx             (one network per fold)

Each ``model.onnx`` maps ``image`` (``batch x C x *patch``, float32, dynamic batch) to ``logits``
(``batch x K x *patch``): the network nnU-Net's predictor calls on every tile, deep supervision off, so
the final output only. The spatial size is the plans' patch, the only size nnU-Net's sliding window
feeds it. The same metadata are also in each file's ``metadata_props``, so a lone file says what it is.

Choices:

* Exporter: torch's TorchScript-based exporter (``dynamo=False``), opset 17, or higher where a module asks
  for it (``min_onnx_opset``: PG-SAM's deformable convolution is ONNX ``DeformConv``, opset 19; torchvision
  registers no exporter for it, so :func:`_register_deform_conv` does). The dynamo exporter of the
  tested torch (2.14) fails on the ViT blocks (its decomposition of ``scaled_dot_product_attention``
  with an attention bias views a non-contiguous tensor); the TorchScript exporter handles every trainer
  of the project and takes about a second per fold.
* Every fold is checked after export: ONNX Runtime and torch run the same input at batch 1 (the traced
  batch) and batch 2; the largest absolute logit difference and the argmax agreement are written to
  ``onnx_export.json``. A difference above ``1e-3`` of the logits' range is an error: the trace has
  fixed something that should not be fixed (a batch size, a shape-dependent branch). Self-Prompt-SAM
  prompts itself from an argmax, where a last-bit difference can move a prompt: it must agree on the
  argmax of 99 % of the pixels instead.
* Self-Prompt-SAM's prompt step (argmax, boxes, distance-transform point, SAM's prompt encoder) is part
  of the graph: its exact torch distance transform is used while tracing, never SciPy's (a trace would
  freeze SciPy's output as a constant), see :mod:`sam_nnunet.modeling.blocks.auto_prompts`.
* What the exporter cannot express is reported with the trainer, the fold and the operator, e.g.
  ``aten::cummax``, rather than torch's raw traceback.
* Only finished folds (``checkpoint_final.pth`` unless ``--checkpoint`` says otherwise) are exported,
  and nothing existing is overwritten: the destination model folder must not exist. It is written
  under a temporary name and renamed when every fold has passed its check.
"""
from __future__ import annotations

import datetime
import functools
import json
import os
import re
import warnings
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import numpy as np
import torch
from torch import nn

from sam_nnunet.export.model import Fold, load_fold_network, model_folder, staged_model_folder
from sam_nnunet.sharing.trust import load_checkpoint

OPSET = 17
INPUT_NAME, OUTPUT_NAME = "image", "logits"
METADATA_FILE = "onnx_export.json"
MODEL_FILE = "model.onnx"
#: largest |ONNX - torch| logit difference accepted at export, relative to the range of torch's logits
CHECK_TOLERANCE = 1e-3


class OnnxExportError(ValueError):
    """A network that cannot be exported to ONNX, or whose export does not reproduce torch."""


def require(module: str):
    """Import ``onnx`` / ``onnxruntime``, or say which extra installs them."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise ImportError(f"the ONNX commands need the package {module!r}: pip install 'sam_nnunet[onnx]' "
                          f"(onnx and onnxruntime)") from e


def _operator(message: str) -> str:
    """The operator an exporter error names ('aten::cummax', 'adaptive_avg_pool2d', ...), else ''."""
    for pattern in (r"operator '([\w:.]+)'", r"export of operator ([\w:.]+)", r"(aten::[\w.]+)"):
        found = re.search(pattern, message)
        if found:
            return found.group(1)
    return ""


def required_opset(network: nn.Module) -> int:
    """The opset ``network`` is exported at: :data:`OPSET`, or the highest ``min_onnx_opset`` of its modules."""
    return max([OPSET] + [getattr(m, "min_onnx_opset", OPSET) for m in network.modules()])


@functools.lru_cache(maxsize=None)
def _register_deform_conv() -> None:
    """Export ``torchvision::deform_conv2d`` as ONNX ``DeformConv`` (opset 19); torchvision registers none."""
    from torch.onnx import symbolic_helper

    @symbolic_helper.parse_args("v", "v", "v", "v", "v", "i", "i", "i", "i", "i", "i", "i", "i", "b")
    def deform_conv2d(g, input, weight, offset, mask, bias, stride_h, stride_w, pad_h, pad_w, dil_h, dil_w,
                      groups, offset_groups, use_mask):
        inputs = [input, weight, offset, bias] + ([mask] if use_mask else [])
        return g.op("DeformConv", *inputs, strides_i=[stride_h, stride_w], pads_i=[pad_h, pad_w, pad_h, pad_w],
                    dilations_i=[dil_h, dil_w], group_i=groups, offset_group_i=offset_groups)

    torch.onnx.register_custom_op_symbolic("torchvision::deform_conv2d", deform_conv2d, 19)


def export_network(network: nn.Module, example: torch.Tensor, path: Union[str, os.PathLike],
                   metadata: Optional[Dict[str, str]] = None, opset: Optional[int] = None) -> None:
    """Trace ``network`` (eval mode, CPU) on ``example`` (1 x C x *patch) and write ``path`` with a dynamic batch,
    at ``opset`` (default: :func:`required_opset`).

    Raises :class:`OnnxExportError` naming the operator the exporter cannot handle.
    """
    if getattr(network, "modality_codes", None):
        raise OnnxExportError(f"{type(network).__name__} on the universal path reads each sample's modality channel "
                              f"and routes the batch by it, which a traced graph cannot hold: predict it with "
                              f"nnUNetv2_predict (or sam_nnunet predict), not ONNX")
    opset = opset or required_opset(network)
    if opset >= 19:
        _register_deform_conv()
    axes = {0: "batch"}
    try:
        with warnings.catch_warnings():
            # the TorchScript exporter is deprecated in favour of dynamo (see the module docstring), and the
            # tracer warns about every size it reads: the spatial sizes are fixed by design (the patch)
            warnings.simplefilter("ignore", category=DeprecationWarning)
            warnings.simplefilter("ignore", category=torch.jit.TracerWarning)
            warnings.filterwarnings("ignore", message=".*(instance_norm|TorchScript|dynamo).*")
            with torch.no_grad():
                torch.onnx.export(network, (example,), str(path), dynamo=False, opset_version=opset,
                                  input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                  dynamic_axes={INPUT_NAME: axes, OUTPUT_NAME: axes}, do_constant_folding=True)
    except Exception as e:  # the exporter raises several types (UnsupportedOperatorError, SymbolicValueError, ...)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        op = _operator(str(e))
        raise OnnxExportError(f"{type(network).__name__} cannot be exported to ONNX (opset {opset})"
                              + (f": operator {op} is not supported" if op else "") + f". Exporter: {first}") from e
    if metadata:
        onnx = require("onnx")
        model = onnx.load(str(path))
        for key, value in metadata.items():
            model.metadata_props.add(key=key, value=str(value))
        onnx.save(model, str(path))


def has_discrete_prompts(network: nn.Module) -> bool:
    """Whether the network prompts itself from an argmax (Self-Prompt-SAM with its SAM decoder)."""
    return bool(getattr(network, "use_sam_decoder", False))


def check_export(network: nn.Module, path: Union[str, os.PathLike], example: torch.Tensor) -> Dict[str, float]:
    """Run torch and ONNX Runtime on ``example`` at batch 1 and 2 (the traced batch is 1).

    Returns the largest absolute logit difference and the fraction of pixels whose argmax agrees.
    Raises :class:`OnnxExportError` when the outputs differ in shape, are not finite, or differ by more than
    CHECK_TOLERANCE of torch's logit range. For a network that prompts itself from an argmax
    (Self-Prompt-SAM) a rounding difference can flip an auxiliary pixel and so move a prompt: there the
    argmax must agree on 99 % of the pixels instead (exactness of the prompt step is tested separately).
    """
    ort = require("onnxruntime")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst, agree = 0.0, 1.0
    generator = torch.Generator().manual_seed(1)
    for batch in (example, torch.cat([example, torch.randn(example.shape, generator=generator)])):
        with torch.no_grad():
            ref = network(batch).float().numpy()
        out = session.run([OUTPUT_NAME], {INPUT_NAME: batch.numpy()})[0]
        if out.shape != ref.shape:
            raise OnnxExportError(f"the ONNX model gives logits of shape {out.shape} where torch gives {ref.shape} "
                                  f"(input {tuple(batch.shape)})")
        if not np.isfinite(out).all():
            raise OnnxExportError("the ONNX model gives non-finite logits where torch's are finite")
        diff = float(np.abs(out - ref).max())
        spread = float(ref.max() - ref.min()) or 1.0
        same = float((out.argmax(1) == ref.argmax(1)).mean())
        ok = same >= 0.99 if has_discrete_prompts(network) else diff <= CHECK_TOLERANCE * spread
        if not ok:
            raise OnnxExportError(f"the ONNX model's logits differ from torch's by up to {diff:.3g} (logit range "
                                  f"{spread:.3g}; argmax agrees on {same:.2%} of the pixels) at batch "
                                  f"{batch.shape[0]}: the trace does not reproduce the network")
        worst, agree = max(worst, diff), min(agree, same)
    return {"max_abs_logit_difference": worst, "argmax_agreement": agree}


def _versions() -> Dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for package in ("sam_nnunet", "nnunetv2", "torch", "onnx", "onnxruntime"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "not installed"
    return out


def export_onnx(model_dir: Union[str, os.PathLike], out_root: Union[str, os.PathLike], folds: Sequence[Fold],
                checkpoint_name: str = "checkpoint_final.pth", verbose: bool = True) -> Path:
    """Export ``folds`` of ``model_dir`` (``.../DatasetXXX/TRAINER__PLANS__CONFIG``) to ONNX under ``out_root``.

    Returns the new folder ``out_root/DatasetXXX/TRAINER__PLANS__CONFIG``.
    """
    from nnunetv2.utilities.label_handling.label_handling import determine_num_input_channels

    for module in ("onnx", "onnxruntime"):
        require(module)
    src, folds = Path(model_dir), list(folds)
    with staged_model_folder(src, out_root, folds, checkpoint_name) as tmp:
        network, predictor = load_fold_network(src, folds[0], checkpoint_name)  # built once; each fold's weights below
        patch = [int(s) for s in predictor.configuration_manager.patch_size]
        channels = determine_num_input_channels(predictor.plans_manager, predictor.configuration_manager,
                                                predictor.dataset_json)
        mirroring = predictor.allowed_mirroring_axes
        meta = {"format": "sam_nnunet onnx export 1", "trainer": predictor.trainer_name,
                "plans": predictor.plans_manager.plans_name, "configuration": src.name.split("__")[-1],
                "dataset": src.parent.name, "opset": required_opset(network), "input": INPUT_NAME, "output": OUTPUT_NAME,
                "input_shape": ["batch", channels, *patch],
                "output_channels": predictor.label_manager.num_segmentation_heads,
                "inference_allowed_mirroring_axes": list(mirroring) if mirroring is not None else None,
                "versions": _versions()}
        props = {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}  # the files' metadata_props
        meta.update(created=datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"), folds={})
        example = torch.randn(1, channels, *patch, generator=torch.Generator().manual_seed(0))
        for fold in folds:
            checkpoint = load_checkpoint(src / f"fold_{fold}" / checkpoint_name)
            network.load_state_dict(checkpoint["network_weights"])
            if verbose:
                print(f"exporting fold {fold} of {predictor.trainer_name} ({type(network).__name__}, "
                      f"patch {patch}) ...", flush=True)
            path = tmp / f"fold_{fold}" / MODEL_FILE
            path.parent.mkdir()
            try:
                export_network(network, example, path, metadata=dict(props, fold=str(fold)))
                check = check_export(network, path, example)
            except OnnxExportError as e:
                raise OnnxExportError(f"{predictor.trainer_name} fold {fold}: {e}") from e
            meta["folds"][str(fold)] = {"file": f"fold_{fold}/{MODEL_FILE}", "epoch": checkpoint.get("current_epoch"),
                                        "check_torch_vs_onnxruntime": check}
            if verbose:
                print(f"  fold {fold}: {path.stat().st_size / 2 ** 20:.1f} MiB, ONNX Runtime matches torch on a "
                      f"random tile (max |logit difference| {check['max_abs_logit_difference']:.2g}, argmax "
                      f"agreement {check['argmax_agreement']:.2%})", flush=True)
        (tmp / METADATA_FILE).write_text(json.dumps(meta, indent=2) + "\n")
    return Path(out_root) / src.parent.name / src.name


def read_export(folder: Union[str, os.PathLike]) -> Dict:
    """``onnx_export.json`` of an exported folder, with a clear error for anything else."""
    path = Path(folder) / METADATA_FILE
    if not path.is_file():
        hint = (" It looks like a torch model folder: predict it with nnUNetv2_predict, or export it with "
                "sam_nnunet export-onnx first.") if any(Path(folder).glob("fold_*/checkpoint_*.pth")) else ""
        raise FileNotFoundError(f"{folder} is not an ONNX export of sam_nnunet: {METADATA_FILE} is missing.{hint}")
    return json.loads(path.read_text())


def export_onnx_from_results(dataset: str, configuration: str, trainer: str, plans: str, folds: Sequence[Fold],
                             out_root: Union[str, os.PathLike], checkpoint_name: str = "checkpoint_final.pth",
                             results: Optional[str] = None) -> Path:
    """:func:`export_onnx` for a model in ``$nnUNet_results``, named as for ``nnUNetv2_predict``."""
    return export_onnx(model_folder(dataset, configuration, trainer, plans, results), out_root, folds,
                       checkpoint_name)
