"""Q&A prompt pairs of HSP-SAM (section 3.3, Eq. 1; one set per global-attention layer, section 3.4).

Q-prompts ``Q_j`` (c x d_I) are learnable tokens that join the image tokens of encoder global block
``j``. A-prompts are derived from them through a bottleneck: ``a_i = mlp_i(f(q_i))`` with one shared
dimensionality-reducing map ``f: d_I -> d_D`` and ``c`` independent MLPs, and are fed to mask
decoder ``j`` as sparse prompt tokens. ``A`` depends on the parameters only, not on the image.

Choice: each ``mlp_i`` is Linear(d_D, d_D) - GELU - Linear(d_D, d_D) (the paper gives no sizes); the
``c`` MLPs are evaluated as one batched op (``einsum`` over stacked weights), not a Python loop.
"""
from __future__ import annotations

import math
from typing import Tuple

import torch
from torch import nn


class QAPromptPairs(nn.Module):
    def __init__(self, *, num_prompts: int, encoder_dim: int, decoder_dim: int, mlp_hidden_dim: int | None = None
                 ) -> None:
        """
        Args:
            num_prompts: c, the number of Q&A pairs (HSP-SAM: the number of segmentation targets).
            encoder_dim: d_I, token width of the image encoder.
            decoder_dim: d_D, token width of the mask decoder.
            mlp_hidden_dim: hidden width of each task-specific MLP (default d_D).
        """
        super().__init__()
        if num_prompts < 1:
            raise ValueError(f"num_prompts must be >= 1, got {num_prompts}")
        hidden = mlp_hidden_dim or decoder_dim
        self.q_prompts = nn.Parameter(torch.empty(num_prompts, encoder_dim))
        nn.init.trunc_normal_(self.q_prompts, std=0.02)
        self.f = nn.Linear(encoder_dim, decoder_dim)
        # c independent two-layer MLPs, stored stacked: weights c x in x out.
        self.mlp_w1 = nn.Parameter(torch.empty(num_prompts, decoder_dim, hidden))
        self.mlp_b1 = nn.Parameter(torch.zeros(num_prompts, hidden))
        self.mlp_w2 = nn.Parameter(torch.empty(num_prompts, hidden, decoder_dim))
        self.mlp_b2 = nn.Parameter(torch.zeros(num_prompts, decoder_dim))
        for w in (self.mlp_w1, self.mlp_w2):
            nn.init.uniform_(w, -1 / math.sqrt(w.shape[1]), 1 / math.sqrt(w.shape[1]))
        self.act = nn.GELU()

    @property
    def num_prompts(self) -> int:
        return self.q_prompts.shape[0]

    def answer(self, q: torch.Tensor) -> torch.Tensor:
        """A = MLP(f(Q)): c x d_I -> c x d_D, prompt i through its own mlp_i."""
        h = self.f(q)
        h = self.act(torch.einsum("cd,cdh->ch", h, self.mlp_w1) + self.mlp_b1)
        return torch.einsum("ch,chd->cd", h, self.mlp_w2) + self.mlp_b2

    def forward(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """Returns (Q: c x d_I, A: c x d_D)."""
        return self.q_prompts, self.answer(self.q_prompts)
