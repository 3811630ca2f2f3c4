"""Partially Cross-Attention projector (Liu et al., "Cross-Architecture Knowledge Distillation", ACCV 2022, sec. 3.1).

The student's feature map, on the teacher's token grid, goes through three 3x3 convolutions to queries,
keys and values in the teacher's dimension, split into the teacher's heads. Its attention

    A_s = softmax(Q K^T / sqrt(d))

is matched to the teacher's real attention A_t from its last block (``training.kd.teacher``: the same
softmax, computed once from that block's q and k, among patch tokens), and its values to the teacher's:

    L_PCA = MSE(A_s, A_t) + MSE(V, V_t)

"Partially cross": while training, each of Q, K and V is replaced by the teacher's with probability
``p_cross``, so the student's projection is trained inside the teacher's attention (the paper's
random replacement). With ``target="similarity"`` the target is instead the teacher's token
self-similarity softmax(h_t h_t^T / sqrt(C)) and the student's single-head attention is matched to it
(no replacement: the teacher has no q/k for it).
"""
import math

import torch
import torch.nn.functional as F
from torch import nn

from training.kd.gl import to_grid

TARGETS = ("attention", "similarity")


class PartialCrossAttention(nn.Module):
    def __init__(self, student_channels, teacher_dim, heads, grid, p_cross=0.5, target="attention"):
        super().__init__()
        if target not in TARGETS:
            raise ValueError("pca target must be one of {}, got {!r}".format(", ".join(TARGETS), target))
        self.grid, self.heads, self.p_cross, self.target = tuple(grid), heads, p_cross, target
        self.q, self.k, self.v = (nn.Conv2d(student_channels, teacher_dim, 3, padding=1) for _ in range(3))

    def _split(self, x):
        """(B,C,gh,gw) -> (B,heads,N,C/heads)."""
        b, c = x.shape[:2]
        heads = self.heads if self.target == "attention" else 1
        return x.flatten(2).reshape(b, heads, c // heads, -1).transpose(-2, -1)

    def forward(self, student_map, teacher):
        x = to_grid(student_map, self.grid)
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        if self.target == "similarity":
            tokens = teacher["tokens"]
            target = (tokens @ tokens.transpose(-2, -1) / math.sqrt(tokens.shape[-1])).softmax(-1).unsqueeze(1)
            attn = (q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])).softmax(-1)
            return F.mse_loss(attn, target)
        if self.training and self.p_cross > 0:
            swap = (torch.rand(3) < self.p_cross).tolist()
            q, k, v = (teacher[n] if s else own for n, s, own in zip("qkv", swap, (q, k, v)))
        attn = (q * teacher["scale"] @ k.transpose(-2, -1)).softmax(dim=-1)
        return F.mse_loss(attn, teacher["attn"]) + F.mse_loss(v, teacher["v"])
