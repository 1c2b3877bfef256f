import torch
from torch import nn

from sam_nnunet.modeling.weights.checkpoint import freeze_pretrained_encoder
from sam_nnunet.modeling.hsp_sam import HSPSAM
from sam_nnunet.modeling.blocks.lora import LoRALinear, apply_lora, lora_layers, merge_lora


def test_from_linear_shares_base_parameters_and_starts_as_identity_update():
    base = nn.Linear(16, 48)
    x = torch.randn(5, 16)
    expected = base(x)
    lora = LoRALinear.from_linear(base, rank=4)
    assert lora.weight is base.weight and lora.bias is base.bias
    torch.testing.assert_close(lora(x), expected)  # B is zero-initialised


def test_training_changes_lora_factors_and_leaves_frozen_base_weights_unchanged():
    torch.manual_seed(0)
    net = HSPSAM(num_input_channels=1, num_classes=3, img_size=(32, 32), encoder="vit_tiny", lora_rank=4)
    freeze_pretrained_encoder(net)
    before = {n: p.detach().clone() for n, p in net.encoder.named_parameters()}
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):
        opt.zero_grad()
        out = net(torch.randn(2, 1, 32, 32))
        sum(o.square().mean() for o in out).backward()
        opt.step()
    after = dict(net.encoder.named_parameters())
    for name, old in before.items():
        if "lora_" in name:
            assert not torch.equal(old, after[name]), f"LoRA factor {name} did not train"
        else:
            assert torch.equal(old, after[name]), f"frozen base weight {name} changed"
    assert len(lora_layers(net.encoder)) == len(net.encoder.blocks)  # one per block (qkv)


def test_merged_output_equals_unmerged_output():
    torch.manual_seed(0)
    blocks = nn.ModuleList([nn.Module()])
    blocks[0].attn = nn.Module()
    blocks[0].attn.qkv = nn.Linear(32, 96)
    apply_lora(blocks, rank=8, targets=("qkv",))
    layer = blocks[0].attn.qkv
    nn.init.normal_(layer.lora_B)  # a trained, non-zero update
    x = torch.randn(7, 32)
    unmerged = layer(x)
    assert not torch.allclose(unmerged, torch.nn.functional.linear(x, layer.weight, layer.bias))
    assert merge_lora(blocks) == 1
    torch.testing.assert_close(layer(x), unmerged, rtol=1e-5, atol=1e-5)
    layer.unmerge()
    torch.testing.assert_close(layer(x), unmerged, rtol=1e-5, atol=1e-5)


def test_merged_network_predicts_like_unmerged_network():
    torch.manual_seed(1)
    net = HSPSAM(num_input_channels=1, num_classes=3, img_size=(32, 32), encoder="vit_tiny",
                 deep_supervision=False).eval()
    for layer in lora_layers(net):
        nn.init.normal_(layer.lora_B, std=0.05)
    x = torch.randn(1, 1, 32, 32)
    with torch.no_grad():
        ref = net(x)
        merge_lora(net)
        torch.testing.assert_close(net(x), ref, rtol=1e-4, atol=1e-4)
