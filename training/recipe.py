"""The workstation recipe as library functions: split, train a teacher, distil a student, evaluate.

A run folder holds ``checkpoint.pt`` (weights + everything needed to rebuild
and preprocess), ``config.json`` (the resolved configuration), ``split.csv``
(which image went where), ``history.json`` and ``metrics.json``.
"""
import json
import os
import shlex
import subprocess
import sys
import time
from collections import Counter
from typing import NamedTuple

import numpy as np
import torch

from models.bundle import check_preprocess, roi_parameters
from training import data as datalib
from training import engine, loop, losses, nets, splits
from training.metrics import classification_report, format_report

DATA_CAVEAT = ("fundus4: the public 'Eye Diseases Classification' compilation (IDRiD, ODIR and other "
               "public fundus sets); redistribution terms not verified: development and evaluation only")
SYNTHETIC_CAVEAT = ("SYNTHETIC OCT B-scans made by `retina-train synth-oct` (no patient data): a test of the "
                    "OCT path, not a clinical model")
OCT_CAVEAT = "OCT B-scans supplied by the user: licence as stated by their source (OCT2017: CC BY 4.0)"
SPLIT_RULES = {
    "fundus": "group-wise stratified: a patient's images (both eyes, any class) and all augmented copies of one "
              "source image stay on one side; checked in code",
    "oct": "group-wise stratified: the B-scans of one patient (OCT2017 CLASS-PATIENT-N names, DICOM PatientID, "
           "else Study/Series UID; any class) and every frame of a DICOM volume stay on one side; checked in code",
}
# the region of interest a modality gets unless --roi says otherwise
DEFAULT_ROI = {"fundus": "fundus_disc", "oct": "retina_band"}


def command_line():
    """The command that is running, as a user would retype it."""
    prog = os.path.basename(sys.argv[0])
    if prog in ("__main__.py", "cli.py"):
        prog = "python -m training"
    return " ".join([prog] + [shlex.quote(a) for a in sys.argv[1:]])


def record_split_command(split_csv):
    """Write ``<split>.csv.json`` beside a split so runs trained on it can record how it was made."""
    with open(split_csv + ".json", "w") as f:
        json.dump({"command": command_line()}, f)
        f.write("\n")


def with_split_command(commands, data):
    """``commands`` with the command that wrote the split CSV ``data`` first, where it was recorded."""
    sidecar = str(data) + ".json"
    if not os.path.isfile(sidecar):
        return list(commands)
    with open(sidecar) as f:
        split_command = json.load(f).get("command")
    return ([split_command] if split_command and split_command not in commands else []) + list(commands)


def git_commit():
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=here,
                                         stderr=subprocess.DEVNULL).decode().strip()
        dirty = subprocess.check_output(["git", "status", "--porcelain", "--untracked-files=no"],
                                        cwd=here, stderr=subprocess.DEVNULL).decode().strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def make_spec(image_size, mean, std, threshold=10, interpolation="area", roi=None, colour_order="RGB"):
    """The preprocessing rule written into the bundle; the device applies it verbatim.

    ``roi``: a roi object such as ``{"kind": "retina_band", "threshold": 20, "margin": 0.1}`` (its kind's
    other parameters are filled in from models.bundle.ROI_DEFAULTS); None is the fundus disc with
    ``threshold``. ``colour_order`` GREY takes one mean and one std value. Checked against the bundle's
    vocabulary here, so a wrong rule fails before training rather than at export.
    """
    roi = roi_parameters(roi if roi is not None else {"kind": "fundus_disc", "threshold": threshold})
    spec = {
        "colour_order": colour_order,
        "roi": roi,
        "resize": {"size": [image_size, image_size], "interpolation": interpolation},
        "scale": 1.0 / 255.0,
        "mean": list(mean),
        "std": list(std),
    }
    check_preprocess(spec)
    return spec


def resolve_modality(choice, samples, log=print):
    """(modality, reason): ``choice`` fundus|oct as given, or auto: from the data (``data.detect_modality``)."""
    if choice and choice != "auto":
        modality, reason = choice, "--modality {}".format(choice)
    else:
        modality, reason = datalib.detect_modality(samples)
    log("modality: {} ({})".format(modality, reason))
    return modality, reason


