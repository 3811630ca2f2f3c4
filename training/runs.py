"""Run folders: what ``retina-train teacher``/``distil`` write and every later verb reads.

A run folder holds ``checkpoint.pt`` (weights + everything needed to rebuild
and preprocess), ``config.json`` (the resolved configuration), ``split.csv``
(which image went where), ``history.json``, ``metrics.json`` and ``last.pt``
(to resume).
"""
import json
import os

import torch

from training import data as datalib
from training import nets
from training.inputs import channels_of
from training.provenance import data_provenance

def save_run(out_dir, net, arch, labels, spec, config, history, metrics, commands, samples, weights_used):
    os.makedirs(out_dir, exist_ok=True)
    datalib.write_manifest(samples, os.path.join(out_dir, "split.csv"))
    modality = config.get("modality", "fundus")
    checkpoint = {
        "arch": arch, "labels": labels, "spec": spec, "state_dict": net.state_dict(),
        "config": config, "metrics": metrics, "commands": commands, "weights": weights_used,
        "modality": modality, "data": data_provenance(config["data"], samples, modality),
    }
    torch.save(checkpoint, os.path.join(out_dir, "checkpoint.pt"))
    for name, obj in (("config.json", config), ("history.json", history), ("metrics.json", metrics)):
        with open(os.path.join(out_dir, name), "w") as f:
            json.dump(obj, f, indent=2)
            f.write("\n")


def run_folder(checkpoint):
    """The run folder of a checkpoint given as a folder or as its checkpoint.pt."""
    return checkpoint if os.path.isdir(checkpoint) else os.path.dirname(os.path.abspath(checkpoint))


def run_split(checkpoint):
    """The samples of a run's split.csv, or [] where the run kept none."""
    path = os.path.join(run_folder(checkpoint), "split.csv")
    return datalib.read_manifest(path) if os.path.isfile(path) else []


def load_checkpoint(run_dir):
    path = run_dir if run_dir.endswith(".pt") else os.path.join(run_dir, "checkpoint.pt")
    if not os.path.isfile(path):
        raise FileNotFoundError("{}: no checkpoint (run retina-train teacher/distil first)".format(path))
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    net, _, _ = nets.create_model(ckpt["arch"], len(ckpt["labels"]), ckpt["spec"]["resize"]["size"][0], "none",
                                  in_chans=channels_of(ckpt["spec"]))
    net.load_state_dict(ckpt["state_dict"])
    net.eval()
    return net, ckpt
