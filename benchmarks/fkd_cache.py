"""Epoch time of distillation with the FKD soft-label cache against the online teacher. Prints its figures.

    python benchmarks/fkd_cache.py                                      # convnextv2_atto teacher, 224 px
    python benchmarks/fkd_cache.py --teacher-model vit_tiny_patch16_224 --count 64 --epochs 2
    python benchmarks/fkd_cache.py --teacher runs/teacher               # a trained teacher run instead

Both runs train the same student from the same initial weights with the same schedule (engine.fit's
AdamW + warmed-up cosine, same seed) on the same real images; the online run calls the teacher on every
batch (engine.Distill), the cached run replays views and probabilities made once (training.fkd). The
one-off cost of building the cache is printed apart. Then both students are evaluated on held-out
images (a different group-wise part): with a randomly initialised teacher the accuracy only shows that
the two schedules agree, not that the student is any good. Other processes on a shared machine only
slow epochs down: the best epoch of each run is the figure to compare; all epochs are printed.
"""
import argparse
import copy
import os
import platform
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path.insert(0, ROOT)

from training import data as datalib, engine, fkd, inputs, nets, runs, splits  # noqa: E402
from training.kd.teacher import Teacher  # noqa: E402


def load_images(args, spec):
    samples = datalib.scan_folder(args.images)
    samples = splits.grouped_split(samples, {"train": 0.75, "val": 0.25}, seed=0)
    labels = sorted({s.label for s in samples})
    rng = np.random.RandomState(0)
    parts = {}
    for name, count in (("train", args.count), ("val", max(8, args.count // 2))):
        chosen = [samples[i] for i in rng.permutation(len(samples)) if samples[i].split == name][:count]
        parts[name] = inputs.prepare(chosen, labels, spec, args.cache_dir, log=lambda *_: None)
    return labels, parts


def make_teacher(args, labels):
    if args.teacher:
        net, ckpt = runs.load_checkpoint(args.teacher)
        return net, ckpt["spec"]["mean"], ckpt["spec"]["std"], ckpt["spec"]["resize"]["size"], ckpt["arch"]
    net, cfg, _ = nets.create_model(args.teacher_model, len(labels), args.teacher_size, "none")
    return net.eval(), cfg["mean"], cfg["std"], [args.teacher_size] * 2, args.teacher_model + " (random init)"


def accuracy(net, part, spec):
    return float((engine.predict_logits(net, part.images, spec).argmax(1) == part.targets).mean())


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--images", default=os.path.join(ROOT, "..", "shared", "data", "fundus4"))
    p.add_argument("--teacher-model", default="convnextv2_atto")
    p.add_argument("--teacher", default=None, help="a trained teacher run folder (overrides --teacher-model)")
    p.add_argument("--teacher-size", type=int, default=224)
    p.add_argument("--student-model", default="tf_efficientnet_lite0")
    p.add_argument("--image-size", type=int, default=224)
    p.add_argument("--count", type=int, default=64, help="training images")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    p.add_argument("--cache-dir", default=os.path.join(ROOT, ".cache", "prepared"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    spec = inputs.make_spec(args.image_size, (0.5,) * 3, (0.5,) * 3)
    labels, parts = load_images(args, spec)
    teacher, t_mean, t_std, t_size, t_name = make_teacher(args, labels)
    teacher = teacher.to(memory_format=torch.channels_last)
    student0, s_cfg, s_weights = nets.create_model(args.student_model, len(labels), args.image_size, "imagenet")
    spec = inputs.make_spec(args.image_size, s_cfg["mean"], s_cfg["std"])
    train = parts["train"]
    quiet = lambda *_: None  # noqa: E731
    fit_args = dict(batch_size=args.batch_size, lr=1e-3, weight_decay=0.05, seed=0, log=quiet)

    student = copy.deepcopy(student0).to(memory_format=torch.channels_last)
    task = engine.Distill(student, s_cfg["mean"], s_cfg["std"], teacher, t_mean, t_std, teacher_size=t_size)
    online = engine.fit(task, train.images, train.targets, args.epochs, **fit_args)
    online_acc = accuracy(student, parts["val"], spec)

    start = time.time()
    t = Teacher(teacher, engine.Normalize(t_mean, t_std), t_size)
    params, probs = fkd.build(_Logits(t), train.images, args.epochs, 4.0, args.batch_size, 0, quiet)
    build_s = time.time() - start
    path = os.path.join(ROOT, ".cache", "fkd_bench.npz")
    fkd.save(path, params, probs, {"paths": [], "temperature": 4.0, "image_size": args.image_size, "labels": labels})
    student = copy.deepcopy(student0).to(memory_format=torch.channels_last)
    task = fkd.SoftLabelDistill(student, s_cfg["mean"], s_cfg["std"])
    cached = fkd.replay_fit(task, train.images, train.targets, args.epochs, cache=fkd.Cache(path), **fit_args)
    cached_acc = accuracy(student, parts["val"], spec)

    def epoch_s(history):
        return [len(train.images) // args.batch_size * args.batch_size / h["images_per_s"] for h in history]
    on_s, ca_s = epoch_s(online), epoch_s(cached)
    print("machine: {} ({} threads of {} CPUs), torch {}".format(platform.processor() or platform.machine(),
                                                                args.threads, os.cpu_count(), torch.__version__))
    print("teacher {} at {} px; student {} ({}) at {} px; {} training images, batch {}, {} epochs".format(
        t_name, t_size[0], args.student_model, s_weights, args.image_size, len(train.images), args.batch_size,
        args.epochs))
    print("epoch time online teacher  : " + ", ".join("{:.2f} s".format(s) for s in on_s))
    print("epoch time soft-label cache: " + ", ".join("{:.2f} s".format(s) for s in ca_s))
    print("speed-up (best epoch)      : {:.2f}x".format(min(on_s) / min(ca_s)))
    print("cache build (one-off)      : {:.2f} s for {} epochs of views ({:.2f} s per epoch)".format(
        build_s, args.epochs, build_s / args.epochs))
    print("held-out accuracy ({} images): online {:.3f}, cached {:.3f}".format(
        len(parts["val"].images), online_acc, cached_acc))


class _Logits(torch.nn.Module):
    def __init__(self, teacher):
        super().__init__()
        self.teacher = teacher

    def forward(self, views):
        return self.teacher(views)["logits"]


if __name__ == "__main__":
    main()
