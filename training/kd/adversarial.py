"""An adversarial discriminator that is adversarial (Liu et al., "Cross-Architecture Knowledge
Distillation", ACCV 2022, sec. 3.3, multi-view robust training; GAN objective of Goodfellow et al. 2014;
gradient reversal of Ganin and Lempitsky, "Unsupervised Domain Adaptation by Backpropagation", 2015).

A small per-token discriminator D sees the teacher's tokens (label 1) and the student's projected tokens
(label 0) and minimises

    L_D = BCE(D(h_t), 1) + BCE(D(GL(h_s)), 0)

The student's tokens reach D through a gradient-reversal layer: identity forward, -lambda * gradient
backward, so one optimizer step lowers L_D for D and raises it for the student and its projector (the
student learns to make its tokens indistinguishable from the teacher's). The teacher is frozen; its
tokens are detached.
"""
import torch
import torch.nn.functional as F
from torch import nn


class _Reverse(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, strength):
        ctx.strength = strength
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad):
        return -ctx.strength * grad, None


def grad_reverse(x, strength=1.0):
    """Identity forward; the gradient times -strength backward."""
    return _Reverse.apply(x, strength)


class Adversarial(nn.Module):
    def __init__(self, dim, hidden=256, reversal=1.0):
        super().__init__()
        self.reversal = reversal
        self.discriminator = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, 1))

    def forward(self, student_tokens, teacher_tokens):
        """L_D over every token of both sides (B,N,C each)."""
        d_t = self.discriminator(teacher_tokens.detach())
        d_s = self.discriminator(grad_reverse(student_tokens, self.reversal))
        return (F.binary_cross_entropy_with_logits(d_t, torch.ones_like(d_t)) +
                F.binary_cross_entropy_with_logits(d_s, torch.zeros_like(d_s)))
