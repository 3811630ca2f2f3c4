"""Group-wise Linear projector (Liu et al., "Cross-Architecture Knowledge Distillation", ACCV 2022, sec. 3.2).

The student's feature map is brought onto the teacher's token grid (average-pooled when larger,
bilinearly resized when smaller) and every position is mapped to the teacher's token space by a linear
layer; neighbouring positions (a ``block`` x ``block`` square, 2 x 2 = 4 in the paper) share one layer,
so the projector keeps the spatial layout at a fraction of a per-position layer's parameters.

    L_GL = MSE(GL(h_s), h_t)       h_t: the teacher's last tokens (patch tokens, after its final norm)
"""
import math

import torch
import torch.nn.functional as F
from torch import nn


def to_grid(feature_map, grid):
    """(B,C,h,w) -> (B,C,gh,gw): average-pooled when larger, bilinear when smaller."""
    h, w = feature_map.shape[-2:]
    if (h, w) == tuple(grid):
        return feature_map
    if h >= grid[0] and w >= grid[1]:
        return F.adaptive_avg_pool2d(feature_map, grid)
    return F.interpolate(feature_map, size=grid, mode="bilinear", align_corners=False)


class GroupLinear(nn.Module):
    def __init__(self, student_channels, teacher_dim, grid, block=2):
        super().__init__()
        self.grid = tuple(grid)
        gh, gw = self.grid
        per_row = math.ceil(gw / block)
        groups = [(i // block) * per_row + (j // block) for i in range(gh) for j in range(gw)]
        self.register_buffer("group_of", torch.tensor(groups, dtype=torch.long), persistent=False)
        n = max(groups) + 1
        bound = 1.0 / math.sqrt(student_channels)  # nn.Linear's default initialisation
        self.weight = nn.Parameter(torch.empty(n, student_channels, teacher_dim).uniform_(-bound, bound))
        self.bias = nn.Parameter(torch.empty(n, teacher_dim).uniform_(-bound, bound))

    def forward(self, student_map):
        """(B,C_s,h,w) -> (B, gh*gw, C_t): the student's tokens in the teacher's space."""
        tokens = to_grid(student_map, self.grid).flatten(2).transpose(1, 2)
        return torch.einsum("bnc,ncd->bnd", tokens, self.weight[self.group_of]) + self.bias[self.group_of]


def gl_loss(projected, teacher_tokens):
    return F.mse_loss(projected, teacher_tokens)
