"""Self-supervised pretraining on the train split's images (no labels used): FCMAE for ConvNeXtV2 (here),
MAE for Vision Transformers (``training.mae``).

Fully Convolutional Masked AutoEncoder (Woo et al. 2023, ConvNeXt V2): a random ``mask_ratio`` of the
32x32-pixel patches is hidden, the encoder sees only the visible ones, and a light decoder predicts the
pixels of every patch; the loss is the mean squared error on per-patch-normalised pixels of the MASKED
patches only.

The paper's encoder uses sparse convolutions; here they are emulated densely, which gives the same
numbers: masked patches are zeroed in the input and the mask (at each feature map's resolution) is
re-applied after the stem, each downsampling layer and each block, and to the input of every Global
Response Norm (whose spatial L2 norm then counts visible positions only, like the sparse GRN). A 7x7
depth-wise convolution therefore reads zeros, never features, from a masked region. Stride-2 downsampling
windows never straddle a 32-pixel patch, so they cannot mix masked with visible positions.

Only the TRAIN side of the split is read: validation and test images never enter pretraining, so a
teacher initialised from it and measured on them has not seen them in any form.

Output folder: ``encoder.pt`` (the timm model's state dict without its classifier, loadable with
``--weights PATH`` or ``retina-train teacher --init DIR``), ``config.json`` (resolved options, hardware,
data provenance) and ``history.json`` (per-epoch loss).
"""
import json
import math
import os
import time

import numpy as np
import torch
from torch import nn

from training import distributed, engine, loop, nets
from training import inputs, progress, provenance

PATCH = 32  # ConvNeXt's total stride: one feature of the last stage per 32x32-pixel patch


METHODS = {"fcmae": 0.6, "mae": 0.75}  # method -> its default mask ratio (the papers')


def check_model(name):
    """(timm name, method): fcmae for ConvNeXtV2, mae for a ViT; a ValueError for anything else."""
    name = nets.resolve_name(name)
    if name.startswith(("vit", "deit", "test_vit")):
        return name, "mae"
    if name.startswith("convnextv2"):
        return name, "fcmae"
    raise ValueError("{}: pretraining is FCMAE for ConvNeXtV2 models (e.g. convnextv2_atto) and MAE for "
                     "Vision Transformers (e.g. vit_tiny_patch16_224)".format(name))


def build(name, method, args, spec):
    """The masked autoencoder around a fresh encoder, and its patch side in pixels."""
    encoder = nets._create(name, 0, args.image_size)
    if method == "mae":
        from training import mae
        model = mae.MAE(encoder, spec["mean"], spec["std"], decoder_dim=args.decoder_dim,
                        mask_ratio=args.mask_ratio)
        return model, model.patch
    return FCMAE(encoder, spec["mean"], spec["std"], decoder_dim=args.decoder_dim,
                 mask_ratio=args.mask_ratio), PATCH


def random_mask(n, grid, ratio, generator):
    """N x grid x grid float mask, 1 = masked: exactly round(ratio * grid^2) patches per image."""
    patches = grid * grid
    k = int(round(ratio * patches))
    noise = torch.rand(n, patches, generator=generator)
    order = noise.argsort(dim=1)
    mask = torch.zeros(n, patches)
    mask.scatter_(1, order[:, :k], 1.0)
    return mask.view(n, grid, grid)


def upsample_mask(mask, size):
    """N x g x g patch mask -> N x 1 x H x W at a feature map's (or the image's) resolution."""
    g = mask.shape[-1]
    scale = size // g
    return mask.repeat_interleave(scale, 1).repeat_interleave(scale, 2).unsqueeze(1)


