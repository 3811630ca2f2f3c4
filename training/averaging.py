"""Weight averaging for the trained network: SWA (Izmailov et al., 2018) or an EMA of the weights.

The averaged weights are the ones kept: ``finish`` loads them into the network,
so whatever is evaluated, saved, exported or distilled from afterwards is the
average, never the last iterate. SWA averages the parameters of one snapshot per
epoch from ``start_epoch`` on (an equal-weight running mean) and then recomputes
the BatchNorm statistics over the training images, since averaged weights make
the running statistics of any one snapshot wrong (the paper's ``bn_update``). The
EMA (Polyak averaging, as timm's ModelEma) updates after every optimiser step,
``shadow = d * shadow + (1 - d) * weights``, over every floating-point tensor of
the state dict, BatchNorm statistics included.
"""
import contextlib

import torch
from torch import nn

KINDS = ("none", "swa", "ema")


def create(kind, net, swa_start_epoch=1, ema_decay=0.999):
    if kind in (None, "none"):
        return NoAverage()
    if kind == "swa":
        if swa_start_epoch < 1:
            raise ValueError("--swa-start-epoch counts from 1, got {}".format(swa_start_epoch))
        return SWA(net, swa_start_epoch)
    if kind == "ema":
        if not 0.0 < ema_decay < 1.0:
            raise ValueError("--ema-decay must be between 0 and 1, got {}".format(ema_decay))
        return EMA(net, ema_decay)
    raise ValueError("--average must be one of {}, got {!r}".format("|".join(KINDS), kind))


def _floating(state):
    return {k: v for k, v in state.items() if v.is_floating_point()}


class NoAverage(object):
    kind = "none"

    def after_step(self, net):
        pass

    def end_epoch(self, net, epoch):
        pass

    @contextlib.contextmanager
    def applied(self, net):
        """Within the block the network holds the weights that would be kept (here: its own)."""
        yield

    def finish(self, net, bn_forward=None, bn_batches=()):
        return {"average": "none"}

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass


class SWA(NoAverage):
    kind = "swa"

    def __init__(self, net, start_epoch):
        self.start_epoch, self.count, self.average = int(start_epoch), 0, None
        self.epochs = []

    def end_epoch(self, net, epoch):
        if epoch < self.start_epoch:
            return
        params = {k: p.detach() for k, p in net.named_parameters()}
        if self.average is None:
            self.average = {k: p.clone().float() for k, p in params.items()}
        else:
            for k, p in params.items():  # running mean: a_n = a_{n-1} + (w_n - a_{n-1}) / n
                average = self.average[k] = self.average[k].to(p.device)  # resumed averages load on the CPU
                average.add_(p.float() - average, alpha=1.0 / (self.count + 1))
        self.count += 1
        self.epochs.append(int(epoch))

    def finish(self, net, bn_forward=None, bn_batches=()):
        if self.average is None:
            raise ValueError("SWA took no snapshot: --swa-start-epoch {} is after the last epoch trained".format(
                self.start_epoch))
        with torch.no_grad():
            for k, p in net.named_parameters():
                p.copy_(self.average[k].to(p))
        images = recompute_bn(net, bn_forward, bn_batches) if bn_forward is not None else 0
        return {"average": "swa", "snapshots": self.count, "epochs": list(self.epochs),
                "bn_recomputed_images": images}

    def state_dict(self):
        return {"start_epoch": self.start_epoch, "count": self.count, "epochs": list(self.epochs),
                "average": None if self.average is None else {k: v.cpu() for k, v in self.average.items()}}

    def load_state_dict(self, state):
        self.start_epoch, self.count, self.epochs = state["start_epoch"], state["count"], list(state["epochs"])
        self.average = state["average"]


class EMA(NoAverage):
    kind = "ema"

    def __init__(self, net, decay):
        self.decay, self.updates = float(decay), 0
        self.shadow = {k: v.detach().clone() for k, v in _floating(net.state_dict()).items()}

    def after_step(self, net):
        with torch.no_grad():
            for k, v in _floating(net.state_dict()).items():
                self.shadow[k].mul_(self.decay).add_(v.detach().to(self.shadow[k]), alpha=1.0 - self.decay)
        self.updates += 1

    @contextlib.contextmanager
    def applied(self, net):
        own = {k: v.detach().clone() for k, v in _floating(net.state_dict()).items()}
        self._load(net, self.shadow)
        try:
            yield
        finally:
            self._load(net, own)

    @staticmethod
    def _load(net, tensors):
        with torch.no_grad():
            for k, v in _floating(net.state_dict()).items():
                v.copy_(tensors[k].to(v))

    def finish(self, net, bn_forward=None, bn_batches=()):
        self._load(net, self.shadow)
        return {"average": "ema", "decay": self.decay, "updates": self.updates}

    def state_dict(self):
        return {"decay": self.decay, "updates": self.updates, "shadow": {k: v.cpu() for k, v in self.shadow.items()}}

    def load_state_dict(self, state):
        self.decay, self.updates = state["decay"], state["updates"]
        self.shadow = {k: v.to(self.shadow[k]) for k, v in state["shadow"].items()}


def recompute_bn(net, forward, batches):
    """Reset every BatchNorm of ``net`` and re-estimate its statistics as the plain mean over ``batches``.

    ``forward(batch)`` runs the network on one batch (normalised as in training).
    Momentum None makes BatchNorm keep a cumulative average, as
    ``torch.optim.swa_utils.update_bn`` does. Returns how many images were seen.
    """
    norms = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return 0
    momenta = {}
    for m in norms:
        m.reset_running_stats()
        momenta[m], m.momentum = m.momentum, None
    was_training, seen = net.training, 0
    net.train()
    with torch.no_grad():
        for batch in batches:
            forward(batch)
            seen += len(batch[0]) if isinstance(batch, (tuple, list)) else len(batch)
    for m in norms:
        m.momentum = momenta[m]
    net.train(was_training)
    return seen
