"""What a trainer asks of its network: :class:`SAMNetwork`, the interface every network of the project declares.

:class:`~sam_nnunet.training.sam_trainer.SAMTrainerBase` builds the network named in the plans and then talks to it
only through these members, so a new method's network is ready for the trainers (pretrained loading and freezing,
deep supervision, ``export-encoder``) once it has them. ``build_network_architecture`` checks them and names what is
missing.
"""
from __future__ import annotations

from typing import Dict, List, Protocol, Tuple, runtime_checkable

from sam_nnunet.modeling.weights.checkpoint import LoadReport


@runtime_checkable
class SAMNetwork(Protocol):
    #: True: ``forward`` returns every deep-supervision output (prediction first); False: the prediction alone
    deep_supervision: bool

    def deep_supervision_scales(self, ndim: int) -> List[List[float]]:
        """nnU-Net's target scale of each output (per spatial axis, ``ndim`` axes), the prediction first."""

    def sam_key_map(self, key: str) -> List[str]:
        """Where a tensor of a SAM-layout checkpoint goes in this network (empty: not used)."""

    def load_pretrained(self, path: str) -> LoadReport:
        """Load a pretrained file into this network; the report lists every tensor as loaded, resized or unused."""

    def freeze_pretrained(self, report: LoadReport) -> Tuple[int, int]:
        """Freeze what the method's paper freezes of what ``report`` says was loaded; (frozen, trainable) counts."""

    def trainable_parts(self) -> Dict[str, int]:
        """Trainable parameter count per part of the method (what the papers' parameter columns count)."""


#: the members of :class:`SAMNetwork`, read off the class: its annotated attributes and its methods
MEMBERS = (*SAMNetwork.__annotations__,
           *(name for name, value in vars(SAMNetwork).items() if callable(value) and not name.startswith("_")))


def missing_members(network: object) -> List[str]:
    """The members of :class:`SAMNetwork` that ``network`` lacks (empty: it is one)."""
    return [name for name in MEMBERS if not hasattr(network, name)]
