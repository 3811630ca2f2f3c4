"""The training loop behind ``engine.fit``, in small pieces.

One optimiser step sees ``accumulate`` micro-batches of ``batch_size`` images
(losses divided by ``accumulate``, so the gradient is that of the mean over
all of them). The learning rate warms up, then follows a cosine over the
planned steps (``epochs``); ``max_steps`` stops the run early without changing
that schedule, so a stopped run resumed with ``resume=True`` ends with the same
weights as one that never stopped. With SWA the rate is held from the first
averaged epoch on (SWA averages at a constant rate). ``last.pt`` in ``run_dir``
holds everything the next step depends on: the task's weights, the optimiser,
the step, the averaging and early-stopping state, the RNG states, the
position within a stopped epoch and the history.
"""
import contextlib
import math
import os
import platform
import time

import numpy as np
import torch

from training import averaging, distributed, progress
from training.engine import augment, device_of, resident

BEST_METRIC = "val_balanced_accuracy"
AMP_MODES = ("off", "auto", "bf16", "fp16")


def resolve_amp(mode, device):
    """'off', 'bf16' or 'fp16': what autocast will use. Mixed precision is for CUDA only; the CPU runs fp32."""
    if mode not in AMP_MODES:
        raise ValueError("--amp must be one of {}, got {!r}".format("|".join(AMP_MODES), mode))
    if mode == "off" or torch.device(device).type != "cuda":
        return "off"
    if mode == "auto":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return mode


def hardware(device, amp="off"):
    """Which machine ran a run, for its provenance."""
    device = torch.device(device)
    info = {"device": device.type, "cuda_device": None, "cuda": torch.version.cuda,
            "torch": torch.__version__, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "platform": platform.platform(), "amp": resolve_amp(amp, device)}
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        info["cuda_device"] = torch.cuda.get_device_name(index)
        info["cuda_capability"] = ".".join(str(v) for v in torch.cuda.get_device_capability(index))
    return info


class Amp(object):
    """Autocast and (for fp16) a gradient scaler; both no-ops when the resolved mode is 'off'."""

    def __init__(self, mode, device):
        self.mode = resolve_amp(mode, device)
        self.dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(self.mode)
        self.scaler = torch.amp.GradScaler("cuda") if self.mode == "fp16" else None

    def autocast(self):
        return torch.autocast("cuda", dtype=self.dtype) if self.dtype else contextlib.nullcontext()

    def backward(self, loss):
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self, optimizer):
        if self.scaler:
            self.scaler.step(optimizer)
            self.scaler.update()
        else:
            optimizer.step()


