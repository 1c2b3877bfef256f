"""Box, distance-transform point and mask prompts from auxiliary masks."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy.ndimage import distance_transform_edt

from sam_nnunet.modeling.blocks.auto_prompts import (_farthest_scipy, _farthest_torch, _prefix_max, farthest_from_boundary,
                                              prompts_from_masks, squared_edt_torch)


def blobs(n=12, size=(40, 33), seed=0):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[: size[0], : size[1]]
    out = np.zeros((n, *size), bool)
    for i in range(n):
        for _ in range(rng.integers(1, 4)):
            cy, cx, r = rng.integers(0, size[0]), rng.integers(0, size[1]), rng.integers(2, 12)
            out[i] |= (yy - cy) ** 2 + (xx - cx) ** 2 <= r ** 2
    out[-1] = 0  # one empty mask
    return torch.from_numpy(out)


def test_edt_point_lies_inside_the_mask_and_maximises_the_distance():
    masks = blobs()
    pts = farthest_from_boundary(masks)
    for m, (y, x) in zip(masks.numpy(), pts.tolist()):
        if not m.any():
            assert (y, x) == (0, 0)
            continue
        assert m[y, x]
        dist = distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1]
        assert dist[y, x] == dist.max()


def test_torch_edt_equals_scipy():
    masks = blobs(seed=1)
    ref = np.stack([distance_transform_edt(np.pad(m, 1))[1:-1, 1:-1] ** 2 for m in masks.numpy()])
    np.testing.assert_allclose(squared_edt_torch(masks, chunk_elements=5000).numpy(), ref, rtol=0, atol=1e-4)
    nonempty = masks.flatten(1).any(1)
    assert torch.equal(_farthest_torch(masks)[nonempty], _farthest_scipy(masks)[nonempty])


def test_ring_point_is_on_the_ring_not_in_its_hole():
    """Myocardium-like ring: the box centre is in the hole, the EDT point is on the ring."""
    yy, xx = np.mgrid[:48, :48]
    r = np.hypot(yy - 24, xx - 24)
    ring = torch.from_numpy((r >= 8) & (r <= 14))
    y, x = farthest_from_boundary(ring[None])[0].tolist()
    assert ring[y, x] and 10 <= np.hypot(y - 24, x - 24) <= 12
    assert not ring[24, 24]


def _aux(labels: torch.Tensor, K: int) -> torch.Tensor:
    """Logits whose argmax is ``labels`` (N x H x W)."""
    return F.one_hot(labels, K).permute(0, 3, 1, 2).float() * 5


def test_boxes_points_masks_and_the_empty_class():
    labels = torch.zeros(2, 32, 32, dtype=torch.long)
    labels[0, 4:10, 6:20] = 1  # rows 4..9, cols 6..19
    labels[0, 20:30, 20:30] = 2
    labels[1, 0:32, 0:16] = 1  # touches the border
    p = prompts_from_masks(_aux(labels, 4), mask_size=(8, 8))
    assert p.present.tolist() == [[True, True, True, False], [True, True, False, False]]
    assert p.boxes[0, 1].tolist() == [6, 4, 19, 9]
    assert p.boxes[0, 2].tolist() == [20, 20, 29, 29]
    x, y = p.points[0, 2].tolist()
    assert labels[0, int(y), int(x)] == 2 and 24 <= x <= 25 and 24 <= y <= 25
    # absent classes: zero box, zero point, zero mask (never the whole image), nothing NaN
    for n, k in [(0, 3), (1, 2), (1, 3)]:
        assert p.boxes[n, k].tolist() == [0, 0, 0, 0] and p.points[n, k].tolist() == [0, 0]
        assert p.masks[n, k].abs().sum() == 0
    assert all(torch.isfinite(t).all() for t in (p.boxes, p.points, p.masks))
    assert p.masks.shape == (2, 4, 8, 8)
    torch.testing.assert_close(p.masks[0, 1].sum() * 16, torch.tensor(6.0 * 14))  # area-preserving
    # a class filling half the slice up to the border: its point is 8 pixels from every edge (the image
    # border counts as boundary); rows 7..24 all tie and the first is taken
    x, y = p.points[1, 1].tolist()
    assert x == 7 and y == 7


def test_prompts_carry_no_gradient():
    logits = torch.randn(2, 3, 16, 16, requires_grad=True)
    p = prompts_from_masks(logits, mask_size=(4, 4))
    assert not any(t.requires_grad for t in (p.boxes, p.points, p.masks))


def test_farthest_from_boundary_rejects_wrong_shapes():
    with pytest.raises(ValueError, match="M x H x W"):
        farthest_from_boundary(torch.ones(4, 4, dtype=torch.bool))


def test_prefix_max_scan_equals_cummax():
    x = torch.randint(-50, 50, (5, 37, 9))
    assert torch.equal(_prefix_max(x, -1000), x.cummax(dim=1).values)


def acdc_aux_logits(patient, n_slices=6, seed=0):
    """Auxiliary logits shaped by real ACDC labels (one-hot x 4 plus noise): N x 4 x 128 x 128; the first slice
    has no RV (class 1)."""
    import nibabel as nib

    gt = next(patient.glob("*_frame01_gt.nii.gz"))
    labels = torch.from_numpy(np.asarray(nib.load(str(gt)).dataobj)).long().permute(2, 0, 1)  # z x H x W
    z = labels.shape[0] // 2
    labels = labels[z - n_slices // 2: z - n_slices // 2 + n_slices]
    cy, cx = (int(v) for v in torch.nonzero(labels > 0).float().mean(0)[1:])
    labels = F.pad(labels, (64, 64, 64, 64))[:, cy: cy + 128, cx: cx + 128]
    labels[0][labels[0] == 1] = 0
    noise = 0.5 * torch.randn(n_slices, 4, 128, 128, generator=torch.Generator().manual_seed(seed))
    return 4 * F.one_hot(labels, 4).permute(0, 3, 1, 2).float() + noise


def test_exported_prompt_step_gives_the_eager_prompts(tmp_path, acdc_patient):
    """The traced prompt step (torch distance transform, per-class loop, pooled masks) run by ONNX Runtime
    equals the eager one (SciPy's distance transform on CPU) exactly, at a batch other than the traced one."""
    import onnxruntime as ort

    class PromptStep(torch.nn.Module):
        def forward(self, aux):
            p = prompts_from_masks(aux, mask_size=(32, 32))
            return p.boxes, p.points, p.present, p.masks

    aux = acdc_aux_logits(acdc_patient)
    torch.onnx.export(PromptStep(), (aux[:2],), str(tmp_path / "p.onnx"), dynamo=False, opset_version=17,
                      input_names=["aux"], dynamic_axes={"aux": {0: "n"}})
    session = ort.InferenceSession(str(tmp_path / "p.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"aux": aux.numpy()})
    ref = prompts_from_masks(aux, mask_size=(32, 32))
    assert ref.present[:, 1:].any(0).all() and not ref.present.all()  # every class somewhere, some absent
    for name, g in zip(("boxes", "points", "present", "masks"), got):
        np.testing.assert_array_equal(g, getattr(ref, name).numpy(), err_msg=name)
