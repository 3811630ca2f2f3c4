"""FKD-style soft-label cache (Shen and Xing, "A Fast Knowledge Distillation Framework for Visual
Recognition", ECCV 2022): the teacher runs once per stored augmented view, distillation replays them.

``sample_view_params`` + ``apply_view`` mirror ``engine.augment`` (same draws in the same order from
the same generator, same operations; tests hold them bit-identical), with every parameter of a view
kept: rotation angle, scale, flip, shift (x, y), brightness, contrast.

The cache (``.npz``, no pickle) holds, for E epochs and the N training images of a split:

    params  float32 (E, N, 7)   the view of image n in epoch e (PARAM_NAMES order)
    probs   float16 (E, N, K)   softmax(z_t / T) of the teacher on exactly that view
    meta    JSON                teacher run, temperature, image size, split sha256, labels, the image paths

``replay_fit`` trains a ``SoftLabelDistill`` on those views and probabilities: no teacher pass at all.
"""
import json
import math
import os
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from training import engine
from training.kd.logit import combine, soft_kd

PARAM_NAMES = ("angle_rad", "scale", "flip", "shift_x", "shift_y", "brightness", "contrast")


def sample_view_params(n, generator, strength=1.0):
    """(n, 7) float32 view parameters, drawn as ``engine.augment`` draws them."""
    def uniform(lo, hi):
        return torch.rand(n, generator=generator) * (hi - lo) + lo
    angle = uniform(-15, 15) * strength * math.pi / 180
    scale = 1.0 + uniform(-0.1, 0.1) * strength
    flip = torch.where(torch.rand(n, generator=generator) < 0.5, -1.0, 1.0)
    shift = (torch.rand(n, 2, generator=generator) * 2 - 1) * 0.05 * strength
    brightness = 1.0 + uniform(-0.2, 0.2) * strength
    contrast = 1.0 + uniform(-0.2, 0.2) * strength
    return torch.stack([angle, scale, flip, shift[:, 0], shift[:, 1], brightness, contrast], 1)


def apply_view(batch_uint8, params):
    """The views of an NHWC uint8 batch for (n, 7) parameters: float32 NCHW in [0, 1], as ``augment``."""
    x = torch.from_numpy(batch_uint8).permute(0, 3, 1, 2).float().div_(255.0)
    x = x.contiguous(memory_format=torch.channels_last)
    n = x.shape[0]
    angle, scale, flip, sx, sy, brightness, contrast = params.unbind(1)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos * flip, -sin, sx], 1), torch.stack([sin * flip, cos, sy], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * contrast.view(n, 1, 1, 1) + mean) * brightness.view(n, 1, 1, 1)
    return x.clamp_(0.0, 1.0)


@torch.no_grad()
def build(teacher, images, epochs, temperature, batch_size=64, seed=0, log=print):
    """(params, probs) for ``epochs`` views of every image; ``teacher(views)`` -> logits."""
    generator = torch.Generator().manual_seed(seed)
    device = engine.device_of(teacher)
    teacher.eval()
    params = np.zeros((epochs, len(images), len(PARAM_NAMES)), dtype=np.float32)
    probs = None
    for e in range(epochs):
        start = time.time()
        p = sample_view_params(len(images), generator)
        params[e] = p.numpy()
        for i in range(0, len(images), batch_size):
            views = apply_view(images[i:i + batch_size], p[i:i + batch_size]).to(device)
            z = teacher(views).float().cpu()
            if probs is None:
                probs = np.zeros((epochs, len(images), z.shape[1]), dtype=np.float16)
            probs[e, i:i + len(z)] = F.softmax(z / temperature, dim=1).numpy().astype(np.float16)
        log("soft labels: epoch {}/{}: {} views in {:.1f} s".format(e + 1, epochs, len(images), time.time() - start))
    return params, probs


def save(path, params, probs, meta):
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, params=params, probs=probs, meta=np.array(json.dumps(meta)))
    os.replace(tmp, path)


