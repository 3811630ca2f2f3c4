"""Training and prediction loops over prepared (ROI-cropped, resized) uint8 images.

A task object's ``forward(views, y)`` returns a dict with ``loss`` and its
parts; one loop trains any task. Views are float [0, 1] NCHW tensors made by
``augment``; each network normalises them with its own mean/std, so a teacher
and a student with different data configs see the same pixels.
"""
import itertools
import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge.preprocess import normalize
from training import losses
from training.kd import logit


def device_of(module):
    """Where a module's tensors live (the CPU for one that has none)."""
    for tensor in itertools.chain(module.parameters(), module.buffers()):
        return tensor.device
    return torch.device("cpu")


class Normalize(nn.Module):
    """(x - mean) / std on [0, 1] NCHW views: what the device does with scale 1/255."""

    def __init__(self, mean, std):
        super().__init__()
        # one value per channel: three for RGB/BGR, one for a GREY network
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


# Augmentation presets: rotation (degrees), zoom (scale = 1 + U(zoom) * strength, >1 zooms in, i.e. a
# smaller crop), shift (fraction of the frame), brightness / contrast / saturation (relative jitter).
# "strong" is for teachers: a wider crop-scale range (zoom up to 1.4x, about half the area), twice the
# rotation, and colour jitter including saturation.
AUGMENT_PRESETS = {
    "none": None,
    "standard": {"rotate_deg": 15.0, "zoom": (-0.1, 0.1), "shift": 0.05, "brightness": 0.2, "contrast": 0.2,
                 "saturation": 0.0},
    "strong": {"rotate_deg": 30.0, "zoom": (-0.1, 0.4), "shift": 0.08, "brightness": 0.3, "contrast": 0.3,
               "saturation": 0.3},
}


def augment(batch_uint8, generator, strength=1.0, preset="standard", device=None):
    """Random flip, rotation, zoom, shift and colour jitter on an NHWC uint8 batch (see AUGMENT_PRESETS).

    ``batch_uint8``: a numpy array, or a uint8 tensor already on the device (``resident``).
    Returns float32 NCHW in [0, 1] on ``device`` (default: the CPU); ``preset="none"`` only converts.
    Every random number comes from ``generator`` (a CPU generator), in a fixed order per preset, so a run
    draws the same views on any device. On a GPU the uint8 batch is copied first and the warp and jitter
    run there: the CPU then only indexes the prepared array, and keeps up with the GPU. Black fill outside
    the frame matches the black border that the region-of-interest step leaves.
    """
    if preset not in AUGMENT_PRESETS:
        raise ValueError("--augment must be one of {}, got {!r}".format("|".join(AUGMENT_PRESETS), preset))
    x = batch_uint8 if torch.is_tensor(batch_uint8) else torch.from_numpy(batch_uint8)
    if device is not None and torch.device(device).type != "cpu" and x.device.type == "cpu":
        x = x.pin_memory().to(device, non_blocking=True)
    x = x.permute(0, 3, 1, 2).float().div_(255.0)
    x = x.contiguous(memory_format=torch.channels_last)  # about 1.5x faster convolutions on CPU
    cfg = AUGMENT_PRESETS[preset]
    if cfg is None:
        return x
    n = x.shape[0]

    def uniform(lo, hi):
        return (torch.rand(n, generator=generator) * (hi - lo) + lo).to(x.device)
    angle = uniform(-cfg["rotate_deg"], cfg["rotate_deg"]) * strength * math.pi / 180
    scale = 1.0 + uniform(*cfg["zoom"]) * strength
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0).to(x.device)
    shift = ((torch.rand(n, 2, generator=generator) * 2 - 1) * cfg["shift"] * strength).to(x.device)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1),
                         torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    brightness = (1.0 + uniform(-cfg["brightness"], cfg["brightness"]) * strength).view(n, 1, 1, 1)
    contrast = (1.0 + uniform(-cfg["contrast"], cfg["contrast"]) * strength).view(n, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * contrast + mean) * brightness
    if cfg["saturation"]:
        saturation = (1.0 + uniform(-cfg["saturation"], cfg["saturation"]) * strength).view(n, 1, 1, 1)
        gray = (x * LUMA.to(x)).sum(dim=1, keepdim=True)
        x = (x - gray) * saturation + gray
    return x.clamp_(0.0, 1.0)


def resident(images, device, share=0.25):
    """The prepared uint8 images kept where training runs: on a CUDA device, copied there once when they take at
    most ``share`` of its free memory (a fundus split at 224 px is about 0.5 GB), so a step copies nothing from
    the host; otherwise the numpy array itself, indexed per batch."""
    if torch.device(device).type != "cuda":
        return images
    free, _ = torch.cuda.mem_get_info(torch.device(device))
    if images.nbytes > share * free:
        return images
    return torch.from_numpy(images).to(device)


