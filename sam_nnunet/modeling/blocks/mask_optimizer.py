"""PG-SAM's iterative mask optimizer, IMO (shared/papers/003, section 2.4, Eqs. 6-7).

For every class i, with m_i its mask token after the two-way transformer (B x K x C) and F the fused
features (B x C_f x H x W, :mod:`.feature_fusion`)::

    Omega_i  = MLP(m_i) * W_base                                     Eq. 6
    Delta M  = update(Conv3x3[Omega_i]([M_t,i ; F]))                  Eq. 7
    M_t+1,i  = Clip(M_t,i + lambda * Delta M, 0, 1)

* ``W_base`` (1 x (1 + C_f) x 3 x 3: input channels M_t,i and F, one output channel, the update of
  mask i) is shared by all classes; ``MLP(m_i)`` (3 layers, as SAM's hypernetworks) gives one gate per
  input channel, broadcast over the 3x3 taps: the "channel-wise Hadamard product". The kernels are
  per image and per class (m_i depends on the image); since a gate only scales an input channel, the
  convolution with Omega_i is computed as the gated sum of per-channel convolutions with W_base
  (:meth:`IterativeMaskOptimizer.step`), exactly equal and without a B*K-group convolution.
* The kernels are computed once and reused in every iteration (Eq. 7's Omega_t: the tokens do not
  change between iterations, so nothing would make them differ).
* ``lambda`` is a learnable scalar (initial 0.1); the number of iterations ``iterations`` is a switch
  (the paper does not give it; default 3).
* ``update="sigmoid"`` is the paper's sigma: Delta M is in (0, 1), so an update can only *grow* a mask
  (a test checks M_t+1 >= M_t). ``update="signed"`` uses tanh (Delta M in (-1, 1)) so that an
  iteration can also remove false positives.
* M_0 = sigmoid(coarse logits). nnU-Net's losses and predictor take logits over the K classes, so the
  refined masks leave as ``log(max(M_T, 1e-4))``: their softmax is M_T normalised over the classes,
  and their argmax is the class with the largest refined mask.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from sam_nnunet.modeling.blocks.mask_decoder import BatchedMLP

UPDATES = ("sigmoid", "signed")
MASK_FLOOR = 1e-4


class IterativeMaskOptimizer(nn.Module):
    def __init__(self, *, token_dim: int, feature_dim: int, num_masks: int, iterations: int = 3,
                 update: str = "sigmoid", step_size: float = 0.1, kernel_size: int = 3) -> None:
        """
        Args:
            token_dim: C, width of the mask tokens m_i.
            feature_dim: C_f, channels of F_fusion.
            num_masks: K mask tokens (one per nnU-Net output channel).
            iterations: T refinement steps (>= 1).
            update: "sigmoid" (the paper, non-negative updates) or "signed" (tanh).
            step_size: initial value of the learnable lambda.
        """
        super().__init__()
        if update not in UPDATES:
            raise ValueError(f"optimizer_update must be one of {UPDATES}, got {update!r}")
        if iterations < 1:
            raise ValueError(f"optimizer_iterations must be >= 1, got {iterations}")
        self.iterations = iterations
        self.update = update
        self.kernel_size = kernel_size
        in_channels = 1 + feature_dim
        self.hypernetwork = BatchedMLP(num_mlps=num_masks, input_dim=token_dim, hidden_dim=token_dim,
                                       output_dim=in_channels)
        self.base_kernel = nn.Parameter(torch.empty(1, in_channels, kernel_size, kernel_size))  # W_base
        nn.init.kaiming_uniform_(self.base_kernel, a=5 ** 0.5)
        self.step_size = nn.Parameter(torch.tensor(float(step_size)))  # lambda

    def kernels(self, tokens: torch.Tensor) -> torch.Tensor:
        """Eq. 6. tokens: B x K x C -> Omega: B x K x (1 + C_f) x k x k."""
        return self.hypernetwork(tokens)[..., None, None] * self.base_kernel[0]

    def feature_response(self, features: torch.Tensor) -> torch.Tensor:
        """Each channel of F convolved with its slice of W_base: B x C_f x H x W -> B x C_f x H x W.

        Omega_i's F part is W_base's F part with channel c scaled by gate g_i,c, so
        Conv[Omega_i](F) = sum_c g_i,c * (W_base,c * F_c): this response is computed once per forward and the
        per-class kernels reduce to a weighted sum (no B*K-group convolution, and a static graph for ONNX)."""
        weight = self.base_kernel[0, 1:].unsqueeze(1).to(features.dtype)  # C_f x 1 x k x k
        return F.conv2d(features, weight, padding=self.kernel_size // 2, groups=weight.shape[0])

    def step(self, masks: torch.Tensor, feature_response: torch.Tensor, gates: torch.Tensor) -> torch.Tensor:
        """One iteration of Eq. 7. masks: M_t, B x K x H x W in [0, 1]; feature_response: from
        :meth:`feature_response`; gates: MLP(m), B x K x (1 + C_f) -> M_t+1, B x K x H x W.

        Delta M_i = Conv[Omega_i]([M_t,i ; F]) = g_i,0 (W_base,0 * M_t,i) + sum_c g_i,c+1 (W_base,c+1 * F_c)."""
        B, K, H, W = masks.shape
        weight = self.base_kernel[:, :1].to(masks.dtype)  # 1 x 1 x k x k
        mask_response = F.conv2d(masks.reshape(-1, 1, H, W), weight, padding=self.kernel_size // 2).view(B, K, H, W)
        delta = gates[..., :1, None] * mask_response + torch.einsum("bkc,bchw->bkhw", gates[..., 1:],
                                                                     feature_response)
        delta = torch.sigmoid(delta) if self.update == "sigmoid" else torch.tanh(delta)
        return torch.clamp(masks + self.step_size * delta, 0.0, 1.0)

    def forward(self, coarse_logits: torch.Tensor, features: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """coarse_logits: B x K x H x W; features: F_fusion, B x C_f x H x W; tokens: m, B x K x C
        -> refined logits log(M_T), B x K x H x W."""
        masks = torch.sigmoid(coarse_logits)
        gates = self.hypernetwork(tokens).to(masks.dtype)
        response = self.feature_response(features.to(masks.dtype))
        for _ in range(self.iterations):
            masks = self.step(masks, response, gates)
        return torch.log(masks.clamp_min(MASK_FLOOR))
