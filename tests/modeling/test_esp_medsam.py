"""ESP-MedSAM's parts (shared/papers/004): TinyViT against MobileSAM's own class, the modality controller (Eqs. 2-3),
SPPG (Eqs. 4-5), QDMD (Eqs. 6-7), the network, its checkpoint loading and its losses."""
import inspect

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Block

from sam_nnunet.modeling.weights.checkpoint import CheckpointError
from sam_nnunet.modeling.esp_medsam import ESPMedSAM
from sam_nnunet.modeling.blocks.light_encoder import ControlledTinyViTBlock, TinyViTEncoder, mobile_sam_key_map
from sam_nnunet.modeling.blocks.modality_controller import (ControlledSAMBlock, ModalityBag, ModalityController,
                                                     resolve_modality)
from sam_nnunet.modeling.blocks.modality_decoder import QueryDecoupledModalityDecoder
from sam_nnunet.modeling.blocks.patch_prompt import SelfPatchPromptGenerator, patch_targets
from sam_nnunet.modeling.blocks.registry import LIGHT_ENCODERS
from sam_nnunet.training.losses import ESPMedSAMLoss, FocalDiceLoss, FocalLoss
from sam_nnunet.training.lr_schedules import ExponentialLRScheduler
from tests.modeling.gradients import weak_gradients

MICRO = dict(light_encoder="tiny_vit_micro")