class Cache:
    """A loaded soft-label cache: ``params``, ``probs``, ``meta``; ``epoch(e)`` cycles past the last."""

    def __init__(self, path):
        if not os.path.isfile(path):
            raise FileNotFoundError("{}: no soft-label cache (build one with retina-train soft-labels)".format(path))
        with np.load(path, allow_pickle=False) as z:
            missing = {"params", "probs", "meta"} - set(z.files)
            if missing:
                raise ValueError("{}: not a soft-label cache, missing {}".format(path, sorted(missing)))
            self.params, self.probs, self.meta = z["params"], z["probs"], json.loads(str(z["meta"]))
        self.path = path

    @property
    def epochs(self):
        return self.params.shape[0]

    def check(self, paths, temperature, image_size):
        """Refuse a cache made for other images, another temperature or another image size."""
        meta = self.meta
        if list(meta["paths"]) != [os.path.abspath(p) for p in paths]:
            raise ValueError("{}: made for other training images ({} cached, {} here); rebuild it for this "
                             "split".format(self.path, len(meta["paths"]), len(paths)))
        if abs(meta["temperature"] - temperature) > 1e-9:
            raise ValueError("{}: probabilities are at T={}, --temperature is {}".format(
                self.path, meta["temperature"], temperature))
        if meta["image_size"] != image_size:
            raise ValueError("{}: views are {} px, --image-size is {}".format(self.path, meta["image_size"], image_size))

    def views(self, epoch, images, idx):
        """(views, teacher probabilities) of images ``idx`` (rows of ``images``) in ``epoch``."""
        e = epoch % self.epochs
        return (apply_view(images[idx], torch.from_numpy(self.params[e, idx])),
                torch.from_numpy(self.probs[e, idx].astype(np.float32)))


class SoftLabelDistill(nn.Module):
    """a*CE + (1-a)*T^2*KL(p_t || softmax(z_s/T)) with p_t read from the cache: no teacher pass."""

    def __init__(self, student, mean, std, alpha=0.3, temperature=4.0):
        super().__init__()
        self.net, self.norm = student, engine.Normalize(mean, std)
        self.alpha, self.temperature = alpha, temperature

    def forward(self, views, y, p_t):
        z_s = self.net(self.norm(views))
        ce = F.cross_entropy(z_s, y)
        kd = soft_kd(z_s, p_t, self.temperature)
        return {"loss": combine(ce, kd, self.alpha), "ce": ce.detach(), "kd": kd.detach(), "logits": z_s.detach()}


