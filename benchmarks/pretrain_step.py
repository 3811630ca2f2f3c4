"""Time per pretraining step: MAE (ViT) and FCMAE (ConvNeXtV2) as `retina-train pretrain` builds them, and a
ViT's supervised step on all of its tokens. Prints its figures; never a test.

    .venv/bin/python benchmarks/pretrain_step.py                     # 224 px, batch 8, this CPU
    .venv/bin/python benchmarks/pretrain_step.py --threads 2 --steps 8
    .venv/bin/python benchmarks/pretrain_step.py --runs fcmae:convnextv2_atto mae:vit_small_patch16_224

A step is what the pretrain loop does per batch: forward through the masked model, backward, AdamW step, with
the models made by ``training.pretrain.build`` (decoder width 256; MAE masks 75 %, FCMAE 60 %, the defaults).
``full:<vit>`` is a supervised step of the same ViT on every token (classifier, cross-entropy): the cost an MAE
step, whose encoder sees a quarter of the tokens, is compared with. Time does not depend on pixel values here,
so the batch is random numbers. On a shared machine other processes only slow steps down: the minimum is the
figure to compare; the median and every step are printed too, with the load average.
(The idea and layout come from the MAE helper's script on branch ``mae``, rewritten for main's MAE.)
"""
import argparse
import os
import platform
import statistics
import sys
import time
from types import SimpleNamespace

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from training import nets, pretrain  # noqa: E402

MEAN, STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]
MASK_RATIO = {"mae": 0.75, "fcmae": 0.6}


def build(kind, name, size):
    """(module, loss of a batch of views, what it does) for one run."""
    generator = torch.Generator().manual_seed(0)
    if kind == "full":
        net = nets._create(name, 4, size)

        def loss_of(views):
            return torch.nn.functional.cross_entropy(net(views), torch.zeros(len(views), dtype=torch.long))
        return net, loss_of, "all {} tokens".format(net.patch_embed.num_patches)
    name, method = pretrain.check_model(name)
    if method != kind:
        raise SystemExit("{}: `retina-train pretrain` uses {} for it, not {}".format(name, method, kind))
    args = SimpleNamespace(image_size=size, decoder_dim=256, mask_ratio=MASK_RATIO[kind])
    model, patch = pretrain.build(name, method, args, {"mean": MEAN, "std": STD})
    grid = size // patch

    def loss_of(views):
        return model(views, pretrain.random_mask(len(views), grid, args.mask_ratio, generator))[0]
    return model, loss_of, "{}x{} patches of {} px, {:.0%} masked".format(grid, grid, patch, args.mask_ratio)


def time_steps(module, loss_of, views, steps, warmup):
    optimizer = torch.optim.AdamW(module.parameters(), lr=1e-4, betas=(0.9, 0.95))
    module.train()
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        loss = loss_of(views)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if i >= warmup:
            times.append((time.perf_counter() - t0) * 1000)
    return times


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", nargs="+", default=["fcmae:convnextv2_atto", "mae:vit_tiny_patch16_224",
                                                 "full:vit_tiny_patch16_224", "mae:vit_small_patch16_224",
                                                 "full:vit_small_patch16_224"],
                   help="KIND:MODEL with KIND fcmae, mae or full (default %(default)s)")
    p.add_argument("--size", type=int, default=224, help="image side in pixels (default %(default)s)")
    p.add_argument("--batch", type=int, default=8, help="images per step (default %(default)s)")
    p.add_argument("--steps", type=int, default=6, help="timed steps per run (default %(default)s)")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first (default %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    print("pretraining step: {} px, batch {}, {} timed steps after {} warm-up; torch {} on {} ({} threads, {} CPUs, "
          "load average {:.1f})".format(args.size, args.batch, args.steps, args.warmup, torch.__version__,
                                        platform.processor() or platform.machine(), torch.get_num_threads(),
                                        os.cpu_count(), os.getloadavg()[0]))
    torch.manual_seed(0)
    views = torch.rand(args.batch, 3, args.size, args.size)
    rows = []
    for run in args.runs:
        kind, name = run.split(":", 1)
        torch.manual_seed(0)
        module, loss_of, what = build(kind, name, args.size)
        params = sum(q.numel() for q in module.parameters()) / 1e6
        times = time_steps(module, loss_of, views, args.steps, args.warmup)
        rows.append((run, min(times)))
        print("{:<30} {:6.1f} M params  min {:7.0f} ms  median {:7.0f} ms  {:5.1f} images/s  ({})".format(
            run, params, min(times), statistics.median(times), args.batch * 1000 / min(times), what))
        print("{:<30} steps ms: {}".format("", " ".join("{:.0f}".format(t) for t in times)))
    for run, best in rows:
        kind, name = run.split(":", 1)
        full = [b for r, b in rows if r == "full:" + name]
        if kind == "mae" and full:
            print("{}: an MAE step costs {:.2f}x a full-token step of the same ViT".format(name, best / full[0]))
    print("load average at the end {:.1f}".format(os.getloadavg()[0]))


if __name__ == "__main__":
    main()