def input_spec(image_size, data_cfg, modality, roi=None, channels=3):
    """The preprocess section for a run: the modality's region of interest unless ``roi`` names one, RGB for
    3 channels or GREY (one channel; the network's mean and std averaged over its three values) for 1."""
    mean, std = list(data_cfg["mean"]), list(data_cfg["std"])
    colour_order = "GREY" if channels == 1 else "RGB"
    if channels == 1:
        mean, std = [sum(mean) / len(mean)], [sum(std) / len(std)]
    return make_spec(image_size, mean, std, roi={"kind": roi or DEFAULT_ROI[modality]}, colour_order=colour_order)


def load_split(data, fractions=None, seed=0):
    """Samples with a split: a CSV that already has one is taken as is (after a leak check)."""
    samples = datalib.load_samples(data)
    if all(s.split for s in samples):
        splits.check_no_leak(samples)
        return samples
    return splits.grouped_split(samples, fractions or splits.DEFAULT_FRACTIONS, seed=seed)


class Prepared(NamedTuple):
    """Images of one split, ROI-cropped and resized by the device reference, with integer targets."""
    samples: list
    images: np.ndarray  # N x H x W x 3 uint8 RGB
    targets: np.ndarray  # N int64 indices into the labels


def prepare(samples, labels, spec, cache_dir, log=print):
    images = datalib.prepare_images(samples, spec, cache_dir, log)
    return Prepared(samples, images, np.array([labels.index(s.label) for s in samples], dtype=np.int64))


def prepare_splits(samples, labels, spec, cache_dir, log):
    """split name -> Prepared, decoding every image once (and caching the result)."""
    everything = prepare(samples, labels, spec, cache_dir, log)
    out = {}
    for name in ("train", "val", "test"):
        idx = [i for i, s in enumerate(samples) if s.split == name]
        out[name] = Prepared([samples[i] for i in idx], everything.images[idx], everything.targets[idx])
    return out


def evaluate_net(net, part, spec, labels, title):
    logits = engine.predict_logits(net, part.images, spec)
    report = classification_report(part.targets, logits.argmax(1), labels)
    return report, format_report(report, title), logits


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


def data_provenance(source, samples, modality="fundus"):
    """What the model was trained and measured on, without machine-specific absolute paths."""
    counts = Counter(s.split or "all" for s in samples)
    image_root = os.path.commonpath([os.path.abspath(datalib.split_frame(s.path)[0]) for s in samples])
    return {"source": source, "image_root": os.path.relpath(image_root), "images": len(samples),
            "modality": modality, "split_counts": dict(sorted(counts.items())),
            "split_sha256": datalib.split_sha256(samples),
            "split_rule": SPLIT_RULES[modality], "licence": data_licence(samples, modality)}


def data_licence(samples, modality):
    """The licence line: synthetic data says so (synth-oct leaves SYNTHETIC.txt at the root of the set)."""
    for s in samples[:1]:
        folder = os.path.dirname(os.path.abspath(datalib.split_frame(s.path)[0]))
        for up in (folder, os.path.dirname(folder), os.path.dirname(os.path.dirname(folder))):
            if os.path.isfile(os.path.join(up, "SYNTHETIC.txt")):
                return SYNTHETIC_CAVEAT
    return DATA_CAVEAT if modality == "fundus" else OCT_CAVEAT


def run_folder(checkpoint):
    """The run folder of a checkpoint given as a folder or as its checkpoint.pt."""
    return checkpoint if os.path.isdir(checkpoint) else os.path.dirname(os.path.abspath(checkpoint))


def run_split(checkpoint):
    """The samples of a run's split.csv, or [] where the run kept none."""
    path = os.path.join(run_folder(checkpoint), "split.csv")
    return datalib.read_manifest(path) if os.path.isfile(path) else []


def channels_of(spec):
    return 1 if spec["colour_order"] == "GREY" else 3


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


