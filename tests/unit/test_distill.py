"""training.engine.Distill: the loss is the issue's formula, and the teacher sees the student's view."""
import pytest

torch = pytest.importorskip("torch", reason="training/ is workstation-only: needs torch")

import torch.nn.functional as F  # noqa: E402

from training.engine import Distill  # noqa: E402

pytestmark = pytest.mark.torch


class Fixed(torch.nn.Module):
    """Returns given logits and records the input it was shown."""

    def __init__(self, logits):
        super().__init__()
        self.logits = logits
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.seen = []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return self.logits + self.weight


def test_loss_is_alpha_ce_plus_t2_kl():
    torch.manual_seed(0)
    z_s, z_t = torch.randn(5, 4), torch.randn(5, 4) * 3
    y = torch.tensor([0, 1, 2, 3, 1])
    alpha, t = 0.3, 4.0
    task = Distill(Fixed(z_s), [0.5] * 3, [0.5] * 3, Fixed(z_t), [0.5] * 3, [0.5] * 3, alpha=alpha, temperature=t)
    out = task(torch.rand(5, 3, 8, 8), y)
    p_t = F.softmax(z_t / t, dim=1)
    kl = (p_t * (p_t.log() - F.log_softmax(z_s / t, dim=1))).sum(dim=1).mean()
    expected = alpha * F.cross_entropy(z_s, y) + (1 - alpha) * t * t * kl
    assert torch.allclose(out["loss"], expected, atol=1e-6)
    assert torch.allclose(out["kd"], t * t * kl, atol=1e-6)


def test_teacher_is_frozen_and_stays_in_eval_mode():
    student, teacher = Fixed(torch.zeros(2, 4)), Fixed(torch.ones(2, 4))
    teacher.train()
    task = Distill(student, [0.5] * 3, [0.5] * 3, teacher, [0.5] * 3, [0.5] * 3)
    task.train()
    assert student.training and not teacher.training
    assert not any(p.requires_grad for p in teacher.parameters())
    task(torch.rand(2, 3, 8, 8), torch.tensor([0, 1]))["loss"].backward()
    assert student.weight.grad is not None and teacher.weight.grad is None


def test_teacher_sees_the_same_view_at_its_own_size_and_normalisation():
    student, teacher = Fixed(torch.zeros(2, 4)), Fixed(torch.zeros(2, 4))
    task = Distill(student, [0.5] * 3, [0.5] * 3, teacher, [0.485, 0.456, 0.406], [0.229, 0.224, 0.225],
                   teacher_size=[16, 16])
    views = torch.rand(2, 3, 32, 32)
    task(views, torch.tensor([0, 1]))
    assert student.seen[0].shape == (2, 3, 32, 32) and teacher.seen[0].shape == (2, 3, 16, 16)
    assert torch.allclose(student.seen[0], (views - 0.5) / 0.5)
    small = F.interpolate(views, size=(16, 16), mode="bilinear", align_corners=False, antialias=True)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)
    assert torch.allclose(teacher.seen[0], (small - mean) / std, atol=1e-6)
