"""The composed distillation task: the logit term plus any of PCA, GL, adversarial and feature-map terms.

Same contract as ``engine.Distill``: ``task(views, y) -> {"loss", <each term>, "logits"}``, so
``engine.fit`` trains it unchanged; projectors and the discriminator are parameters of the task and
train with the student's optimizer (the discriminator adversarially, through gradient reversal).

    loss = a*CE + (1-a)*T^2*KL + sum_i w_i * L_i
"""
import torch
import torch.nn.functional as F
from torch import nn

from training import engine
from training.kd import config as kdconfig
from training.kd.adversarial import Adversarial
from training.kd.fmap import FeatureMapKD
from training.kd.gl import GroupLinear, gl_loss
from training.kd.logit import combine, logit_kd
from training.kd.multiview import perturb
from training.kd.pca import PartialCrossAttention
from training.kd.teacher import Teacher


@torch.no_grad()
def _shapes(student, teacher, image_size):
    """(student channels, teacher Features) from one blank image."""
    was = student.training
    student.eval()
    x = torch.zeros(1, 3, image_size, image_size)
    channels = student.forward_features(x).shape[1]
    student.train(was)
    return channels, teacher(x)


class ComposedDistill(nn.Module):
    def __init__(self, student, s_mean, s_std, teacher_net, t_mean, t_std, config, image_size, teacher_size=None):
        super().__init__()
        self.config = kdconfig.resolve(config)
        self.net, self.norm = student, engine.Normalize(s_mean, s_std)
        self.teacher = None
        if kdconfig.needs_teacher(self.config):
            self.teacher = Teacher(teacher_net, engine.Normalize(t_mean, t_std), teacher_size,
                                   want_attention="pca" in self.config and
                                   self.config["pca"]["target"] == "attention")
        self.terms = nn.ModuleDict()
        if self.teacher is not None and set(self.config) - {"logits", "multiview"}:
            self._build_terms(image_size)

    def _build_terms(self, image_size):
        c_s, t = _shapes(self.net, self.teacher, image_size)
        c_t, grid = t["tokens"].shape[-1], t["grid"]
        cfg = self.config
        if "pca" in cfg:
            heads = t["attn"].shape[1] if "attn" in t else 1
            self.terms["pca"] = PartialCrossAttention(c_s, c_t, heads, grid, cfg["pca"]["p_cross"],
                                                      cfg["pca"]["target"])
        if "gl" in cfg or "adversarial" in cfg:  # the adversarial term judges the GL-projected tokens
            self.terms["gl"] = GroupLinear(c_s, c_t, grid, cfg.get("gl", kdconfig.TERMS["gl"])["block"])
        if "adversarial" in cfg:
            self.terms["adversarial"] = Adversarial(c_t, cfg["adversarial"]["hidden"], cfg["adversarial"]["reversal"])
        if "fmap" in cfg:
            self.terms["fmap"] = FeatureMapKD(c_s, t["map"].shape[1], cfg["fmap"]["distance"])

    def forward(self, views, y):
        cfg = self.config
        t = self.teacher(views) if self.teacher is not None else None  # the teacher: the clean view
        if "multiview" in cfg and self.training:
            views = perturb(views, cfg["multiview"]["mask_ratio"], cfg["multiview"]["cell_px"])
        feats = self.net.forward_features(self.norm(views))
        z_s = self.net.forward_head(feats)
        ce = F.cross_entropy(z_s, y)
        out = {"ce": ce.detach()}
        kd = logit_kd(z_s, t["logits"], cfg["logits"]["temperature"]) if t is not None else torch.zeros_like(ce)
        loss = combine(ce, kd, cfg["logits"]["alpha"])
        out["kd"] = kd.detach()
        parts = {}
        if "pca" in self.terms:
            parts["pca"] = self.terms["pca"](feats, t)
        if "gl" in self.terms:
            projected = self.terms["gl"](feats)
            if "gl" in cfg:
                parts["gl"] = gl_loss(projected, t["tokens"])
            if "adversarial" in self.terms:
                parts["adversarial"] = self.terms["adversarial"](projected, t["tokens"])
        if "fmap" in self.terms:
            parts["fmap"] = self.terms["fmap"](feats, t["map"])
        for name, value in parts.items():
            loss = loss + cfg[name]["weight"] * value
            out[name] = value.detach()
        out.update(loss=loss, logits=z_s.detach())
        return out
