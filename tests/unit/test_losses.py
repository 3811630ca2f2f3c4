"""training.losses: focal loss takes p from the unweighted softmax, class weights sit outside the modulating term."""
import math

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training/ is workstation-only: needs torch")

import torch.nn.functional as F  # noqa: E402

from training import engine, losses  # noqa: E402

pytestmark = pytest.mark.torch
torch.set_num_threads(1)

LOGITS = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.3, 1.5], [-0.5, 2.5, 0.0]])
Y = torch.tensor([0, 2, 0])
W = torch.tensor([0.25, 1.0, 4.0])


def by_hand(logits, y, gamma, w):
    """-w_y (1 - p_y)^gamma log p_y, p = softmax(logits), averaged as sum / sum(w_y); plain Python."""
    total = weights = 0.0
    for row, label in zip(logits.tolist(), y.tolist()):
        exps = [math.exp(v) for v in row]
        p = exps[label] / sum(exps)
        total += -w[label] * (1 - p) ** gamma * math.log(p)
        weights += w[label]
    return total / weights


def from_weighted_ce(logits, y, gamma, w):
    """The research code's mistake: p_t = exp(-weighted CE), so the weight leaks into the modulating term."""
    ce = F.cross_entropy(logits, y, weight=w, reduction="none")
    return ((1 - torch.exp(-ce)) ** gamma * ce).sum() / w[y].sum()


def test_focal_matches_the_definition_with_uneven_class_weights():
    got = losses.focal_loss(LOGITS, Y, gamma=2.0, weight=W)
    assert got.item() == pytest.approx(by_hand(LOGITS, Y, 2.0, W.tolist()), rel=1e-6)
    # the same numbers through the buggy formula differ clearly, so this test tells the two apart
    assert abs(from_weighted_ce(LOGITS, Y, 2.0, W).item() - got.item()) > 0.05


def test_gamma_zero_is_the_weighted_cross_entropy():
    torch.manual_seed(0)
    logits, y = torch.randn(16, 4) * 3, torch.randint(0, 4, (16,))
    w = torch.tensor([0.5, 2.0, 1.0, 3.0])
    assert torch.allclose(losses.focal_loss(logits, y, gamma=0.0, weight=w), F.cross_entropy(logits, y, weight=w))
    assert torch.allclose(losses.focal_loss(logits, y, gamma=0.0), F.cross_entropy(logits, y))


@pytest.mark.parametrize("gamma", [0.5, 2.0, 5.0])
def test_the_per_sample_modulating_factor_is_one_minus_softmax_to_gamma(gamma):
    per_sample = losses.focal_loss(LOGITS, Y, gamma=gamma, weight=W, reduction="none")
    p = F.softmax(LOGITS, dim=1)[torch.arange(3), Y]
    factor = per_sample / (-W[Y] * p.log())
    assert torch.allclose(factor, (1 - p) ** gamma, rtol=1e-5)


def test_focal_gradients_are_finite_for_confident_logits():
    logits = torch.tensor([[40.0, -40.0], [-40.0, 40.0]], requires_grad=True)
    losses.focal_loss(logits, torch.tensor([0, 0]), gamma=2.0).backward()
    assert torch.isfinite(logits.grad).all()


def test_class_weights_balanced_list_and_errors():
    labels = ["a", "b", "c"]
    targets = [0, 0, 0, 0, 1, 1, 2, 2]
    assert losses.class_weights("none", targets, labels) is None
    assert losses.class_weights("balanced", targets, labels) == pytest.approx([8 / 12, 8 / 6, 8 / 6])
    assert losses.class_weights("1,2,3.5", targets, labels) == [1.0, 2.0, 3.5]
    with pytest.raises(ValueError, match="a,b,c"):
        losses.class_weights("1,2", targets, labels)
    with pytest.raises(ValueError, match="no training images of c"):
        losses.class_weights("balanced", [0, 1], labels)


def test_build_loss_makes_focal_and_weighted_ce_and_refuses_smoothing_with_focal():
    labels, targets = ["a", "b"], np.array([0, 0, 0, 1])
    focal = losses.build_loss("focal", labels, targets, "balanced", gamma=1.5)
    assert isinstance(focal, losses.FocalLoss) and focal.gamma == 1.5
    assert focal.weight.tolist() == pytest.approx([4 / 6, 4 / 2])
    ce = losses.build_loss("ce", labels, targets, "1,3", label_smoothing=0.1)
    logits, y = torch.randn(4, 2), torch.tensor([0, 1, 1, 0])
    assert torch.allclose(ce(logits, y), F.cross_entropy(logits, y, weight=torch.tensor([1.0, 3.0]),
                                                         label_smoothing=0.1))
    with pytest.raises(ValueError, match="hard labels"):
        losses.build_loss("focal", labels, targets, label_smoothing=0.1)


def test_classify_reports_the_focal_part_and_uses_the_criterion():
    net = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 4 * 4, 3))
    task = engine.Classify(net, [0.5] * 3, [0.5] * 3, criterion=losses.FocalLoss(2.0, W))
    views, y = torch.rand(3, 3, 4, 4), torch.tensor([0, 1, 2])
    out = task(views, y)
    logits = net((views - 0.5) / 0.5)
    assert set(out) == {"loss", "focal", "logits"}
    assert torch.allclose(out["loss"], losses.focal_loss(logits, y, 2.0, W))