def run_inputs(args, samples, teacher_ckpt=None, log=print):
    """(modality, how it was decided, roi kind or None, channels) of a training run: the options where given,
    else the teacher's (distillation), else the data's (--modality auto)."""
    choice = getattr(args, "modality", "auto") or "auto"
    roi, channels = getattr(args, "roi", None), getattr(args, "channels", None)
    if teacher_ckpt is not None and choice == "auto":
        modality, reason = teacher_ckpt.get("modality", "fundus"), "the teacher's"
        log("modality: {} ({})".format(modality, reason))
    else:
        modality, reason = resolve_modality(choice, samples, log)
    if teacher_ckpt is not None:
        roi = roi or teacher_ckpt["spec"]["roi"]["kind"]
        channels = channels or channels_of(teacher_ckpt["spec"])
    return modality, reason, roi, channels or 3


def build_task(args, labels, teacher_dir, samples=(), log=print):
    """The network to train and the task around it: Classify, or Distill from ``teacher_dir``.

    Returns (task, net, arch, spec, weights_used, commands so far, (modality, reason)).
    """
    commands = []
    teacher = teacher_ckpt = None
    if teacher_dir:
        teacher, teacher_ckpt = load_checkpoint(teacher_dir)
        if teacher_ckpt["labels"] != labels:
            raise ValueError("teacher labels {} differ from data labels {}".format(teacher_ckpt["labels"], labels))
        commands = list(teacher_ckpt["commands"])
    commands = with_split_command(commands, args.data) + [command_line()]
    modality, reason, roi, channels = run_inputs(args, samples, teacher_ckpt, log)
    if getattr(args, "init", None):  # a `retina-train pretrain` run: its encoder is the --weights, recorded
        from training import pretrain
        args.weights, args.init_run = pretrain.init_weights(args.init, args.model)
        log("init: {} ({} steps of {})".format(args.weights, args.init_run["steps"], args.init_run["method"]))
    net, data_cfg, weights_used = nets.create_model(args.model, len(labels), args.image_size, args.weights,
                                                    in_chans=channels)
    net = net.to(memory_format=torch.channels_last)
    spec = input_spec(args.image_size, data_cfg, modality, roi, channels)
    if teacher is None:
        task = engine.Classify(net, spec["mean"], spec["std"], label_smoothing=args.label_smoothing)
    else:
        t_spec = teacher_ckpt["spec"]
        for key, what in (("roi", "region of interest"), ("colour_order", "colour order")):
            if t_spec[key] != spec[key]:
                raise ValueError("teacher {} {} differs from the student's {}".format(what, t_spec[key], spec[key]))
        if teacher_ckpt.get("modality", "fundus") != modality:
            raise ValueError("teacher modality {} differs from the student's {}".format(
                teacher_ckpt.get("modality", "fundus"), modality))
        task = distil_task(args, net, spec, teacher.to(memory_format=torch.channels_last), t_spec)
    return task, net, nets.resolve_name(args.model), spec, weights_used, commands, (modality, reason)


def distil_task(args, net, spec, teacher, t_spec):
    """engine.Distill; the composed task of training.kd with --kd-config; the cache's with --soft-labels."""
    kd_config, soft_labels = getattr(args, "kd_config", None), getattr(args, "soft_labels", None)
    if soft_labels:
        from training import fkd
        if kd_config:
            raise ValueError("--soft-labels replays the teacher's probabilities only; feature terms "
                             "(--kd-config) need the online teacher")
        return fkd.SoftLabelDistill(net, spec["mean"], spec["std"], alpha=args.alpha, temperature=args.temperature)
    if kd_config:
        from training.kd import config as kdconfig, task as kdtask
        config = kdconfig.load(kd_config) if isinstance(kd_config, str) else kdconfig.resolve(kd_config)
        return kdtask.ComposedDistill(net, spec["mean"], spec["std"], teacher, t_spec["mean"], t_spec["std"],
                                      config, args.image_size, teacher_size=t_spec["resize"]["size"])
    return engine.Distill(net, spec["mean"], spec["std"], teacher, t_spec["mean"], t_spec["std"],
                          alpha=args.alpha, temperature=args.temperature, teacher_size=t_spec["resize"]["size"])


def fit_for(args, parts, labels, log):
    """engine.fit, or training.fkd.replay_fit over the --soft-labels cache (checked against this split)."""
    path = getattr(args, "soft_labels", None)
    if not path:
        return engine.fit
    from functools import partial
    from training import fkd
    cache = fkd.Cache(path)
    cache.check([s.path for s in parts["train"].samples], args.temperature, args.image_size)
    if cache.meta["labels"] != labels:
        raise ValueError("{}: classes {} differ from {}".format(path, cache.meta["labels"], labels))
    log("replaying {} cached views per image from {}".format(cache.epochs, path))
    return partial(fkd.replay_fit, cache=cache)


