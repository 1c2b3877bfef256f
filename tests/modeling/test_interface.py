"""The network interface the trainers use (sam_nnunet.modeling.interface.SAMNetwork), declared and checked."""
import pytest
from torch import nn

from sam_nnunet.modeling.esp_medsam import ESPMedSAM
from sam_nnunet.modeling.hsp_sam import HSPSAM
from sam_nnunet.modeling.interface import MEMBERS, SAMNetwork, missing_members
from sam_nnunet.modeling.pg_sam import PGSAM
from sam_nnunet.modeling.self_prompt_sam import SelfPromptSAM
from sam_nnunet.training.sam_trainer import SAMTrainerBase

TINY = dict(num_input_channels=1, num_classes=3, img_size=(32, 32))
NETWORKS = {
    "HSPSAM": lambda: HSPSAM(**TINY, encoder="vit_tiny"),
    "SelfPromptSAM": lambda: SelfPromptSAM(**TINY, encoder="vit_tiny"),
    "PGSAM": lambda: PGSAM(**TINY, encoder="vit_tiny", text_prior="learned"),
    "ESPMedSAM": lambda: ESPMedSAM(**TINY, light_encoder="tiny_vit_micro", modality="MRI"),
}


def test_the_interface_lists_what_the_trainers_use():
    assert set(MEMBERS) == {"deep_supervision", "deep_supervision_scales", "sam_key_map", "load_pretrained",
                            "freeze_pretrained", "trainable_parts"}


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_every_network_is_a_sam_network(name):
    net = NETWORKS[name]()
    assert isinstance(net, SAMNetwork) and missing_members(net) == []
    parts = net.trainable_parts()
    assert sum(parts.values()) == sum(p.numel() for p in net.parameters() if p.requires_grad) > 0


class NotSAM(nn.Module):
    """A network with only part of the interface, importable by its dotted path as a plans' network class is."""

    def __init__(self, **kwargs):
        super().__init__()
        self.deep_supervision = kwargs["deep_supervision"]

    def sam_key_map(self, key):
        return []


def test_a_network_without_the_interface_is_refused_naming_what_it_lacks():
    class Trainer(SAMTrainerBase):
        network_class = f"{__name__}.NotSAM"

        @classmethod
        def network_kwargs(cls, configuration_manager):
            return {}

    assert not isinstance(NotSAM(deep_supervision=True), SAMNetwork)
    with pytest.raises(TypeError, match=r"lacks \['deep_supervision_scales', 'load_pretrained', 'freeze_pretrained', "
                                        r"'trainable_parts'\] of the SAMNetwork interface"):
        Trainer.build_network_architecture(None, None, 1, 3, True)
