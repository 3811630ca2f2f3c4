"""Multi-view robust training (Liu et al., "Cross-Architecture Knowledge Distillation", ACCV 2022, sec. 3.3).

The student is shown a perturbed view of each image while the teacher sees the clean one, so the
student must produce the teacher's outputs (and, with the adversarial term, teacher-like features) from
views it has to see through. The perturbation here: a random ``mask_ratio`` of ``cell_px`` x ``cell_px``
cells blacked out (black = the fill outside the fundus disc), drawn per image from torch's RNG.
"""
import torch


def perturb(views, mask_ratio=0.25, cell_px=16):
    """A copy of (B,C,H,W) ``views`` with a random fraction of square cells set to 0."""
    b, _, h, w = views.shape
    gh, gw = -(-h // cell_px), -(-w // cell_px)
    keep = (torch.rand(b, 1, gh, gw, device=views.device) >= mask_ratio).to(views.dtype)
    keep = keep.repeat_interleave(cell_px, dim=2).repeat_interleave(cell_px, dim=3)[:, :, :h, :w]
    return views * keep