def train(args, teacher_dir=None, log=print):
    """Train a network on the train split; with ``teacher_dir``, distil from that teacher."""
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    torch.manual_seed(args.seed)
    samples = load_split(args.data, seed=args.seed)
    labels = sorted({s.label for s in samples})
    if getattr(args, "label_smoothing", None) is None:  # resolved here so config.json records the value used
        args.label_smoothing = 0.0 if getattr(args, "loss", "ce") == "focal" else 0.1
    task, net, arch, spec, weights_used, commands, (modality, reason) = build_task(args, labels, teacher_dir,
                                                                                    samples, log)
    set_loss(args, task, samples, labels)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    task.to(device)
    parts = prepare_splits(samples, labels, spec, args.cache_dir, log)
    log("{} on {} ({}, roi {}, {}): train {} / val {} / test {} images, weights {}, device {}".format(
        arch, args.data, modality, spec["roi"]["kind"], spec["colour_order"], len(parts["train"].samples),
        len(parts["val"].samples), len(parts["test"].samples), weights_used, device))

    def on_epoch(epoch):
        if not len(parts["val"].samples):
            return {}
        report = evaluate_net(net, parts["val"], spec, labels, "val")[0]
        return {"val_accuracy": report["accuracy"], "val_balanced_accuracy": report["balanced_accuracy"]}
    start = time.time()
    history = fit_for(args, parts, labels, log)(task, parts["train"].images, parts["train"].targets, args.epochs,
                         batch_size=args.batch_size, lr=args.lr, weight_decay=args.weight_decay,
                         seed=args.seed, log=log, on_epoch=on_epoch, max_steps=args.max_steps,
                         **fit_options(args))
    metrics = {"train_seconds": round(time.time() - start, 1), "kept": history.kept}
    for name in ("val", "test"):
        if len(parts[name].samples):
            report, text, _ = evaluate_net(net, parts[name], spec, labels, "{} split ({})".format(name, arch))
            metrics[name] = report
            log(text)
    config = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    config.update({"arch": arch, "labels": labels, "spec": spec, "teacher": teacher_dir, "modality": modality,
                   "modality_reason": reason, "weights_used": weights_used, "commit": git_commit(),
                   "hardware": loop.hardware(device, getattr(args, "amp", "off"))})
    save_run(args.out, net.cpu(), arch, labels, spec, config, history, metrics, commands, samples, weights_used)
    log("saved {}".format(os.path.join(args.out, "checkpoint.pt")))
    return metrics


def set_loss(args, task, samples, labels):
    """Give a Classify task the loss the options ask for (--loss, --focal-gamma, --class-weights)."""
    if isinstance(task, engine.Classify):
        train_targets = [labels.index(s.label) for s in samples if s.split == "train"]
        task.criterion = losses.build_loss(getattr(args, "loss", "ce"), labels, train_targets,
                                           getattr(args, "class_weights", "none"), getattr(args, "focal_gamma", 2.0),
                                           args.label_smoothing)


def fit_options(args):
    """engine.fit's options from the command line (absent ones keep fit's defaults)."""
    names = ("accumulate", "amp", "patience", "average", "swa_start_epoch", "ema_decay", "augment", "resume")
    options = {k: getattr(args, k) for k in names if getattr(args, k, None) is not None}
    options["run_dir"] = args.out
    return options


def evaluate(args, log=print):
    net, ckpt = load_checkpoint(args.checkpoint)
    samples = load_split(args.data) if args.data else run_split(args.checkpoint)
    chosen = [s for s in samples if args.split == "all" or s.split == args.split]
    if not chosen:
        raise ValueError("no images in split {!r}".format(args.split))
    part = prepare(chosen, ckpt["labels"], ckpt["spec"], args.cache_dir, log)
    report, text, _ = evaluate_net(net, part, ckpt["spec"], ckpt["labels"], "{} split".format(args.split))
    log(text)
    return report