LUMA = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)  # ITU-R BT.601, as torchvision's grayscale


class Classify(nn.Module):
    """A classification loss on one network (teacher training, or a student without a teacher).

    ``criterion(logits, y)``: by default cross-entropy with ``label_smoothing``;
    ``training.losses.build_loss`` makes the focal and class-weighted ones.
    The part is reported as ``ce`` or ``focal`` after the criterion's kind.
    """

    def __init__(self, net, mean, std, label_smoothing=0.0, criterion=None):
        super().__init__()
        self.net, self.norm, self.label_smoothing = net, Normalize(mean, std), label_smoothing
        self.criterion = criterion if criterion is not None else losses.CrossEntropy(None, label_smoothing)

    def forward(self, views, y):
        logits = self.net(self.norm(views))
        loss = self.criterion(logits.float(), y)
        part = "focal" if isinstance(self.criterion, losses.FocalLoss) else "ce"
        return {"loss": loss, part: loss.detach(), "logits": logits.detach()}


class Distill(nn.Module):
    """Hinton logit distillation: L = a*CE(z_s, y) + (1-a)*T^2*KL(softmax(z_t/T) || softmax(z_s/T))."""

    def __init__(self, student, s_mean, s_std, teacher, t_mean, t_std, alpha=0.3, temperature=4.0,
                 teacher_size=None):
        super().__init__()
        self.net, self.norm = student, Normalize(s_mean, s_std)
        self.teacher, self.t_norm = teacher, Normalize(t_mean, t_std)
        self.alpha, self.temperature = alpha, temperature
        self.teacher_size = tuple(teacher_size) if teacher_size else None
        for p in self.teacher.parameters():
            p.requires_grad_(False)

    def train(self, mode=True):
        super().train(mode)
        self.teacher.eval()  # the teacher is frozen, BN statistics included
        return self

    def forward(self, views, y):
        z_s = self.net(self.norm(views))
        with torch.no_grad():
            t_views = views
            if self.teacher_size and tuple(views.shape[-2:]) != self.teacher_size:
                # the same view, at the size the teacher was trained on
                t_views = F.interpolate(views, size=self.teacher_size, mode="bilinear", align_corners=False,
                                        antialias=True)
            z_t = self.teacher(self.t_norm(t_views))
        ce = F.cross_entropy(z_s, y)
        kd = logit.logit_kd(z_s, z_t, self.temperature)
        loss = logit.combine(ce, kd, self.alpha)
        return {"loss": loss, "ce": ce.detach(), "kd": kd.detach(), "logits": z_s.detach()}


FIT_DEFAULTS = {
    "accumulate": 1,          # micro-batches per optimiser step
    "amp": "off",             # off | auto | bf16 | fp16: autocast on CUDA (GradScaler for fp16); fp32 on the CPU
    "patience": None,         # epochs without a better val_balanced_accuracy before stopping (keeps the best)
    "average": "none",        # none | swa | ema (training.averaging)
    "swa_start_epoch": None,  # first averaged epoch, from 1 (default: the last quarter)
    "ema_decay": 0.999,
    "augment": "standard",    # an AUGMENT_PRESETS name
    "run_dir": None,          # where last.pt is written after every epoch
    "resume": False,          # continue from run_dir/last.pt
}


def fit(task, images, targets, epochs, batch_size=32, lr=1e-3, weight_decay=0.05, seed=0,
        log=print, on_epoch=None, max_steps=None, **options):
    """Train ``task`` with AdamW and a warmed-up cosine schedule; returns per-epoch history.

    ``options`` (FIT_DEFAULTS lists them, with today's behaviour as the
    default): gradient accumulation, mixed precision, early stopping, weight
    averaging, the augmentation preset and resumable run folders; the loop is
    ``training.loop``. The returned list's ``kept`` attribute says which
    weights the task's network holds afterwards (last, best epoch, averaged).
    """
    unknown = sorted(set(options) - set(FIT_DEFAULTS))
    if unknown:
        raise TypeError("fit() got unknown options {}; known: {}".format(unknown, ", ".join(FIT_DEFAULTS)))
    from training import loop  # it imports this module
    return loop.run(task, images, targets, epochs, batch_size, lr, weight_decay, seed, log, on_epoch, max_steps,
                    dict(FIT_DEFAULTS, **options))


@torch.no_grad()
def predict_logits(net, prepared, spec, batch_size=64):
    """Logits for prepared uint8 images, normalised by the device reference ``normalize``."""
    net.eval()
    device = device_of(net)
    chunks = []
    for i in range(0, len(prepared), batch_size):
        x = torch.from_numpy(normalize(prepared[i:i + batch_size], spec))
        x = x.to(device).contiguous(memory_format=torch.channels_last)
        chunks.append(net(x).float().cpu().numpy())
    return np.concatenate(chunks) if chunks else np.zeros((0, 0), dtype=np.float32)