def replay_fit(task, images, targets, epochs, batch_size=32, lr=1e-3, weight_decay=0.05, seed=0,
               log=print, on_epoch=None, max_steps=None, *, cache, **options):
    """``engine.fit``'s optimiser and schedule (AdamW, warmed-up cosine), views and labels from the cache.

    Of ``engine.fit``'s other options only the defaults are supported here (the views are the cache's, so
    ``augment`` is ignored); others are refused rather than silently dropped.
    """
    from training.loop import History
    plain = {"accumulate": 1, "average": "none", "patience": None, "resume": False}  # amp: CPU runs fp32 here
    unsupported = {k: options[k] for k in plain if options.get(k, plain[k]) != plain[k]}
    if unsupported:
        raise ValueError("--soft-labels trains with the plain schedule; not supported with it: {}".format(
            ", ".join("{}={}".format(k, v) for k, v in sorted(unsupported.items()))))
    if epochs > cache.epochs:
        log("{}: {} cached epochs, training {}: views repeat from epoch {}".format(
            cache.path, cache.epochs, epochs, cache.epochs + 1))
    generator = torch.Generator().manual_seed(seed)
    device = engine.device_of(task)
    optimizer = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=lr, weight_decay=weight_decay)
    steps_per_epoch = max(1, len(images) // batch_size)
    total = epochs * steps_per_epoch if max_steps is None else min(max_steps, epochs * steps_per_epoch)
    warmup = min(steps_per_epoch, max(1, total // 10))
    targets = torch.as_tensor(np.asarray(targets), dtype=torch.long)
    history, step = History(), 0
    history.kept = {"kept": "last weights"}
    for epoch in range(epochs):
        task.train()
        order = torch.randperm(len(images), generator=generator).numpy()
        sums, seen, start = {}, 0, time.time()
        for b in range(min(steps_per_epoch, total - step)):
            idx = np.sort(order[b * batch_size:(b + 1) * batch_size])
            views, p_t = cache.views(epoch, images, idx)
            for group in optimizer.param_groups:
                group["lr"] = (lr * (step + 1) / warmup if step < warmup else
                               0.5 * lr * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup))))
            out = task(views.to(device), targets[idx].to(device), p_t.to(device))
            optimizer.zero_grad(set_to_none=True)
            out["loss"].backward()
            optimizer.step()
            step, seen = step + 1, seen + len(idx)
            for k, v in out.items():
                if k != "logits":
                    sums[k] = sums.get(k, 0.0) + float(v.detach()) * len(idx)
        record = {"epoch": epoch + 1, "images_per_s": seen / max(time.time() - start, 1e-9)}
        record.update({k: v / max(seen, 1) for k, v in sums.items()})
        record.update((on_epoch(epoch + 1) or {}) if on_epoch else {})
        history.append(record)
        log("epoch {}/{}: ".format(epoch + 1, epochs) + "  ".join(
            "{}={:.4f}".format(k, v) for k, v in record.items() if k != "epoch"))
        if step >= total:
            break
    task.eval()
    return history


def default_path(teacher_dir):
    return os.path.join(teacher_dir if os.path.isdir(teacher_dir) else os.path.dirname(teacher_dir),
                        "soft_labels.npz")


def main(args, log=print):
    """retina-train soft-labels: the teacher's probabilities on --epochs views of every training image."""
    from training import data as datalib, inputs, provenance, runs
    from training.kd.teacher import Teacher
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    samples = inputs.load_split(args.data, seed=args.seed)
    labels = sorted({s.label for s in samples})
    net, ckpt = runs.load_checkpoint(args.teacher)
    if ckpt["labels"] != labels:
        raise ValueError("teacher labels {} differ from data labels {}".format(ckpt["labels"], labels))
    t_spec = ckpt["spec"]
    spec = inputs.make_spec(args.image_size, t_spec["mean"], t_spec["std"])  # the student's prepared images
    train = inputs.prepare_splits(samples, labels, spec, args.cache_dir, log)["train"]
    teacher = Teacher(net.to(memory_format=torch.channels_last), engine.Normalize(t_spec["mean"], t_spec["std"]),
                      t_spec["resize"]["size"])
    logits_of = _Logits(teacher).to("cuda" if torch.cuda.is_available() else "cpu")
    start = time.time()
    params, probs = build(logits_of, train.images, args.epochs, args.temperature, args.batch_size, args.seed, log)
    out = args.out or default_path(args.teacher)
    meta = {"teacher": os.path.abspath(args.teacher), "teacher_arch": ckpt["arch"], "labels": labels,
            "temperature": args.temperature, "image_size": args.image_size, "epochs": args.epochs,
            "seed": args.seed, "param_names": list(PARAM_NAMES), "command": provenance.command_line(),
            "split_sha256": datalib.split_sha256(samples),
            "paths": [os.path.abspath(s.path) for s in train.samples], "seconds": round(time.time() - start, 1)}
    save(out, params, probs, meta)
    log("wrote {}: {} epochs x {} views, {} classes (float16), in {:.1f} s".format(
        out, args.epochs, len(train.images), probs.shape[-1], time.time() - start))
    return out


class _Logits(nn.Module):
    def __init__(self, teacher):
        super().__init__()
        self.teacher = teacher

    def forward(self, views):
        return self.teacher(views)["logits"]

