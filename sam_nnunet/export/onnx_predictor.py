"""nnU-Net's prediction with ONNX Runtime in place of the torch network.

``sam_nnunet predict-onnx -i IN -o OUT -m DIR/DatasetXXX/TRAINER__PLANS__CONFIG [-f 0 1 ...]`` takes the
folder ``sam_nnunet export-onnx`` wrote and does what ``nnUNetv2_predict`` does with the same options:
nnU-Net's own preprocessing, sliding window (Gaussian weighting, tile step, mirroring over the axes the
trainer allowed, fold ensembling) and export (resampling back, the input's geometry, file names), with
the same progress output. Only the network call differs.

How: :class:`OnnxPredictor` is an ``nnUNetPredictor`` whose ``network`` is :class:`OnnxNetwork`, a
module that runs an ONNX Runtime session per fold. nnU-Net ensembles folds by loading each fold's
parameters into the network before its sliding window; here each fold's "parameters" name its session,
so nnU-Net's loop is used as it is. Tiles reach ONNX Runtime as float32 on the CPU; its
``CPUExecutionProvider`` runs them with ``intra_op_num_threads`` threads (default: ONNX Runtime's, one
per physical core).

Not supported: cascades (``-prev_stage_predictions``; no trainer of the project is a cascade stage).
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Dict, Optional, Sequence, Union

import torch
from torch import nn

from sam_nnunet.modeling.common import bare_network
from sam_nnunet.export.onnx_model import INPUT_NAME, OUTPUT_NAME, read_export, require

FOLD_KEY = "onnx_fold"


class OnnxNetwork(nn.Module):
    """Stands in for the torch network inside nnU-Net's predictor.

    ``forward``: B x C x *patch -> B x K x *patch logits from the session of the active fold;
    ``load_state_dict({"onnx_fold": f})`` makes fold ``f`` active (nnU-Net's fold loop calls it).
    """

    def __init__(self, sessions: Dict[str, "object"]) -> None:
        super().__init__()
        if not sessions:
            raise ValueError("no ONNX Runtime session given")
        self.sessions = sessions
        self.fold = next(iter(sessions))

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        fold = state_dict.get(FOLD_KEY) if isinstance(state_dict, dict) else None
        if fold not in self.sessions:
            raise KeyError(f"OnnxNetwork takes {{'{FOLD_KEY}': fold}} with a fold in {sorted(self.sessions)}")
        self.fold = fold
        return nn.modules.module._IncompatibleKeys([], [])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.sessions[self.fold].run([OUTPUT_NAME], {INPUT_NAME: x.detach().to("cpu", torch.float32).numpy()})[0]
        return torch.from_numpy(out).to(x.device)


def make_predictor(folder: Union[str, os.PathLike], folds: Optional[Sequence[Union[int, str]]] = None, *,
                   tile_step_size: float = 0.5, use_mirroring: bool = True, threads: Optional[int] = None,
                   verbose: bool = False, allow_tqdm: bool = True):
    """An ``nnUNetPredictor`` on the ONNX export in ``folder`` (``.../TRAINER__PLANS__CONFIG``), CPU only.

    ``folds``: the exported folds to ensemble (default: all of them). ``threads``: ONNX Runtime's
    intra-op threads (default: its own choice).
    """
    from batchgenerators.utilities.file_and_folder_operations import load_json
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    ort = require("onnxruntime")
    folder = Path(folder)
    meta = read_export(folder)
    exported = list(meta["folds"])
    folds = [str(f) for f in folds] if folds else exported
    missing = [f for f in folds if f not in meta["folds"]]
    if missing:
        raise FileNotFoundError(f"folds {missing} were not exported to {folder} (exported: {exported}); "
                                f"export them with sam_nnunet export-onnx or choose others with -f")
    plans_manager = PlansManager(load_json(str(folder / "plans.json")))
    dataset_json = load_json(str(folder / "dataset.json"))
    configuration_manager = plans_manager.get_configuration(meta["configuration"])

    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = threads
    sessions = {}
    for f in folds:
        path = folder / meta["folds"][f]["file"]
        if not path.is_file():
            raise FileNotFoundError(f"{path} is missing: the export in {folder} is incomplete")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        expected = [int(s) for s in configuration_manager.patch_size]
        got = session.get_inputs()[0].shape[2:]
        if list(got) != expected:
            raise ValueError(f"{path} takes tiles of {got} but the plans' patch is {expected}: the file does not "
                             f"belong to these plans")
        sessions[f] = session

    predictor = nnUNetPredictor(tile_step_size=tile_step_size, use_gaussian=True, use_mirroring=use_mirroring,
                                perform_everything_on_device=False, device=torch.device("cpu"), verbose=verbose,
                                verbose_preprocessing=verbose, allow_tqdm=allow_tqdm)
    mirroring = meta.get("inference_allowed_mirroring_axes")
    predictor.manual_initialization(OnnxNetwork(sessions), plans_manager, configuration_manager,
                                    [{FOLD_KEY: f} for f in folds], dataset_json, meta["trainer"],
                                    tuple(mirroring) if mirroring is not None else None)
    predictor.network = bare_network(predictor.network)  # never torch.compile a session
    return predictor


def predict_onnx(input_folder: str, output_folder: str, model: Union[str, os.PathLike],
                 folds: Optional[Sequence[Union[int, str]]] = None, *, tile_step_size: float = 0.5,
                 use_mirroring: bool = True, save_probabilities: bool = False, overwrite: bool = True,
                 npp: int = 3, nps: int = 3, threads: Optional[int] = None, verbose: bool = False,
                 allow_tqdm: bool = True) -> None:
    """``nnUNetv2_predict -i input_folder -o output_folder`` on an ONNX export (see the module docstring)."""
    predictor = make_predictor(model, folds, tile_step_size=tile_step_size, use_mirroring=use_mirroring,
                               threads=threads, verbose=verbose, allow_tqdm=allow_tqdm)
    os.makedirs(output_folder, exist_ok=True)
    if npp == 0 and nps == 0:
        predictor.predict_from_files_sequential(input_folder, output_folder, save_probabilities=save_probabilities,
                                                overwrite=overwrite)
    else:
        predictor.predict_from_files(input_folder, output_folder, save_probabilities=save_probabilities,
                                     overwrite=overwrite, num_processes_preprocessing=max(npp, 1),
                                     num_processes_segmentation_export=max(nps, 1))
