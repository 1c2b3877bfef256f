"""The SAM networks under torch.compile, which nnU-Net applies by default when it trains on a GPU.

``aot_eager`` traces the network as inductor does (dynamo, fake tensors, autograd graph) without
generating code, so it finds what breaks compilation in seconds; outputs and gradients must match eager.
"""
import pytest
import torch

from sam_nnunet.modeling.hsp_sam import HSPSAM
from sam_nnunet.modeling.self_prompt_sam import SelfPromptSAM

NETWORKS = {
    "HSPSAM 2d": (lambda: HSPSAM(num_input_channels=1, num_classes=3, img_size=(32, 32), encoder="vit_tiny"), (32, 32)),
    "SelfPromptSAM 3d": (lambda: SelfPromptSAM(num_input_channels=1, num_classes=3, img_size=(32, 32), patch_depth=2,
                                               encoder="vit_tiny"), (2, 32, 32)),
}


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_compiled_network_matches_eager_in_training_and_inference(name):
    make, patch = NETWORKS[name]
    torch.manual_seed(0)
    net = make()
    compiled = torch.compile(net, backend="aot_eager")
    x = torch.randn(2, 1, *patch)

    grads = []
    for model in (net, compiled):
        net.zero_grad(set_to_none=True)
        outs = model(x)
        sum(o.float().mean() for o in outs).backward()
        grads.append({n: p.grad.clone() for n, p in net.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        torch.testing.assert_close(grads[1][n], grads[0][n], rtol=1e-3, atol=1e-5, msg=n)

    net.eval()
    net.deep_supervision = False  # nnU-Net's predictor: batch-1 tiles, final output only
    with torch.no_grad():
        torch.testing.assert_close(compiled(x[:1]), net(x[:1]), rtol=1e-4, atol=1e-5)
