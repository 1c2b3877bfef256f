"""Trainer variants that nnU-Net can load by name: epoch counts and ablation rows.

nnU-Net finds a trainer by the attribute name it is bound to in a module under ``nnunetv2.training.nnUNetTrainer``
(or ``nnUNet_extTrainer``). Each trainer module binds what these return to names written out, so that grep finds
every class nnU-Net can load (a test checks that every name is its class's).
"""
from __future__ import annotations

from typing import Optional, Tuple, Type, TypeVar

import torch

T = TypeVar("T")

EPOCH_VARIANTS = (1, 5, 10, 20, 50, 100, 250)


def epoch_variants(base: Type[T], epochs=EPOCH_VARIANTS) -> Tuple[Type[T], ...]:
    """``base`` with each epoch count of ``epochs`` (``<base>_1epoch``, ``<base>_5epochs``, ...), in that order, for a
    trainer module to bind to names that say the same (nnU-Net finds trainers by attribute name; a test checks that
    every name is its class's)."""
    return tuple(with_num_epochs(base, n) for n in epochs)


def with_network_kwargs(base: Type[T], name: str, doc: str, attributes: Optional[dict] = None,
                        **switches) -> Type[T]:
    """``base`` whose network takes ``switches`` over the base's ``default_network_kwargs``: an ablation row, named
    ``name``. ``attributes`` sets other class attributes of the row (e.g. ``supervised_outputs``)."""
    kwargs = {**base.default_network_kwargs, **switches}
    return type(name, (base,), {"default_network_kwargs": kwargs, "__module__": base.__module__, "__doc__": doc,
                                **(attributes or {})})


def with_num_epochs(base: Type[T], num_epochs: int) -> Type[T]:
    """``base`` with another epoch count, named like nnU-Net's ``nnUNetTrainer_5epochs``."""
    suffix = "1epoch" if num_epochs == 1 else f"{num_epochs}epochs"

    def __init__(self, plans: dict, configuration: str, fold: int, dataset_json: dict,
                 device: torch.device = torch.device("cuda")):
        base.__init__(self, plans, configuration, fold, dataset_json, device)
        self.num_epochs = num_epochs

    return type(f"{base.__name__}_{suffix}", (base,),
                {"__init__": __init__, "__module__": base.__module__,
                 "__doc__": f"{base.__name__} trained for {num_epochs} epoch(s)."})
