"""Training and prediction loops over prepared (ROI-cropped, resized) uint8 images.

A task object's ``forward(views, y)`` returns a dict with ``loss`` and its
parts; one loop trains any task. Views are float [0, 1] NCHW tensors made by
``augment``; each network normalises them with its own mean/std, so a teacher
and a student with different data configs see the same pixels.
"""
import itertools
import math
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from edge.preprocess import normalize


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


def augment(batch_uint8, generator, strength=1.0):
    """Random flip, rotation, scale, shift, brightness and contrast on an NHWC uint8 batch.

    Returns float32 NCHW in [0, 1]. Black fill outside the frame matches the
    black border that the region-of-interest step leaves.
    """
    x = torch.from_numpy(batch_uint8).permute(0, 3, 1, 2).float().div_(255.0)
    x = x.contiguous(memory_format=torch.channels_last)  # about 1.5x faster convolutions on CPU
    n = x.shape[0]

    def uniform(lo, hi):
        return torch.rand(n, generator=generator) * (hi - lo) + lo
    angle = uniform(-15, 15) * strength * math.pi / 180
    scale = 1.0 + uniform(-0.1, 0.1) * strength
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * 0.05 * strength
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, shift[:, 0]], 1),
                         torch.stack([sin * flip, cos, shift[:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    brightness = (1.0 + uniform(-0.2, 0.2) * strength).view(n, 1, 1, 1)
    contrast = (1.0 + uniform(-0.2, 0.2) * strength).view(n, 1, 1, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * contrast + mean) * brightness
    return x.clamp_(0.0, 1.0)


class Classify(nn.Module):
    """Cross-entropy on one network (teacher training, or a student without a teacher)."""

    def __init__(self, net, mean, std, label_smoothing=0.0):
        super().__init__()
        self.net, self.norm, self.label_smoothing = net, Normalize(mean, std), label_smoothing

    def forward(self, views, y):
        logits = self.net(self.norm(views))
        ce = F.cross_entropy(logits, y, label_smoothing=self.label_smoothing)
        return {"loss": ce, "ce": ce.detach(), "logits": logits.detach()}


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
        t = self.temperature
        ce = F.cross_entropy(z_s, y)
        kd = F.kl_div(F.log_softmax(z_s / t, dim=1), F.log_softmax(z_t / t, dim=1),
                      reduction="batchmean", log_target=True) * (t * t)
        loss = self.alpha * ce + (1.0 - self.alpha) * kd
        return {"loss": loss, "ce": ce.detach(), "kd": kd.detach(), "logits": z_s.detach()}


def fit(task, images, targets, epochs, batch_size=32, lr=1e-3, weight_decay=0.05, seed=0,
        log=print, on_epoch=None, max_steps=None):
    """Train ``task`` with AdamW and a warmed-up cosine schedule; returns per-epoch history."""
    generator = torch.Generator().manual_seed(seed)
    device = device_of(task)
    params = [p for p in task.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, len(images) // batch_size)
    total = epochs * steps_per_epoch if max_steps is None else min(max_steps, epochs * steps_per_epoch)
    warmup = min(steps_per_epoch, max(1, total // 10))

    def lr_at(step):
        if step < warmup:
            return lr * (step + 1) / warmup
        return 0.5 * lr * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))
    targets = torch.as_tensor(np.asarray(targets), dtype=torch.long)
    history, step = [], 0
    for epoch in range(epochs):
        task.train()
        order = torch.randperm(len(images), generator=generator).numpy()
        sums, seen, start = {}, 0, time.time()
        for b in range(steps_per_epoch):
            if step >= total:
                break
            idx = np.sort(order[b * batch_size:(b + 1) * batch_size])
            views = augment(images[idx], generator).to(device, non_blocking=True)
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            out = task(views, targets[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            optimizer.step()
            step += 1
            seen += len(idx)
            for k, v in out.items():
                if k != "logits":
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(idx)
        record = {"epoch": epoch + 1, "images_per_s": seen / max(time.time() - start, 1e-9)}
        record.update({k: v / max(seen, 1) for k, v in sums.items()})
        if on_epoch is not None:
            record.update(on_epoch(epoch + 1) or {})
        history.append(record)
        log("epoch {}/{}: ".format(epoch + 1, epochs) + "  ".join(
            "{}={:.4f}".format(k, v) for k, v in record.items() if k != "epoch"))
        if step >= total:
            break
    task.eval()
    return history


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
