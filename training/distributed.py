"""Several processes on one machine (or several GPUs) under ``torchrun``: data-parallel pretraining, teacher
and student training.

    torchrun --nproc_per_node 2 -m training teacher --data runs/split.csv --model convnextv2_atto --out runs/t

torchrun sets RANK, WORLD_SIZE, LOCAL_RANK and the rendezvous address; ``start()`` joins the process group
(gloo on the CPU, nccl on CUDA with one GPU per process) when WORLD_SIZE > 1, and otherwise changes nothing.

What each process does (``training.loop`` and ``training.recipe``):
- every process holds the whole prepared split in memory (process 0 fills the on-disk cache first, the others
  read it after a barrier) and draws the same per-epoch permutation; ``shard`` gives each its own part, padded
  as torch's DistributedSampler pads, so every process takes the same number of steps;
- the network is wrapped in DistributedDataParallel: gradients are averaged after each step (one all-reduce
  per optimiser step with ``--accumulate``), so the weights stay identical; the batch size is per process and
  one optimiser step sees batch-size x processes x accumulate images;
- augmentation differs per process (seed + rank); validation runs on every process on identical weights, so
  early stopping stops them all at the same epoch without a message; SWA's BatchNorm statistics are recomputed
  over the whole training split on each, identically;
- only process 0 logs, writes ``last.pt`` and the run folder.
"""
import os

import numpy as np
import torch
import torch.distributed as dist


class Context(object):
    def __init__(self, rank=0, world=1, local_rank=0, backend=None):
        self.rank, self.world, self.local_rank, self.backend = rank, world, local_rank, backend

    @property
    def main(self):
        return self.rank == 0

    @property
    def active(self):
        return self.world > 1

    def device(self):
        if torch.cuda.is_available():
            return torch.device("cuda", self.local_rank) if self.active else torch.device("cuda")
        return torch.device("cpu")

    def barrier(self):
        if self.active:
            dist.barrier()

    def describe(self):
        return {"processes": self.world, "backend": self.backend} if self.active else {"processes": 1}


SINGLE = Context()
_current = SINGLE


def current():
    return _current


def start():
    """Join torchrun's process group where WORLD_SIZE > 1; returns the Context (SINGLE otherwise)."""
    global _current
    world = int(os.environ.get("WORLD_SIZE", "1") or 1)
    if world <= 1:
        _current = SINGLE
        return _current
    if not dist.is_available():
        raise RuntimeError("WORLD_SIZE={} but this torch has no torch.distributed".format(world))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(local_rank)
    if not dist.is_initialized():
        try:
            dist.init_process_group(backend)
        except (RuntimeError, ValueError) as exc:
            raise RuntimeError("cannot join the torchrun process group ({} of {}, {}): {}".format(
                rank, world, backend, exc))
    _current = Context(rank, world, local_rank, backend)
    return _current


def stop():
    global _current
    if _current.active and dist.is_initialized():
        dist.destroy_process_group()
    _current = SINGLE


def gather(obj, ctx=None):
    """[every process's ``obj``] in rank order (all processes must call it); [obj] in one process."""
    ctx = ctx or current()
    if not ctx.active:
        return [obj]
    out = [None] * ctx.world
    dist.all_gather_object(out, obj)
    return out


def shard(order, rank, world):
    """This process's part of ``order``: every world-th index from ``rank``, the list first padded with its own
    head to a multiple of ``world`` (what DistributedSampler does), so every part has the same length."""
    order = np.asarray(order)
    if world <= 1:
        return order
    size = -(-len(order) // world) * world
    padded = np.concatenate([order, order[:size - len(order)]]) if size > len(order) else order
    return padded[rank:size:world]


def quiet_unless_main(log, ctx=None):
    ctx = ctx or current()
    return log if ctx.main else (lambda *_args, **_kw: None)