def patchify(x, p=PATCH):
    """N x C x H x W -> N x L x (p*p*C), patches in row-major order."""
    n, c, h, w = x.shape
    x = x.reshape(n, c, h // p, p, w // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(n, (h // p) * (w // p), p * p * c)


def masked_loss(pred, target, mask, eps=1e-6):
    """FCMAE loss: per-patch-normalised pixel MSE averaged over the MASKED patches only.

    pred, target: N x L x D (patchified); mask: N x L (1 = masked)."""
    mean = target.mean(dim=-1, keepdim=True)
    var = target.var(dim=-1, keepdim=True)
    target = (target - mean) / (var + eps) ** 0.5
    per_patch = ((pred - target) ** 2).mean(dim=-1)
    return (per_patch * mask).sum() / mask.sum().clamp(min=1)


class FCMAE(nn.Module):
    """A timm ConvNeXtV2 encoder, sparse by dense masking, and a light decoder.

    Decoder: a 1x1 conv to ``decoder_dim``, masked positions replaced by a learned mask token, one
    ConvNeXtV2 block, and a 1x1 conv to PATCH*PATCH*3 values per patch."""

    def __init__(self, encoder, mean, std, decoder_dim=256, mask_ratio=0.6):
        super().__init__()
        from timm.models.convnext import ConvNeXtBlock
        self.encoder, self.mask_ratio = encoder, mask_ratio
        self.normalize = engine.Normalize(mean, std)
        self.proj = nn.Conv2d(encoder.num_features, decoder_dim, 1)
        self.mask_token = nn.Parameter(torch.zeros(1, decoder_dim, 1, 1))
        self.decoder = ConvNeXtBlock(decoder_dim, use_grn=True, conv_mlp=True, ls_init_value=None)
        self.pred = nn.Conv2d(decoder_dim, PATCH * PATCH * 3, 1)
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self._mask = None  # patch mask of the forward pass in progress, for the GRN hooks
        for stage in encoder.stages:
            for block in stage.blocks:
                block.mlp.grn.register_forward_pre_hook(self._mask_grn_input)

    def _at(self, x):
        return upsample_mask(1 - self._mask, x.shape[-1]).to(x.dtype)

    def _mask_grn_input(self, module, inputs):
        if self._mask is None:
            return None
        return (inputs[0] * self._at(inputs[0]),)

    def encode(self, x, mask):
        """Features of the last stage with masked patches contributing nothing (sparse emulation)."""
        self._mask = mask
        try:
            x = x * upsample_mask(1 - mask, x.shape[-1]).to(x.dtype)
            x = self.encoder.stem(x)
            x = x * self._at(x)
            for stage in self.encoder.stages:
                x = stage.downsample(x)
                x = x * self._at(x)
                for block in stage.blocks:
                    x = block(x)
                    x = x * self._at(x)
        finally:
            self._mask = None
        return x

    def decode(self, features, mask):
        x = self.proj(features)
        m = mask.unsqueeze(1).to(x.dtype)
        x = x * (1 - m) + self.mask_token.to(x.dtype) * m
        x = self.decoder(x)
        x = self.pred(x)  # N x (p*p*3) x g x g
        return x.flatten(2).transpose(1, 2)  # N x L x p*p*3, row-major patches like patchify

    def forward(self, views, mask):
        """views: N x 3 x H x W in [0, 1]; mask: N x g x g (1 = masked). Returns (loss, pred, target)."""
        x = self.normalize(views)
        pred = self.decode(self.encode(x, mask), mask)
        target = patchify(x)
        return masked_loss(pred, target, mask.flatten(1).to(pred.dtype)), pred, target


def lr_at(step, total, steps_per_epoch, lr):
    """The shape of training.loop's schedule: linear warm-up (an epoch, at most a tenth of the run), then a
    cosine to zero."""
    warmup = min(steps_per_epoch, max(1, total // 10))
    if step < warmup:
        return lr * (step + 1) / warmup
    return 0.5 * lr * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))


def encoder_state(encoder):
    """The encoder's state dict without the classifier (head.fc): what ``--weights PATH`` loads."""
    classifier = encoder.default_cfg.get("classifier", "head.fc")
    return {k: v.detach().cpu().clone() for k, v in encoder.state_dict().items()
            if not k.startswith(classifier + ".")}


def train_images(args, log=print):
    """(train samples, N x H x W x 3 uint8 images of the TRAIN side only, spec, data config)."""
    samples = inputs.load_split(args.data, seed=args.seed)
    train = [s for s in samples if s.split == "train"]
    if not train:
        raise ValueError("{}: no train images in the split".format(args.data))
    _, data_cfg, _ = nets.create_model(args.model, 1, args.image_size, "none")
    spec = inputs.input_spec(args.image_size, data_cfg, "fundus")
    labels = sorted({s.label for s in train})  # only to satisfy Prepared; the labels are never used
    part = inputs.prepare(train, labels, spec, args.cache_dir, log)
    log("pretraining on the train split only: {} images ({} val/test images left out)".format(
        len(train), len(samples) - len(train)))
    return train, part.images, spec, data_cfg, samples


def main(args, log=print):
    """retina-train pretrain; under torchrun one of several data-parallel processes (training.distributed)."""
    ctx = distributed.start()
    try:
        return _main(args, distributed.quiet_unless_main(log, ctx), ctx)
    finally:
        distributed.stop()


def _main(args, log, ctx):
    name, method = check_model(args.model)
    if args.mask_ratio is None:
        args.mask_ratio = METHODS[method]
    if not 0 < args.mask_ratio < 1:
        raise ValueError("--mask-ratio must be between 0 and 1, got {}".format(args.mask_ratio))
    torch.manual_seed(args.seed)
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // ctx.world))
    device = ctx.device()
    if not ctx.main:  # process 0 decodes and fills the cache first; the others then read it
        ctx.barrier()
    train, images, spec, data_cfg, samples = train_images(args, log)
    if ctx.main:
        ctx.barrier()
    model, patch = build(name, method, args, spec)
    if args.image_size % patch:
        raise ValueError("--image-size must be a multiple of {} (the masking patch), got {}".format(
            patch, args.image_size))
    run = Pretraining(model.to(device), images, args, device, ctx)
    if args.resume:
        run.resume(os.path.join(args.out, "last.pt"), name, log)
    grid = args.image_size // patch
    log("{} {} on {}: {} images, {}x{} patches of {} px, mask ratio {} ({} masked), batch {}, "
        "{} steps, device {}".format(method.upper(), name, args.data, len(images), grid, grid, patch,
                                      args.mask_ratio, int(round(args.mask_ratio * grid * grid)), run.batch,
                                      run.stop_at, device))
    start = time.time()
    run.train(grid, name, log)
    if not ctx.main:
        return run.history
    torch.save(encoder_state(model.encoder), os.path.join(args.out, "encoder.pt"))
    config = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    config.update({"method": method, "arch": name, "patch": patch, "image_size": args.image_size,
                   "spec": spec, "steps": run.step, "train_seconds": round(time.time() - start, 1),
                   "commands": provenance.with_split_command([provenance.command_line()], args.data),
                   "commit": provenance.git_commit(),
                   "hardware": dict(loop.hardware(device, "off"), **ctx.describe()),
                   "data": provenance.data_provenance(args.data, train),
                   "split_images": {"train": len(train), "left_out": len(samples) - len(train)}})
    for fname, obj in (("config.json", config), ("history.json", run.history)):
        with open(os.path.join(args.out, fname), "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")
    log("saved {} (load with retina-train teacher --model {} --init {})".format(
        os.path.join(args.out, "encoder.pt"), name, args.out))
    return run.history


def decay_groups(model, weight_decay):
    """AdamW parameter groups as the MAE and ConvNeXt-V2 pretraining code makes them: no weight decay on biases,
    norms and other 1-D parameters, nor on what the encoder lists in ``no_weight_decay()`` (a ViT's position
    embeddings and class token) or the decoders' mask tokens; ``weight_decay`` on every other weight."""
    encoder = getattr(model, "encoder", None)
    skip = {"encoder." + n for n in (encoder.no_weight_decay() if hasattr(encoder, "no_weight_decay") else ())}
    decay, plain = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        exempt = p.ndim <= 1 or name.endswith(".bias") or name in skip or name.endswith("mask_token")
        (plain if exempt else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": plain, "weight_decay": 0.0}]


class Pretraining(object):
    """The pretraining loop; ``last.pt`` after every epoch and at --max-steps holds all it depends on, so
    ``--resume`` ends with the same weights as a run that never stopped."""

    def __init__(self, model, images, args, device, ctx=distributed.SINGLE):
        self.model, self.images, self.args, self.device, self.ctx = model, images, args, device, ctx
        self.module = model  # what runs the step: the model, or under torchrun the model in DDP
        if ctx.active:
            from torch.nn.parallel import DistributedDataParallel
            # the encoder's own head (ConvNeXt's head.norm) never runs in a masked autoencoder
            self.module = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda"
                                                  else None, find_unused_parameters=True)
        self.optimizer = torch.optim.AdamW(decay_groups(model, args.weight_decay), lr=args.lr, betas=(0.9, 0.95))
        per_process = len(distributed.shard(np.arange(len(images)), ctx.rank, ctx.world))
        self.batch = min(args.batch_size, per_process)
        self.steps_per_epoch = max(1, per_process // self.batch)
        self.total = args.epochs * self.steps_per_epoch
        self.stop_at = self.total if args.max_steps is None else min(self.total, args.max_steps)
        # order alike on every process (then sharded), views and masks per process (seed + rank)
        self.generator = torch.Generator().manual_seed(args.seed + ctx.rank)
        self.order_generator = torch.Generator().manual_seed(args.seed) if ctx.active else self.generator
        self.epoch, self.step, self.history, self.partial = 0, 0, [], None

    def train(self, grid, name, log):
        self.model.train()
        while self.epoch < self.args.epochs and self.step < self.stop_at:
            if self.partial is None:
                order = torch.randperm(len(self.images), generator=self.order_generator).numpy()
                self.partial = {"order": order, "next": 0, "losses": [], "seen": 0, "seconds": 0.0}
            part, t0 = self.partial, time.time()
            mine = distributed.shard(part["order"], self.ctx.rank, self.ctx.world)  # the whole order is kept
            bar = progress.steps(self.steps_per_epoch, "epoch {}/{}".format(self.epoch + 1, self.args.epochs),
                                 initial=part["next"]) if self.ctx.main else progress.Quiet()
            while part["next"] < self.steps_per_epoch and self.step < self.stop_at:
                part["losses"].append(self.train_step(mine, part["next"], grid))
                part["next"] += 1
                part["seen"] += self.batch
                bar.update(loss=part["losses"][-1], img_s=round(part["seen"] / max(
                    part["seconds"] + time.time() - t0, 1e-9), 1))
            bar.close()
            part["seconds"] += time.time() - t0
            if part["next"] >= self.steps_per_epoch:
                self.end_epoch(log)
            self.save(name)

    def train_step(self, order, s, grid):
        idx = np.sort(order[s * self.batch:(s + 1) * self.batch])
        views = engine.augment(self.images[idx], self.generator, preset=self.args.augment, device=self.device)
        mask = random_mask(len(idx), grid, self.args.mask_ratio, self.generator).to(self.device)
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, self.total, self.steps_per_epoch, self.args.lr)
        loss = self.module(views, mask)[0]
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self.step += 1
        return loss.item()

    def end_epoch(self, log):
        part, self.partial = self.partial, None
        self.epoch += 1
        entry = {"epoch": self.epoch, "steps": self.step, "loss": round(float(np.mean(part["losses"])), 5),
                 "lr": lr_at(max(0, self.step - 1), self.total, self.steps_per_epoch, self.args.lr),
                 "seconds": round(part["seconds"], 2),
                 "images_per_second": round(part["seen"] * self.ctx.world / max(part["seconds"], 1e-9), 2)}
        self.history.append(entry)
        log("epoch {:3d}  loss {:.4f}  lr {:.2e}  {:.1f}s  {:.1f} images/s".format(
            self.epoch, entry["loss"], entry["lr"], part["seconds"], entry["images_per_second"]))

    def save(self, name):
        generators = distributed.gather(self.generator.get_state(), self.ctx)  # every process takes part
        if not self.ctx.main:
            return
        os.makedirs(self.args.out, exist_ok=True)
        path = os.path.join(self.args.out, "last.pt")
        state = {"arch": name, "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
                 "processes": self.ctx.world, "generators": generators,
                 "epoch": self.epoch, "step": self.step, "history": self.history, "partial": self.partial,
                 "rng": {"generator": self.generator.get_state(), "order": self.order_generator.get_state(),
                         "torch": torch.get_rng_state()}}
        torch.save(state, path + ".tmp")
        os.replace(path + ".tmp", path)  # a run killed while saving keeps the previous last.pt

    def resume(self, path, name, log):
        if not os.path.isfile(path):
            raise FileNotFoundError("{}: nothing to resume (no last.pt)".format(path))
        state = torch.load(path, map_location="cpu", weights_only=False)
        if state["arch"] != name:
            raise ValueError("{}: pretrained {}, not --model {}".format(path, state["arch"], name))
        processes = state.get("processes", 1)
        if processes != self.ctx.world:
            raise ValueError("{}: written by {} process(es), resumed with {}: resume with the same number".format(
                path, processes, self.ctx.world))
        self.model.load_state_dict(state["model"])
        try:
            self.optimizer.load_state_dict(state["optimizer"])
        except ValueError as exc:
            raise ValueError("{}: its optimiser state does not fit this version's parameter groups (weight decay "
                             "now spares biases and norms); start the pretraining again ({})".format(path, exc))
        self.epoch, self.step, self.history, self.partial = (state["epoch"], state["step"], state["history"],
                                                             state["partial"])
        # each process goes on with its own views and masks; the order is drawn alike on all of them
        self.generator.set_state(state.get("generators", [state["rng"]["generator"]])[self.ctx.rank])
        if self.order_generator is not self.generator:
            self.order_generator.set_state(state["rng"]["order"])
        torch.set_rng_state(state["rng"]["torch"])
        log("resumed {} at epoch {} step {}".format(path, self.epoch, self.step))


def init_weights(init, model):
    """``teacher --init DIR``: DIR/encoder.pt (or the file itself), refused when DIR pretrained another
    architecture. Returns (path, the pretraining run's summary)."""
    path = init if init.endswith(".pt") else os.path.join(init, "encoder.pt")
    if not os.path.isfile(path):
        raise FileNotFoundError("{}: no encoder.pt (run retina-train pretrain first)".format(path))
    cfg_path = os.path.join(os.path.dirname(os.path.abspath(path)), "config.json")
    cfg = {}
    if os.path.isfile(cfg_path):
        with open(cfg_path) as f:
            cfg = json.load(f)
    arch = nets.resolve_name(model)
    if cfg.get("arch") and cfg["arch"] != arch:
        raise ValueError("--init {} pretrained {}, not --model {}".format(init, cfg["arch"], arch))
    summary = {"encoder": os.path.abspath(path), "method": cfg.get("method"), "arch": cfg.get("arch"),
               "steps": cfg.get("steps"), "image_size": cfg.get("image_size"), "data": cfg.get("data", {}).get("source")}
    return path, summary
