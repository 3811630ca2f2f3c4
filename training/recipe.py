"""The workstation recipe: train a teacher, distil a student, evaluate a run.

The parts it orchestrates live beside it: ``training.inputs`` (modality,
preprocessing rule, prepared splits), ``training.runs`` (run folders),
``training.provenance`` (commands, commit, data).
"""
import os
import time

import torch

from training import distributed, engine, loop, losses, nets
from training.inputs import input_spec, load_split, prepare, prepare_splits, run_inputs
from training.metrics import classification_report, format_report
from training.provenance import command_line, git_commit, with_split_command
from training.runs import load_checkpoint, run_split, save_run

def evaluate_net(net, part, spec, labels, title):
    logits = engine.predict_logits(net, part.images, spec)
    report = classification_report(part.targets, logits.argmax(1), labels)
    return report, format_report(report, title), logits


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
    """Train a network on the train split; with ``teacher_dir``, distil from that teacher. Under torchrun,
    one of several data-parallel processes (training.distributed): only process 0 logs and writes."""
    ctx = distributed.start()
    try:
        if ctx.active and getattr(args, "soft_labels", None):
            raise ValueError("--soft-labels replays a cache in one process; run it without torchrun")
        return _train(args, teacher_dir, distributed.quiet_unless_main(log, ctx), ctx)
    finally:
        distributed.stop()


def _train(args, teacher_dir, log, ctx):
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // ctx.world))
    torch.manual_seed(args.seed)
    samples = load_split(args.data, seed=args.seed)
    labels = sorted({s.label for s in samples})
    if getattr(args, "label_smoothing", None) is None:  # resolved here so config.json records the value used
        args.label_smoothing = 0.0 if getattr(args, "loss", "ce") == "focal" else 0.1
    task, net, arch, spec, weights_used, commands, (modality, reason) = build_task(args, labels, teacher_dir,
                                                                                    samples, log)
    set_loss(args, task, samples, labels)
    device = ctx.device()
    task.to(device)
    if not ctx.main:  # process 0 decodes and fills the cache first; the others then read it
        ctx.barrier()
    parts = prepare_splits(samples, labels, spec, args.cache_dir, log)
    if ctx.main:
        ctx.barrier()
    log("{} on {} ({}, roi {}, {}): train {} / val {} / test {} images, weights {}, device {}{}".format(
        arch, args.data, modality, spec["roi"]["kind"], spec["colour_order"], len(parts["train"].samples),
        len(parts["val"].samples), len(parts["test"].samples), weights_used, device,
        "; {} processes ({}), an optimiser step sees {} x {} x {} images".format(
            ctx.world, ctx.backend, args.batch_size, ctx.world, getattr(args, "accumulate", 1)) if ctx.active else ""))

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
    if not ctx.main:
        return metrics
    for name in ("val", "test"):
        if len(parts[name].samples):
            report, text, _ = evaluate_net(net, parts[name], spec, labels, "{} split ({})".format(name, arch))
            metrics[name] = report
            log(text)
    config = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    config.update({"arch": arch, "labels": labels, "spec": spec, "teacher": teacher_dir, "modality": modality,
                   "modality_reason": reason, "weights_used": weights_used, "commit": git_commit(),
                   "hardware": dict(loop.hardware(device, getattr(args, "amp", "off")), **ctx.describe())})
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
