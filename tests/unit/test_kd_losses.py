"""training.kd: each distillation term computes what its paper defines, and is wired so it can fail."""
import math

import pytest

torch = pytest.importorskip("torch", reason="training/ is workstation-only: needs torch")
timm = pytest.importorskip("timm", reason="the teachers are timm models")

import torch.nn.functional as F  # noqa: E402

from training.kd import config as kdconfig  # noqa: E402
from training.kd.adversarial import Adversarial  # noqa: E402
from training.kd.fmap import FeatureMapKD  # noqa: E402
from training.kd.gl import GroupLinear  # noqa: E402
from training.kd.logit import logit_kd, soft_kd  # noqa: E402
from training.kd.multiview import perturb  # noqa: E402
from training.kd.task import ComposedDistill  # noqa: E402
from training.kd.teacher import Teacher  # noqa: E402
from training.engine import Normalize  # noqa: E402

pytestmark = pytest.mark.torch
MEAN, STD = [0.5] * 3, [0.25] * 3


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)
    torch.manual_seed(0)


def vit():
    return timm.create_model("vit_tiny_patch16_224", img_size=64, num_classes=4).eval()


def student():
    return timm.create_model("tf_efficientnet_lite0", num_classes=4)


def test_logit_kd_is_the_hand_formula_and_soft_labels_give_the_same_value():
    z_s, z_t, t = torch.randn(6, 4), torch.randn(6, 4) * 2, 4.0
    p_t = F.softmax(z_t / t, dim=1)
    by_hand = (p_t * (p_t.log() - F.log_softmax(z_s / t, dim=1))).sum(1).mean() * t * t
    assert torch.allclose(logit_kd(z_s, z_t, t), by_hand, atol=1e-6)
    assert torch.allclose(soft_kd(z_s, p_t, t), by_hand, atol=1e-6)