def default_swa_start(epochs):
    """SWA over the last quarter of the epochs (at least the last one)."""
    return max(1, epochs - epochs // 4)


class History(list):
    """Per-epoch records; ``kept`` says which weights the run ended with."""
    kept = None


def trained_module(task):
    """The network a task trains (what is averaged, kept and saved)."""
    return getattr(task, "net", task)


class Run(object):
    def __init__(self, task, images, targets, epochs, batch_size, lr, weight_decay, seed, max_steps, options):
        self.task, self.net, self.epochs = task, trained_module(task), epochs
        self.images = resident(images, device_of(task))  # on a GPU: copied there once
        self.targets = torch.as_tensor(np.asarray(targets), dtype=torch.long)
        self.batch_size, self.accumulate = batch_size, max(1, int(options["accumulate"]))
        self.opts, self.device, self.lr = options, device_of(task), lr
        self.optimizer = torch.optim.AdamW([p for p in task.parameters() if p.requires_grad], lr=lr,
                                           weight_decay=weight_decay)
        self.ctx = distributed.current()
        self.model = self.wrap(task)
        per_process = len(distributed.shard(np.arange(len(images)), self.ctx.rank, self.ctx.world))
        self.steps_per_epoch = max(1, (per_process // batch_size) // self.accumulate)
        self.total = epochs * self.steps_per_epoch
        self.stop_at = self.total if max_steps is None else min(max_steps, self.total)
        self.warmup = min(self.steps_per_epoch, max(1, self.total // 10))
        self.amp = Amp(options["amp"], self.device)
        swa_start = options["swa_start_epoch"] or default_swa_start(epochs)
        self.averager = averaging.create(options["average"], self.net, swa_start, options["ema_decay"])
        self.hold_from = (swa_start - 1) * self.steps_per_epoch if self.averager.kind == "swa" else None
        # one generator for order and augmentation; under torchrun the order is drawn alike on every process
        # (then sharded) and the augmentation differently (seed + rank)
        self.seed = seed
        self.generator = torch.Generator().manual_seed(seed + self.ctx.rank)
        self.order_generator = torch.Generator().manual_seed(seed) if self.ctx.active else self.generator
        self.epoch, self.step, self.history, self.partial = 0, 0, History(), None
        self.best = {"score": -math.inf, "epoch": None, "state": None, "stale": 0}

    def wrap(self, task):
        """The task itself, or under torchrun the task in DistributedDataParallel (gradients averaged)."""
        if not self.ctx.active:
            return task
        from torch.nn.parallel import DistributedDataParallel
        cuda = self.device.type == "cuda"
        return DistributedDataParallel(task, device_ids=[self.device.index] if cuda else None)

    # -- schedule -------------------------------------------------------------------------------------
    def lr_at(self, step):
        if self.hold_from is not None:  # SWA: constant from its first epoch (and never below the warm-up)
            step = min(step, max(self.hold_from, self.warmup))
        if step < self.warmup:
            return self.lr * (step + 1) / self.warmup
        return 0.5 * self.lr * (1 + math.cos(math.pi * (step - self.warmup) / max(1, self.total - self.warmup)))

    # -- one optimiser step ---------------------------------------------------------------------------
    def train_step(self, order, s, tally):
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(self.step)
        self.optimizer.zero_grad(set_to_none=True)
        for m in range(self.accumulate):
            b = s * self.accumulate + m
            idx = np.sort(order[b * self.batch_size:(b + 1) * self.batch_size])
            views = augment(self.images[idx], self.generator, preset=self.opts["augment"], device=self.device)
            last = m == self.accumulate - 1  # under torchrun the gradients are averaged once, after the last
            with (contextlib.nullcontext() if last or not self.ctx.active else self.model.no_sync()):
                with self.amp.autocast():
                    out = self.model(views.to(self.device, non_blocking=True), self.targets[idx].to(self.device))
                self.amp.backward(out["loss"] / self.accumulate)
            tally["seen"] += len(idx)
            for k, v in out.items():
                if k != "logits":
                    tally[k] = tally.get(k, 0.0) + float(v.detach()) * len(idx)
        self.amp.step(self.optimizer)
        self.averager.after_step(self.net)
        self.step += 1

    def train_epoch(self):
        """Train one epoch (or the rest of a stopped one); returns (record, whether it finished)."""
        self.task.train()
        if self.partial is None:
            order = torch.randperm(len(self.images), generator=self.order_generator).numpy()
            # the whole permutation is kept (last.pt holds process 0's copy): each process shards it for itself
            self.partial = {"order": order, "next": 0, "tally": {"seen": 0}, "seconds": 0.0}
        part, start = self.partial, time.time()
        mine = distributed.shard(part["order"], self.ctx.rank, self.ctx.world)
        bar = progress.steps(self.steps_per_epoch, "epoch {}/{}".format(self.epoch + 1, self.epochs),
                             initial=part["next"]) if self.ctx.main else progress.Quiet()
        try:
            while part["next"] < self.steps_per_epoch and self.step < self.stop_at:
                self.train_step(mine, part["next"], part["tally"])
                part["next"] += 1
                tally = part["tally"]
                bar.update(loss=tally.get("loss", 0.0) / max(tally["seen"], 1),
                           img_s=round(tally["seen"] / max(part["seconds"] + time.time() - start, 1e-9), 1))
        finally:
            bar.close()
        part["seconds"] += time.time() - start
        tally = dict(part["tally"])
        seen = tally.pop("seen")
        # the whole job's rate (every process sees as many images)
        record = {"epoch": self.epoch + 1, "images_per_s": seen * self.ctx.world / max(part["seconds"], 1e-9)}
        record.update({k: v / max(seen, 1) for k, v in tally.items()})
        return record, part["next"] >= self.steps_per_epoch

    # -- epoch end: averaging, validation, early stopping ---------------------------------------------
    def end_epoch(self, record, finished, on_epoch):
        if finished:
            self.epoch += 1
            self.partial = None
            self.averager.end_epoch(self.net, self.epoch)
        with self.averager.applied(self.net):  # validate the weights that would be kept
            if on_epoch is not None:
                record.update(on_epoch(record["epoch"]) or {})
            if finished and self.opts["patience"] is not None:
                self.early_stopping(record)
        if not finished:
            record["partial"] = True
        self.history.append(record)

    def early_stopping(self, record):
        if BEST_METRIC not in record:
            raise ValueError("early stopping (--patience) needs a validation split: no {} after epoch {}".format(
                BEST_METRIC, record["epoch"]))
        if record[BEST_METRIC] > self.best["score"]:
            self.best.update(score=record[BEST_METRIC], epoch=record["epoch"], stale=0,
                             state={k: v.detach().cpu().clone() for k, v in self.net.state_dict().items()})
        else:
            self.best["stale"] += 1

    def should_stop(self):
        stale = self.opts["patience"] is not None and self.best["stale"] >= self.opts["patience"]
        return stale or self.epoch >= self.epochs or self.step >= self.stop_at

    def finish(self, log):
        """Load the weights to keep: the best epoch's (early stopping), else the average (if any)."""
        self.task.eval()
        if self.best["state"] is not None:
            self.net.load_state_dict(self.best["state"])
            kept = {"kept": "best epoch", "epoch": self.best["epoch"], BEST_METRIC: self.best["score"],
                    "average": self.averager.kind}
        elif self.averager.kind == "swa" and self.averager.count == 0:
            kept = {"kept": "last weights", "average": "swa", "snapshots": 0,
                    "why": "stopped before --swa-start-epoch {}".format(self.averager.start_epoch)}
        else:
            kept = {"kept": "averaged weights" if self.averager.kind != "none" else "last weights"}
            kept.update(self.averager.finish(self.net, self.bn_forward, self.bn_batches()))
        self.history.kept = kept
        log("kept: " + ", ".join("{}={}".format(k, v) for k, v in kept.items()))
        self.task.eval()

    def bn_forward(self, batch):
        self.task(batch[0].to(self.device), batch[1].to(self.device))

    def bn_batches(self):
        """The training images without augmentation, normalised by the task as in training."""
        for i in range(0, len(self.images), self.batch_size):
            yield augment(self.images[i:i + self.batch_size], None, preset="none"), self.targets[i:i + self.batch_size]

    # -- last.pt --------------------------------------------------------------------------------------
    def state_dict(self, generators=None):
        """Everything to resume; ``generators``: every process's augmentation state (torchrun), else this one's."""
        return {"processes": self.ctx.world,
                "generators": generators or [self.generator.get_state()],
                "task": self.task.state_dict(), "optimizer": self.optimizer.state_dict(),
                "scaler": self.amp.scaler.state_dict() if self.amp.scaler else None,
                "epoch": self.epoch, "step": self.step, "partial": self.partial,
                "averaging": {"kind": self.averager.kind, "state": self.averager.state_dict()},
                "best": self.best, "history": list(self.history),
                "rng": {"generator": self.generator.get_state(), "order": self.order_generator.get_state(),
                        "torch": torch.get_rng_state(),
                        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}}

    def load_state_dict(self, state, path):
        if state["averaging"]["kind"] != self.averager.kind:
            raise ValueError("{}: saved with --average {}, resumed with --average {}".format(
                path, state["averaging"]["kind"], self.averager.kind))
        try:
            self.task.load_state_dict(state["task"])
        except RuntimeError as exc:
            raise ValueError("{}: does not fit this model ({})".format(path, str(exc).splitlines()[0]))
        self.optimizer.load_state_dict(state["optimizer"])
        if self.amp.scaler and state["scaler"]:
            self.amp.scaler.load_state_dict(state["scaler"])
        self.epoch, self.step, self.partial, self.best = state["epoch"], state["step"], state["partial"], state["best"]
        self.averager.load_state_dict(state["averaging"]["state"])
        self.history = History(r for r in state["history"] if not r.get("partial"))
        processes = state.get("processes", 1)
        if processes != self.ctx.world:
            raise ValueError("{}: written by {} process(es), resumed with {}: resume with the same number".format(
                path, processes, self.ctx.world))
        self.generator.set_state(state.get("generators", [state["rng"]["generator"]])[self.ctx.rank])
        if self.order_generator is not self.generator:
            self.order_generator.set_state(state["rng"]["order"])
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])

    def save_last(self, run_dir):
        generators = distributed.gather(self.generator.get_state(), self.ctx)  # every process takes part
        if not self.ctx.main:
            return
        os.makedirs(run_dir, exist_ok=True)
        path = os.path.join(run_dir, "last.pt")
        torch.save(self.state_dict(generators), path + ".tmp")
        os.replace(path + ".tmp", path)  # a run killed while saving keeps the previous last.pt

    def resume(self, run_dir, log):
        path = os.path.join(run_dir, "last.pt")
        if not os.path.isfile(path):
            raise FileNotFoundError("{}: nothing to resume (no last.pt)".format(path))
        self.load_state_dict(torch.load(path, map_location="cpu", weights_only=False), path)
        log("resumed {} at epoch {} step {}{}".format(path, self.epoch, self.step,
                                                         " (mid-epoch)" if self.partial else ""))


def run(task, images, targets, epochs, batch_size, lr, weight_decay, seed, log, on_epoch, max_steps, options):
    if options["patience"] is not None and options["average"] == "swa":
        raise ValueError("--patience keeps one epoch's weights and --average swa keeps the average of many: "
                         "choose one")
    if options["resume"] and not options["run_dir"]:
        raise ValueError("resume needs the run folder that holds last.pt")
    loop = Run(task, images, targets, epochs, batch_size, lr, weight_decay, seed, max_steps, options)
    if options["resume"]:
        loop.resume(options["run_dir"], log)
    while not loop.should_stop():
        record, finished = loop.train_epoch()
        loop.end_epoch(record, finished, on_epoch)
        log("epoch {}/{}: ".format(record["epoch"], epochs) + "  ".join(
            "{}={:.4f}".format(k, v) for k, v in record.items() if k not in ("epoch", "partial")))
        if options["run_dir"]:
            loop.save_last(options["run_dir"])
    if loop.opts["patience"] is not None and loop.best["stale"] >= loop.opts["patience"]:
        log("early stop: no better {} for {} epochs".format(BEST_METRIC, loop.opts["patience"]))
    loop.finish(log)
    return loop.history

