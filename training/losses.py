"""Classification losses for teacher training: cross-entropy and focal loss, with class weights.

Focal loss (Lin et al., 2017, eq. 5 with the alpha-balancing of eq. 4 as a per-class weight):

    FL(x, y) = -w_y * (1 - p_y)^gamma * log p_y,     p = softmax(x)

``p`` comes from the plain, unweighted softmax; the class weight multiplies the
result and never enters the modulating factor. (Computing p as exp(-weighted CE)
gives p_y^w_y instead, which is the error this module exists to avoid.) The batch
loss is the weighted mean, sum_i FL_i / sum_i w_{y_i}, PyTorch's convention for a
weighted cross-entropy, so gamma = 0 is exactly ``F.cross_entropy(x, y, weight=w)``.
"""
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

LOSSES = ("ce", "focal")


def focal_loss(logits, targets, gamma=2.0, weight=None, reduction="mean"):
    """Focal loss of ``logits`` (N x C) against integer ``targets``; see the module docstring."""
    log_p = F.log_softmax(logits.float(), dim=1).gather(1, targets.view(-1, 1)).squeeze(1)
    modulating = (1.0 - log_p.exp()).clamp(min=0.0).pow(gamma)
    w = torch.ones_like(log_p) if weight is None else weight.to(log_p)[targets]
    per_sample = -w * modulating * log_p
    if reduction == "none":
        return per_sample
    if reduction == "sum":
        return per_sample.sum()
    return per_sample.sum() / w.sum()


class FocalLoss(nn.Module):
    def __init__(self, gamma=2.0, weight=None):
        super().__init__()
        self.gamma = float(gamma)
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def forward(self, logits, targets):
        return focal_loss(logits, targets, self.gamma, self.weight)

    def extra_repr(self):
        return "gamma={}, weighted={}".format(self.gamma, self.weight is not None)


class CrossEntropy(nn.Module):
    """``F.cross_entropy`` with optional class weights (a buffer, so it follows the task to its device)."""

    def __init__(self, weight=None, label_smoothing=0.0):
        super().__init__()
        self.label_smoothing = float(label_smoothing)
        self.register_buffer("weight", None if weight is None else torch.as_tensor(weight, dtype=torch.float32))

    def forward(self, logits, targets):
        return F.cross_entropy(logits, targets, weight=self.weight, label_smoothing=self.label_smoothing)


def class_weights(text, targets, labels):
    """``none`` -> None; ``balanced`` -> N / (C * n_c) over ``targets``; ``w1,w2,...`` in ``labels`` order."""
    text = (text or "none").strip()
    if text == "none":
        return None
    if text == "balanced":
        counts = np.bincount(np.asarray(targets, dtype=np.int64), minlength=len(labels)).astype(np.float64)
        if (counts == 0).any():
            empty = [labels[i] for i in np.flatnonzero(counts == 0)]
            raise ValueError("--class-weights balanced: no training images of {}".format(", ".join(empty)))
        return (counts.sum() / (len(labels) * counts)).tolist()
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise ValueError("--class-weights must be none, balanced or {} numbers, got {!r}".format(len(labels), text))
    if len(values) != len(labels) or any(v <= 0 for v in values):
        raise ValueError("--class-weights needs {} positive numbers, one per class in the order {}, got {!r}".format(
            len(labels), ",".join(labels), text))
    return values


def build_loss(kind, labels, targets, class_weights_text="none", gamma=2.0, label_smoothing=0.0):
    """The criterion ``(logits, y) -> loss`` a Classify task uses; raises ValueError on bad options."""
    if kind not in LOSSES:
        raise ValueError("--loss must be one of {}, got {!r}".format("|".join(LOSSES), kind))
    weight = class_weights(class_weights_text, targets, labels)
    if kind == "ce":
        return CrossEntropy(weight, label_smoothing)
    if label_smoothing:
        raise ValueError("focal loss takes hard labels: leave --label-smoothing at its default (0 with "
                         "--loss focal) or use --loss ce")
    if gamma < 0:
        raise ValueError("--focal-gamma must be >= 0, got {}".format(gamma))
    return FocalLoss(gamma, weight)