def test_tiny_vit_equals_mobile_sam_image_encoder(mobile_sam):
    sam = mobile_sam()
    encoder = TinyViTEncoder(LIGHT_ENCODERS["tiny_vit_5m"])
    own = {k: v for k, v in sam.image_encoder.state_dict().items()}
    mapped = {mobile_sam_key_map(k): v for k, v in own.items() if mobile_sam_key_map(k)}
    result = encoder.load_state_dict(mapped, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    # same parameters as MobileSAM's encoder without its unused classifier and the neck (held by the network)
    theirs = sum(p.numel() for n, p in sam.image_encoder.named_parameters() if mobile_sam_key_map(n))
    assert sum(p.numel() for p in encoder.parameters()) == theirs
    net = ESPMedSAM(num_input_channels=3, num_classes=2, img_size=(1024, 1024), modality="endoscopy",
                    controller=False).eval()
    net.encoder.load_state_dict(mapped)
    net.neck.load_state_dict({k[len("neck."):]: v for k, v in own.items() if k.startswith("neck.")})
    x = torch.randn(1, 3, 1024, 1024)
    with torch.no_grad():
        expected = sam.image_encoder(x)
        got = net.image_embedding(x)
    assert got.shape == expected.shape == (1, 256, 64, 64)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("size", [(256, 224), (128, 128), (96, 160)])
def test_tiny_vit_embedding_is_at_a_sixteenth_of_any_patch(size):
    encoder = TinyViTEncoder(LIGHT_ENCODERS["tiny_vit_5m"], in_chans=1)
    out = encoder(torch.randn(2, 1, *size))
    assert out.shape == (2, 320, size[0] // 16, size[1] // 16)


def _eq2_reference(q, k, v, bias, bag):
    """Eq. 2 in float64 with explicit concatenation and softmax."""
    heads = q.shape[1]
    t = bag.k_tokens.shape[0]
    kt = bag.k_tokens.double().view(t, heads, -1).transpose(0, 1)
    vt = bag.v_tokens.double().view(t, heads, -1).transpose(0, 1)
    K = torch.cat([k.double(), kt.expand(k.shape[0], -1, -1, -1)], 2)
    V = torch.cat([v.double(), vt.expand(v.shape[0], -1, -1, -1)], 2)
    logits = q.double() @ K.transpose(-1, -2) / q.shape[-1] ** 0.5
    logits[..., : k.shape[2]] += bias.double()
    return logits.softmax(-1) @ V


def test_controlled_tiny_vit_block_is_eq2_and_eq3():
    torch.manual_seed(0)
    block = ControlledTinyViTBlock(dim=32, num_heads=2, window_size=4).eval()
    block.attn.attention_biases.data.normal_()
    bag = ModalityBag(32, num_tokens=3)
    torch.nn.init.normal_(bag.up.weight)  # a trained bag: the parallel MLP is not zero
    x = torch.randn(2, 4, 4, 32)  # one window
    with torch.no_grad():
        out = block(x, bag)
        a = block.attn
        n = a.norm(x.reshape(2, 16, 32))
        q, k, v = a.qkv(n).view(2, 16, 2, -1).split([a.key_dim, a.key_dim, a.val_dim], dim=3)
        att = _eq2_reference(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                             a.attention_biases[:, a.attention_bias_idxs], bag)
        e = x.reshape(2, 16, 32) + a.proj(att.float().transpose(1, 2).reshape(2, 16, 32))
        e = block.local_conv(e.transpose(1, 2).reshape(2, 32, 4, 4)).flatten(2).transpose(1, 2)
        expected = e + block.mlp(e) + bag.up(F.gelu(bag.down(e)))  # Eq. 3
    torch.testing.assert_close(out, expected.view(2, 4, 4, 32), atol=1e-5, rtol=1e-5)
    with torch.no_grad():  # no bag: exactly timm's block
        from timm.models.tiny_vit import TinyVitBlock
        torch.testing.assert_close(block(x), TinyVitBlock.forward(block, x))


def test_controlled_sam_block_is_eq2_and_plain_without_bag():
    torch.manual_seed(0)
    kwargs = dict(dim=32, num_heads=2, use_rel_pos=True, window_size=0, input_size=(4, 4))
    block = ControlledSAMBlock(**kwargs).eval()
    block.attn.rel_pos_h.data.normal_()
    block.attn.rel_pos_w.data.normal_()
    plain = Block(**kwargs).eval()
    plain.load_state_dict(block.state_dict())
    x = torch.randn(2, 4, 4, 32)
    bag = ModalityBag(32, num_tokens=5)
    torch.nn.init.normal_(bag.up.weight)  # a trained bag: the parallel MLP is not zero, the tokens not small
    torch.nn.init.normal_(bag.v_tokens)
    with torch.no_grad():
        torch.testing.assert_close(block(x), plain(x))
        out = block(x, bag)
        # Eq. 2 from segment-anything's own attention parts: its qkv, its decomposed relative-position bias over
        # the image pairs (none for the pairs with a token), the tokens concatenated in float64
        from segment_anything.modeling.image_encoder import add_decomposed_rel_pos

        a = plain.attn
        n = plain.norm1(x)
        q, k, v = a.qkv(n).reshape(2, 16, 3, 2, -1).permute(2, 0, 3, 1, 4).unbind(0)  # B x heads x N x d
        bias = add_decomposed_rel_pos(torch.zeros(4, 16, 16), q.reshape(4, 16, -1), a.rel_pos_h, a.rel_pos_w,
                                      (4, 4), (4, 4)).view(2, 2, 16, 16)
        att = _eq2_reference(q, k, v, bias, bag)
        e = x + a.proj(att.float().transpose(1, 2).reshape(2, 4, 4, 32))
        expected = e + plain.mlp(plain.norm2(e)) + bag.up(F.gelu(bag.down(e)))  # Eq. 3: the bag reads E itself
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    assert (out - plain(x)).abs().max() > 0.1  # and the bag matters


def test_controller_switches_by_modality_and_only_the_chosen_bag_learns():
    net = ESPMedSAM(num_input_channels=1, num_classes=3, img_size=(64, 64), modality="MRI",
                    modalities=("MRI", "CT"), **MICRO)
    for bags in net.controller.bags.values():  # trained bags (a fresh one starts near the plain encoder)
        for bag in bags:
            torch.nn.init.normal_(bag.up.weight, std=0.5)
            torch.nn.init.normal_(bag.v_tokens, std=1.0)
    x = torch.randn(2, 1, 64, 64)
    mri = net.image_embedding(x)
    mri.sum().backward()
    grads = {name: p.grad for name, p in net.controller.named_parameters()}
    assert all(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith("bags.MRI."))
    assert all(g is None for n, g in grads.items() if n.startswith("bags.CT."))
    assert not any(p.requires_grad for p in net.controller.bags["CT"].parameters())
    net.select_modality("CT")
    assert net.modality == "CT" and net.controller.active == "CT"
    assert not torch.allclose(net.image_embedding(x), mri, atol=1e-3)
    with pytest.raises(ValueError, match="No bags for modality 'X-ray'"):
        net.controller.select("x-ray")


@pytest.mark.parametrize("names, expected", [({"0": "CT"}, "CT"), ({"0": "cineMRI"}, "MRI"), ({"0": "T2", "1": "ADC"},
                                             "MRI"), ({"0": "US"}, "ultrasound")])
def test_modality_comes_from_channel_names(names, expected):
    assert resolve_modality({"channel_names": names, "labels": {"background": 0, "CT": 1}}) == expected


def test_modality_from_dataset_json_or_plans_and_a_clear_error_otherwise():
    rgb = {"channel_names": {"0": "R", "1": "G", "2": "B"}, "labels": {"background": 0, "polyp": 1}}
    assert resolve_modality({**rgb, "imaging_modality": "Endoscopy"}) == "endoscopy"
    assert resolve_modality({**rgb, "imaging_modality": "endoscopy"}, override="dermoscopy") == "dermoscopy"
    with pytest.raises(ValueError, match=r"Cannot tell the imaging modality.*\['R', 'G', 'B'\].*\"imaging_modality\""):
        resolve_modality(rgb)
    with pytest.raises(ValueError, match="Unknown imaging modality 'PET'"):
        resolve_modality(rgb, override="PET")


def test_patch_targets_are_the_max_pooled_label():
    rng = np.random.default_rng(0)
    seg = np.zeros((2, 1, 70, 50), dtype=np.int64)
    seg[0, 0, 5, 40] = 2
    seg[1, 0, 33:40, 0:3] = 1
    seg[1, 0, 69, 49] = 2
    seg[0, 0, 10, 10] = 7  # e.g. nnU-Net's ignore label: no class
    p = patch_targets(torch.from_numpy(seg), 3, 32).numpy()
    assert p.shape == (2, 2, 3, 2)
    expected = np.zeros_like(p)
    for b in range(2):
        for c in (1, 2):
            for i in range(3):
                for j in range(2):
                    expected[b, c - 1, i, j] = (seg[b, 0, 32 * i:32 * (i + 1), 32 * j:32 * (j + 1)] == c).any()
    np.testing.assert_array_equal(p, expected)
    assert expected.sum() == 3
    volume = torch.from_numpy(rng.integers(0, 3, (1, 1, 2, 40, 40)))
    assert patch_targets(volume, 3, 16).shape == (1, 2, 2, 3, 3)


@pytest.mark.parametrize("layers", [1, 2])
def test_sppg_patch_grid_follows_l(layers):
    sppg = SelfPatchPromptGenerator(dim=64, num_targets=3, num_layers=layers)
    e = torch.randn(2, 64, 16, 8)
    logits = sppg(e)
    assert logits.shape == (2, 3, 16 // 2 ** layers, 8 // 2 ** layers)
    assert sum(isinstance(m, torch.nn.Conv2d) and m.kernel_size == (2, 2) and m.stride == (2, 2)
               for m in sppg.merge) == layers
    assert sppg.dense_prompt(logits, (16, 8)).shape == e.shape
    net = ESPMedSAM(num_input_channels=1, num_classes=4, img_size=(100, 70), modality="MRI", patch_layers=layers,
                    **MICRO)
    masks, patches = net(torch.randn(1, 1, 100, 70))
    patch = 16 * 2 ** layers
    assert masks.shape == (1, 4, 100, 70) and patches.shape == (1, 3, -(-100 // patch), -(-70 // patch))


def test_patch_bce_is_eq5_on_the_network_grid():
    loss = ESPMedSAMLoss(lambda o, t: torch.zeros(()), num_classes=3, patch=32)
    target = torch.zeros(1, 1, 64, 64, dtype=torch.long)
    target[0, 0, 40, 3] = 2
    logits = torch.randn(1, 2, 2, 2)
    p = torch.zeros(1, 2, 2, 2)
    p[0, 1, 1, 0] = 1
    probs = torch.sigmoid(logits)
    expected = -(p * probs.log() + (1 - p) * (1 - probs).log()).mean()
    torch.testing.assert_close(loss([torch.zeros(1, 3, 64, 64), logits], [target]), expected)


def test_focal_loss_matches_its_formula_and_ignores_the_ignore_label():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 5, 5)
    target = torch.randint(0, 3, (2, 1, 5, 5))
    pt = logits.softmax(1).gather(1, target)[:, 0]
    torch.testing.assert_close(FocalLoss()(logits, target), (-(1 - pt) ** 2 * pt.log()).mean())
    ignored = target.clone()
    ignored[0] = 9
    torch.testing.assert_close(FocalLoss(ignore_label=9)(logits, ignored), (-(1 - pt[1]) ** 2 * pt[1].log()).mean())
    loss = FocalDiceLoss(focal_weight=20.0)
    assert loss(logits * 50, target).item() > loss(F.one_hot(target[:, 0], 3).permute(0, 3, 1, 2) * 50.0,
                                                   target).item()


def test_qdmd_runs_the_active_query_set_only():
    dec = QueryDecoupledModalityDecoder(dim=32, num_masks=3, active="CT", modalities=("CT", "MRI"), mlp_dim=64,
                                        num_heads=2)
    e, pe = torch.randn(2, 32, 4, 4), torch.randn(1, 32, 4, 4)
    ct = dec(e, pe)
    assert ct.shape == (2, 3, 16, 16)
    ct.sum().backward()
    assert dec.queries["CT"].weight.grad is not None and dec.queries["MRI"].weight.grad is None
    dec.select("MRI")
    assert not torch.allclose(dec(e, pe), ct)
    shared = QueryDecoupledModalityDecoder(dim=32, num_masks=3, active="CT", decoupled=False, mlp_dim=64, num_heads=2)
    assert list(shared.queries) == ["shared"]


def test_qdmd_is_eqs_6_and_7_with_the_active_query_set():
    """Eq. 6: SAM's two-way transformer with modality n's queries; Eq. 7: per class k, f_MLP^n_k of the transformed
    query (segment-anything's own MLP class, loaded with the k-th weights) dotted with the upscaled embedding."""
    from segment_anything.modeling.mask_decoder import MLP

    torch.manual_seed(0)
    dec = QueryDecoupledModalityDecoder(dim=32, num_masks=3, active="MRI", modalities=("CT", "MRI"), mlp_dim=64,
                                        num_heads=2).eval()
    for p in dec.hypernetworks.parameters():
        torch.nn.init.normal_(p, std=0.3)  # biases too
    e, pe = torch.randn(2, 32, 4, 4), torch.randn(1, 32, 4, 4)
    with torch.no_grad():
        out = dec(e, pe)
        tokens, src = dec.transformer(e, pe, dec.queries["MRI"].weight.unsqueeze(0).expand(2, -1, -1))
        upscaled = dec.output_upscaling(src.transpose(1, 2).reshape(2, 32, 4, 4))
        hyper = dec.hypernetworks["MRI"]
        for k in range(3):
            mlp = MLP(32, 32, 4, 3)
            for i, layer in enumerate(mlp.layers):
                layer.weight.copy_(hyper.weights[i][k].t())
                layer.bias.copy_(hyper.biases[i][k])
            expected = torch.einsum("bc,bchw->bhw", mlp(tokens[:, k]), upscaled)
            torch.testing.assert_close(out[:, k], expected, atol=1e-5, rtol=1e-5)


def test_qdmd_with_one_modality_is_the_shared_decoder():
    """N = 1: one query set is SAM's decoder with a shared set, the same parameters and outputs (which is why
    the trainers refuse Table VI's QDMD rows on a single-modality dataset)."""
    torch.manual_seed(0)
    kwargs = dict(dim=32, num_masks=3, active="MRI", mlp_dim=64, num_heads=2)
    one = QueryDecoupledModalityDecoder(modalities=("MRI",), **kwargs).eval()
    shared = QueryDecoupledModalityDecoder(decoupled=False, **kwargs).eval()
    shared.load_state_dict({k.replace(".MRI.", ".shared."): v for k, v in one.state_dict().items()})
    assert sum(p.numel() for p in one.parameters()) == sum(p.numel() for p in shared.parameters())
    e, pe = torch.randn(2, 32, 4, 4), torch.randn(1, 32, 4, 4)
    with torch.no_grad():
        assert torch.equal(one(e, pe), shared(e, pe))
    two = QueryDecoupledModalityDecoder(modalities=("MRI", "CT"), **kwargs)
    assert sum(p.numel() for p in two.parameters()) > sum(p.numel() for p in one.parameters())


def test_no_label_reaches_inference_and_there_is_no_oracle():
    """The network takes the image only and returns one mask per class: there is no per-image choice among
    modality masks against a ground truth (the paper's evaluation oracle)."""
    assert list(inspect.signature(ESPMedSAM.forward).parameters) == ["self", "x"]
    net = ESPMedSAM(num_input_channels=1, num_classes=4, img_size=(64, 64), modality="MRI",
                    modalities=("MRI", "CT"), deep_supervision=False, **MICRO).eval()
    out = net(torch.randn(1, 1, 64, 64))
    assert out.shape == (1, 4, 64, 64)


def stage_end_biases(net):
    """TinyViT's biases that training cannot move: the last block of a stage adds its MLP's (and its bag's) output
    bias, a per-channel constant, right before the next stage's patch merging, whose batch norm (in training mode)
    removes per-channel constants (timm's TinyViT; the bags follow Eq. 3 there)."""
    if not net.light:
        return []
    dead, k = [], 0
    for i, layer in enumerate(net.encoder.layers):
        if i == 0:  # the MBConv stage: no bags
            continue
        for j in range(len(layer.blocks)):
            if j == len(layer.blocks) - 1 and layer.downsample is not None:
                dead.append(f"encoder.layers.{i}.blocks.{j}.mlp.fc2.bias")
                dead += [f"controller.bags.{m}.{k}.up.bias" for m in net.controller.bags] if net.controller else []
            k += 1
    return dead


def test_every_trainable_parameter_gets_a_gradient_in_every_table_vi_row():
    """Needed for DDP: no trainable parameter may go without a gradient (inactive bags are frozen)."""
    for light in ("tiny_vit_micro", None):
        for sppg in (True, False):
            for qdmd in (True, False):
                net = ESPMedSAM(num_input_channels=1, num_classes=3, img_size=(64, 48), modality="CT",
                                modalities=("CT", "MRI"), encoder="vit_tiny", light_encoder=light,
                                controller=light is not None, patch_prompts=sppg, modality_queries=qdmd)
                if net.controller is not None:  # trained bags: W_up at zero would leave W_down without gradient
                    for p in net.controller.parameters():
                        torch.nn.init.normal_(p, std=0.2)
                if light:  # a trained TinyViT: its MBConv's last batch norm starts at zero (timm), its branch dead
                    for m in net.encoder.modules():
                        if isinstance(m, torch.nn.BatchNorm2d):
                            torch.nn.init.normal_(m.weight, 1.0, 0.1)
                outputs = net(torch.randn(2, 1, 64, 48))
                sum(o.float().square().mean() for o in outputs).backward()
                missing = [n for n, p in net.named_parameters() if p.requires_grad and p.grad is None]
                assert not missing, (light, sppg, qdmd, missing[:4])
                assert weak_gradients(net, exempt=stage_end_biases(net)) == [], (light, sppg, qdmd)  # nor negligible


def test_mmdkd_cuts_parameters_as_table_vi():
    """Table VI: the rows with MMDKD have 29.1 M parameters against 90.6 M without (32 %; row 8: 28.5 M). The
    paper-sized student (TinyViT-21M) lands there; MobileSAM's TinyViT-5M (the default, which MobileSAM's and
    LiteMedSAM's files fit) is about a third of that."""
    kwargs = dict(num_input_channels=3, num_classes=2, img_size=(256, 256), modality="endoscopy")
    count = lambda net: sum(p.numel() for p in net.parameters())  # noqa: E731
    n_baseline = count(ESPMedSAM(**kwargs, light_encoder=None, controller=False, patch_prompts=False,
                                 modality_queries=False))  # row 1: SAM's ViT-B
    assert 89e6 < n_baseline < 92e6
    paper_sized = ESPMedSAM(**kwargs, light_encoder="tiny_vit_21m")  # row 8
    assert 0.27 < count(paper_sized) / n_baseline < 0.37, count(paper_sized)
    image_encoder = sum(p.numel() for part in (paper_sized.encoder, paper_sized.neck) for p in part.parameters())
    assert 20e6 < image_encoder < 22.5e6  # TinyViT-21M without its classifier, with SAM's neck
    student = ESPMedSAM(**kwargs)  # tiny_vit_5m
    assert count(student) < 0.15 * n_baseline
    image_encoder = sum(p.numel() for part in (student.encoder, student.neck) for p in part.parameters())
    assert 5.7e6 < image_encoder < 5.8e6  # MobileSAM's image encoder: 5.78 M, neck included


def test_mobile_sam_checkpoint_loads_into_the_student_and_freezes(tmp_path, mobile_sam):
    sam = mobile_sam()
    path = tmp_path / "mobile_sam.pt"
    torch.save(sam.state_dict(), path)  # MobileSAM's release layout: image_encoder.* prompt_encoder.* mask_decoder.*
    net = ESPMedSAM(num_input_channels=1, num_classes=3, img_size=(128, 128), modality="MRI")
    report = net.load_pretrained(path)
    encoder_keys = [f"encoder.{k}" for k in net.encoder.state_dict()]
    assert set(encoder_keys) <= set(report.loaded)
    assert "neck.0.weight" in report.loaded and "decoder.transformer.layers.0.self_attn.q_proj.weight" in report.loaded
    assert ("encoder.patch_embed.conv1.conv.weight", (32, 3, 3, 3), (32, 1, 3, 3)) in report.resized
    stem = sam.state_dict()["image_encoder.patch_embed.seq.0.c.weight"].sum(1, keepdim=True)
    torch.testing.assert_close(net.encoder.patch_embed.conv1.conv.weight, stem)
    assert any(k.startswith("image_encoder.head.") for k in report.unexpected)
    frozen, trainable = net.freeze_pretrained(report)
    assert frozen == sum(p.numel() for p in net.encoder.parameters())
    assert trainable == sum(p.numel() for p in net.parameters() if p.requires_grad) > 0
    net.train()
    bn = net.encoder.patch_embed.conv1.bn
    assert not bn.training and net.decoder.training
    before = bn.running_mean.clone()
    net(torch.randn(2, 1, 128, 128))
    torch.testing.assert_close(bn.running_mean, before)


def test_student_refuses_vit_partial_and_wrong_size_files(tmp_path, official_sam, mobile_sam):
    net = ESPMedSAM(num_input_channels=1, num_classes=3, img_size=(64, 64), modality="MRI")
    torch.save(official_sam()[1], tmp_path / "sam_vit.pth")
    with pytest.raises(CheckpointError, match="SAM ViT image encoder.*teacher"):
        net.load_pretrained(tmp_path / "sam_vit.pth")
    sd = mobile_sam().state_dict()
    partial = {k: v for k, v in sd.items() if not k.startswith("image_encoder.layers.2.blocks.3.")}
    torch.save(partial, tmp_path / "partial.pt")
    with pytest.raises(CheckpointError, match=r"does not hold this network's whole TinyViT.*layers\.2\.blocks\.3"):
        net.load_pretrained(tmp_path / "partial.pt")
    micro = ESPMedSAM(num_input_channels=1, num_classes=3, img_size=(64, 64), modality="MRI", **MICRO)
    torch.save(sd, tmp_path / "mobile_sam.pt")
    with pytest.raises(CheckpointError, match="cannot be mapped"):
        micro.load_pretrained(tmp_path / "mobile_sam.pt")


def test_teacher_loads_an_official_sam_checkpoint(official_sam, small_encoder, tmp_path):
    torch.save(official_sam()[1], tmp_path / "sam_vit.pth")
    net = ESPMedSAM(num_input_channels=1, num_classes=3, img_size=(64, 64), modality="MRI", light_encoder=None,
                    encoder=small_encoder)
    report = net.load_pretrained(tmp_path / "sam_vit.pth")
    assert "encoder.blocks.0.attn.qkv.weight" in report.loaded and "neck.0.weight" in report.loaded
    frozen, trainable = net.freeze_pretrained(report)
    assert not any(p.requires_grad for n, p in net.encoder.named_parameters() if f"encoder.{n}" in report.loaded)
    assert all(p.requires_grad for p in net.controller.parameters())  # the teacher's PEFT tokens train


def test_exponential_schedule_ends_at_one_percent():
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=1e-4)
    sched = ExponentialLRScheduler(opt, 1e-4, max_steps=10)
    lrs = []
    for epoch in range(11):
        sched.step(epoch)
        lrs.append(opt.param_groups[0]["lr"])
    np.testing.assert_allclose(lrs, [1e-4 * 0.01 ** (e / 10) for e in range(11)])


# ================================================================ the universal path (modality per sample)
CODES = {"MRI": 10.0, "endoscopy": 40.0, "CT": 160.0}


def test_the_modality_channel_survives_nnunets_training_augmentation():
    """The code channel goes through nnU-Net's own training transforms (rotation, scaling, noise, blur, brightness,
    contrast, low resolution, gamma, mirroring) with the image channels, and still decodes to the case's modality."""
    import math

    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    from sam_nnunet.modeling.blocks.modality_channel import decode_modalities, modality_codes

    assert modality_codes(["MRI", "endoscopy", "CT"]) == CODES
    transforms = nnUNetTrainer.get_training_transforms(
        patch_size=(64, 64), rotation_for_DA=(-math.pi, math.pi), deep_supervision_scales=None, mirror_axes=(0, 1),
        do_dummy_2d_data_aug=False)
    torch.manual_seed(0)
    np.random.seed(0)
    for trial in range(120):
        modality = list(CODES)[trial % 3]
        image = torch.cat([torch.randn(3, 80, 80), torch.full((1, 80, 80), CODES[modality])])
        out = transforms(**{"image": image, "segmentation": torch.zeros(1, 80, 80, dtype=torch.int16)})
        assert decode_modalities(out["image"][-1:], CODES) == [modality], trial
    # zero padding (the sliding window's, an image smaller than the patch) is left out
    padded = torch.zeros(1, 64, 64)
    padded[0, :20, :30] = 40.0
    assert decode_modalities(padded, CODES) == ["endoscopy"]
    with pytest.raises(ValueError, match="codes none of the modalities"):
        decode_modalities(torch.randn(1, 64, 64) * 0.1, CODES)  # a dataset without the channel


def universal_net(**kw):
    torch.manual_seed(0)
    net = ESPMedSAM(num_input_channels=4, num_classes=3, img_size=(64, 64), modality="MRI",
                    modality_codes={"MRI": 10.0, "endoscopy": 40.0}, **MICRO, **kw)
    for p in [*net.controller.parameters(), *net.decoder.queries.parameters(),
              *net.decoder.hypernetworks.parameters()]:
        torch.nn.init.normal_(p, std=0.3)  # trained bags and query sets, not their near-plain start
    return net


def with_code(x, *modalities):
    codes = torch.tensor([{"MRI": 10.0, "endoscopy": 40.0}[m] for m in modalities])
    return torch.cat([x, codes.view(-1, 1, 1, 1).expand(-1, 1, *x.shape[-2:])], 1)


def test_each_sample_runs_with_its_own_modalitys_bags_and_query_set():
    net = universal_net().eval()
    assert net.encoder.patch_embed.conv1.conv.weight.shape[1] == 3  # the encoder does not see the modality channel
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        mixed = net(with_code(x, "MRI", "endoscopy"))
        for i, modality in enumerate(["MRI", "endoscopy"]):
            net.select_modality(modality, freeze_others=False)
            alone = net._outputs(x[i:i + 1], 64, 64)
            for out, ref in zip(mixed, alone):
                torch.testing.assert_close(out[i:i + 1], ref, rtol=1e-5, atol=1e-5)
        swapped = net(with_code(x, "endoscopy", "endoscopy"))
    assert (swapped[0][0] - mixed[0][0]).abs().max() > 1e-3  # sample 0 as endoscopy: another output
    torch.testing.assert_close(swapped[0][1], mixed[0][1], rtol=1e-5, atol=1e-5)  # sample 1 was endoscopy already


def test_the_other_modalitys_parameters_get_no_gradient():
    net = universal_net().train()
    assert all(p.requires_grad for p in net.parameters())  # a batch may mix modalities: all of them train
    sum(o.mean() for o in net(with_code(torch.randn(2, 3, 64, 64), "MRI", "MRI"))).backward()
    grads = {n: p.grad for n, p in net.named_parameters()}
    for name, grad in grads.items():
        other = ".endoscopy." in f".{name}."
        mri = ".MRI." in f".{name}."
        if other:
            assert grad is None, name
        elif mri:
            assert grad is not None and grad.abs().sum() > 0, name
    assert any(".endoscopy." in n for n in grads) and any(".MRI." in n for n in grads)


def test_a_universal_network_is_not_exported_to_onnx(tmp_path):
    from sam_nnunet.export.onnx_model import OnnxExportError, export_network

    with pytest.raises(OnnxExportError, match="universal path"):
        export_network(universal_net().eval(), torch.zeros(1, 4, 64, 64), tmp_path / "net.onnx")
    assert not (tmp_path / "net.onnx").exists()
