"""A trainer's network, named and configured by the plans, so that ``nnUNetv2_predict`` rebuilds the same one.

:class:`NetworkFromPlans` is the part of :class:`~sam_nnunet.training.sam_trainer.SAMTrainerBase` that answers
nnU-Net's ``build_network_architecture``. A concrete trainer names its network class (``network_class``) and default
arguments (``default_network_kwargs``). On construction the trainer writes the class, its own name and the resolved
arguments (encoder, patch size, number of prompts, ablation switches) into the configuration's ``architecture``
entry of its own copy of the plans (the caller's dict is never changed). nnU-Net saves those plans next to the
checkpoints. Recorded arguments are used only by the trainer that recorded them (plans from an ``HSPSAMTrainer``
folder do not turn ``_noQA`` into the full model); otherwise the defaults come from the trainer and a ``"sam_nnunet"``
block in a plans configuration (written by ``sam_nnunet plans``) overrides them, e.g. ``{"encoder": "vit_tiny"}``.
What nnU-Net decides (channels, outputs, deep supervision, the patch size) is not the plans' to override.

The network must be a :class:`~sam_nnunet.modeling.interface.SAMNetwork`: the trainer uses nothing else of it.
"""
from __future__ import annotations

import inspect
from pydoc import locate
from typing import Dict, List, Type

from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager, PlansManager
from torch import nn

from sam_nnunet.modeling.common import bare_network
from sam_nnunet.modeling.interface import missing_members

PLANS_OVERRIDE_KEY = "sam_nnunet"
#: key of a configuration's "architecture" entry naming the trainer that recorded its arguments
RECORDED_BY_KEY = "sam_nnunet_trainer"
#: network arguments that nnU-Net (or the patch size) decides, never a plans block
NNUNET_DECIDES = {"self", "num_input_channels", "num_classes", "deep_supervision", "img_size", "patch_depth"}


class NetworkFromPlans:
    """Mixin of the SAM trainers: the network class and arguments, recorded in and rebuilt from the plans."""

    #: dotted path of the network class built from the plans
    network_class: str = ""
    #: network arguments unless the plans' "sam_nnunet" block says otherwise
    default_network_kwargs: Dict = {}

    def _plans_configurations(self) -> List[dict]:
        """This configuration's entry in the plans that nnU-Net saves with the model, and the dict its
        configuration manager reads (the same entry, or a copy of it resolved through ``inherits_from``)."""
        return [self.plans_manager.plans["configurations"][self.configuration_name],
                self.configuration_manager.configuration]

    def _num_targets(self) -> int:
        lm = self.label_manager
        return len(lm.foreground_regions) if lm.has_regions else len(lm.foreground_labels)

    def _record_architecture(self) -> None:
        """Write this trainer's network into the (in-memory) plans that nnU-Net saves with the model."""
        kwargs = self.complete_network_kwargs(self.network_kwargs(self.configuration_manager))
        arch = {"network_class_name": self.network_class, "arch_kwargs": kwargs, "_kw_requires_import": [],
                RECORDED_BY_KEY: type(self).__name__}
        for conf in self._plans_configurations():
            conf["architecture"] = arch

    def complete_network_kwargs(self, kwargs: dict) -> dict:
        """Arguments that need the dataset (not only the plans), added before they are recorded: the number of
        prompts (one per segmentation target) for networks that take it."""
        if "num_prompts" in inspect.signature(self._network_cls().__init__).parameters:
            kwargs.setdefault("num_prompts", self._num_targets())
        return kwargs

    @classmethod
    def network_kwargs(cls, configuration_manager: ConfigurationManager) -> dict:
        """Network arguments for a configuration: the recorded ones if this trainer recorded them (plans
        saved with a model), else trainer defaults + the configuration's "sam_nnunet" block + its patch size.

        Plans written before the trainer name was recorded (no ``RECORDED_BY_KEY``) are model folders'
        plans: their arguments are used when the network class matches, as they were then."""
        conf = configuration_manager.configuration
        arch = conf.get("architecture", {})
        if (arch.get("network_class_name") == cls.network_class
                and arch.get(RECORDED_BY_KEY, cls.__name__) == cls.__name__):
            return dict(arch["arch_kwargs"])
        network_cls = cls._network_cls()
        signature = set(inspect.signature(network_cls.__init__).parameters)
        accepted = signature - NNUNET_DECIDES
        overrides = conf.get(PLANS_OVERRIDE_KEY, {})
        unknown = sorted(set(overrides) - accepted)
        if unknown:
            raise ValueError(f"plans '{PLANS_OVERRIDE_KEY}' block has arguments {unknown} that "
                             f"{network_cls.__name__} does not take from plans; it takes {sorted(accepted)}")
        kwargs = {**cls.default_network_kwargs, **overrides}
        patch = [int(s) for s in configuration_manager.patch_size]
        kwargs["img_size"] = patch[-2:]
        if "patch_depth" in signature:
            kwargs["patch_depth"] = patch[0] if len(patch) == 3 else 1
        return kwargs

    @classmethod
    def _network_cls(cls) -> Type[nn.Module]:
        network_cls = locate(cls.network_class)
        if network_cls is None:
            raise ImportError(f"{cls.__name__}: cannot import network class {cls.network_class!r}")
        return network_cls

    @classmethod
    def build_network_architecture(cls, plans_manager: PlansManager, configuration_manager: ConfigurationManager,
                                   num_input_channels: int, num_output_channels: int,
                                   enable_deep_supervision: bool = True) -> nn.Module:
        """Same signature as nnU-Net >= 2.6 (also called by ``nnUNetv2_predict``)."""
        network = cls._network_cls()(num_input_channels=num_input_channels, num_classes=num_output_channels,
                                     deep_supervision=enable_deep_supervision,
                                     **cls.network_kwargs(configuration_manager))
        missing = missing_members(network)
        if missing:
            raise TypeError(f"{cls.__name__}: network {cls.network_class} lacks {missing} of the SAMNetwork interface "
                            f"(sam_nnunet.modeling.interface) that the trainers use")
        return network

    def _network(self) -> nn.Module:
        """The network without DDP / torch.compile wrappers (also before nnU-Net has wrapped it)."""
        return bare_network(self.network)