def test_the_attention_target_is_the_last_blocks_softmax_computed_once():
    net = vit()
    assert net.blocks[-1].attn.fused_attn  # the fast path never builds the matrix: the hook must recompute it
    x = torch.rand(2, 3, 64, 64)
    feats = Teacher(net, Normalize(MEAN, STD), want_attention=True)(x)
    # independently: run the blocks by hand and take the last block's q, k
    with torch.no_grad():
        h = net.norm_pre(net._pos_embed(net.patch_embed(Normalize(MEAN, STD)(x))))
        for block in net.blocks[:-1]:
            h = block(h)
        attn = net.blocks[-1].attn
        qkv = attn.qkv(net.blocks[-1].norm1(h)).reshape(2, h.shape[1], 3, attn.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k = qkv[0][:, :, 1:], qkv[1][:, :, 1:]  # patch tokens (drop the class token)
        expected = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
    assert feats["attn"].shape == (2, 3, 16, 16)
    assert torch.allclose(feats["attn"], expected, atol=1e-5)
    assert not torch.allclose(feats["attn"], torch.softmax(expected, dim=-1), atol=1e-3)  # not softmaxed twice
    assert torch.allclose(feats["attn"].sum(-1), torch.ones(2, 3, 16))


def test_the_teacher_hook_survives_many_passes_and_sees_only_the_latest():
    teacher = Teacher(vit(), Normalize(MEAN, STD), want_attention=True)
    a, b = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    first = teacher(a)["attn"]
    teacher(b)
    assert torch.allclose(teacher(a)["attn"], first)


def test_an_attention_term_on_a_cnn_teacher_is_refused():
    with pytest.raises(ValueError, match="needs a ViT teacher"):
        Teacher(timm.create_model("convnextv2_atto", num_classes=4), Normalize(MEAN, STD), want_attention=True)


def test_gl_projector_maps_the_student_map_onto_the_teacher_token_grid():
    gl = GroupLinear(1280, 192, (4, 4), block=2)
    out = gl(torch.rand(2, 1280, 2, 2))
    feats = Teacher(vit(), Normalize(MEAN, STD))(torch.rand(2, 3, 64, 64))
    assert out.shape == feats["tokens"].shape == (2, 16, 192)
    assert gl.weight.shape[0] == 4  # 16 positions in 2x2 blocks share 4 layers
    # positions in one block share their layer, positions in different blocks do not
    x = torch.zeros(1, 1280, 4, 4)
    x[..., :, :] = torch.rand(1, 1280, 1, 1)  # the same vector everywhere
    y = gl(x)[0]
    assert torch.allclose(y[0], y[1]) and torch.allclose(y[0], y[4]) and not torch.allclose(y[0], y[2])


def test_the_discriminator_loss_moves_when_only_the_teacher_features_change():
    adv = Adversarial(8, hidden=16)
    s, t = torch.randn(2, 5, 8), torch.randn(2, 5, 8)
    assert not torch.isclose(adv(s, t), adv(s, torch.randn(2, 5, 8)))  # (LayerNorm ignores shifts and scales)


def test_gradient_reversal_gives_the_student_the_opposite_of_the_discriminators_gradient():
    adv = Adversarial(8, hidden=16, reversal=0.5)
    s, t = torch.randn(2, 5, 8, requires_grad=True), torch.randn(2, 5, 8)
    adv(s, t).backward()
    reversed_grad = s.grad.clone()
    s.grad = None
    d_s = adv.discriminator(s)  # the discriminator's own loss on the student side, no reversal
    F.binary_cross_entropy_with_logits(d_s, torch.zeros_like(d_s)).backward()
    assert reversed_grad.abs().sum() > 0
    assert torch.allclose(reversed_grad, -0.5 * s.grad, atol=1e-7)
    # and the discriminator itself still descends its loss
    assert all(p.grad is not None for p in adv.discriminator.parameters())


def test_one_step_lowers_the_discriminators_loss_on_fixed_features():
    adv = Adversarial(8, hidden=16)
    s, t = torch.randn(4, 5, 8), torch.randn(4, 5, 8) + 1.0
    opt = torch.optim.SGD(adv.parameters(), lr=0.5)
    before = adv(s, t)
    before.backward()
    opt.step()
    assert adv(s, t) < before


def test_feature_map_kd_resizes_to_the_convnext_map_and_is_zero_on_a_match():
    teacher = Teacher(timm.create_model("convnextv2_atto", num_classes=4), Normalize(MEAN, STD))
    t_map = teacher(torch.rand(2, 3, 64, 64))["map"]
    fm = FeatureMapKD(1280, t_map.shape[1])
    assert fm(torch.rand(2, 1280, 1, 1), t_map) > 0
    for distance in ("mse", "l2norm"):
        fm = FeatureMapKD(3, 3, distance)
        with torch.no_grad():
            fm.regressor.weight.copy_(torch.eye(3).view(3, 3, 1, 1))
            fm.regressor.bias.zero_()
        m = torch.rand(2, 3, 4, 4)
        assert fm(m, m) < 1e-10 and fm(m, m * 2) < 1e-10 if distance == "l2norm" else fm(m, m) < 1e-10
    assert FeatureMapKD(3, 3)(m, m + 1) > 0


def test_multiview_hides_cells_from_the_student_and_the_teacher_sees_the_clean_view():
    seen = {}

    class Spy(torch.nn.Module):
        def __init__(self, net, key):
            super().__init__()
            self.net, self.key = net, key

        def forward_features(self, x):
            seen[self.key] = x.clone()
            return self.net.forward_features(x)

        def forward_head(self, f):
            return self.net.forward_head(f)

    views = torch.rand(2, 3, 64, 64) + 0.1
    task = ComposedDistill(Spy(student(), "student"), MEAN, STD, Spy(timm.create_model("convnextv2_atto", num_classes=4), "teacher"), MEAN, STD,
                           {"logits": {}, "multiview": {"mask_ratio": 0.5}}, 64)
    task.train()
    task(views, torch.tensor([0, 1]))
    clean = Normalize(MEAN, STD)(views)
    assert torch.equal(seen["teacher"], clean)
    hidden = (seen["student"] == Normalize(MEAN, STD)(torch.zeros(1, 3, 1, 1))).all(1)
    assert 0.2 < hidden.float().mean() < 0.8
    assert perturb(views, 0.0).equal(views)


@pytest.mark.parametrize("config, parts", [
    ({"logits": {}, "pca": {}, "gl": {}, "adversarial": {}}, ("pca", "gl", "adversarial")),
    ({"pca": {"target": "similarity"}, "fmap": {"distance": "l2norm"}}, ("pca", "fmap")),
])
def test_the_composed_task_trains_every_term_and_keeps_the_teacher_frozen(config, parts):
    task = ComposedDistill(student(), MEAN, STD, vit(), MEAN, STD, config, 64)
    task.train()
    out = task(torch.rand(2, 3, 64, 64), torch.tensor([0, 3]))
    assert set(parts) <= set(out) and out["logits"].shape == (2, 4)
    out["loss"].backward()
    for name in parts:
        assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in task.terms[name].parameters()), name
    assert all(p.grad is None for p in task.teacher.parameters())
    assert not task.teacher.net.training


def test_labels_only_runs_no_teacher_and_matches_plain_cross_entropy():
    net = student().eval()
    task = ComposedDistill(net, MEAN, STD, vit(), MEAN, STD, kdconfig.from_variant("labels"), 64)
    assert task.teacher is None
    x, y = torch.rand(2, 3, 64, 64), torch.tensor([1, 2])
    task.eval()
    out = task(x, y)
    assert torch.allclose(out["loss"], F.cross_entropy(net(Normalize(MEAN, STD)(x)), y), atol=1e-6)


def test_config_rejects_unknown_keys_with_a_suggestion(tmp_path):
    with pytest.raises(ValueError, match="did you mean 'pca'"):
        kdconfig.resolve({"pcaa": {}})
    with pytest.raises(ValueError, match="did you mean 'temperature'"):
        kdconfig.resolve({"logits": {"temprature": 2}})
    path = tmp_path / "kd.yaml"
    path.write_text("logits: {alpha: 0.5}\ngl: {weight: 2}\n")
    cfg = kdconfig.load(str(path))
    assert cfg["logits"] == {"alpha": 0.5, "temperature": 4.0} and cfg["gl"]["weight"] == 2
    assert set(kdconfig.from_variant("logits+adv+mv")) == {"logits", "adversarial", "multiview"}
