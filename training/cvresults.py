"""Predictions and figures of a cross-validation run (training.cv).

predictions.csv is the contract with `retina-train report`: one row per (test image, model),
columns ``path,label,group,fold,model,temperature,p_<class>...`` (softmax probabilities at temperature 1,
classes in the checkpoint's label order; paths relative to the CSV's folder). ``temperature`` is the one
fitted on that fold's val split for that model (its test images never seen), so the calibrated figures
of a CV run are what a bundle calibrated the same way would show; files written before it have none (1).
Beside each one, val_predictions.csv holds the same columns for that fold's val images: what
``rule_figures`` chooses the fold's decision on (calibrate's own search), so cv.json also gives the figures
at the decision rule, the ones the shipped bundle prints.
"""
import csv
import os
from collections import defaultdict

import numpy as np

from training.calibration import ECE_BINS, at_temperature, ece, fit_temperature
from training.sources import SOURCE_KINDS, source_kind

FIXED_COLUMNS = ["path", "label", "group", "fold", "model", "temperature"]
FOLD_METRICS = ("accuracy", "balanced_accuracy", "glaucoma_recall", "ece", "ece_calibrated")
# at the bundle's decision, chosen per fold on its val predictions as `retina-train calibrate` chooses it
RULE_METRICS = ("accuracy_rule", "balanced_accuracy_rule", "glaucoma_recall_rule", "referral_sensitivity",
                "referral_specificity")


def write_fold_predictions(run_dir, samples, fold, model, cache_dir, path, log=print):
    """Predict the fold's test images with the run's checkpoint; write them (atomically) to ``path``."""
    from edge.postprocess import softmax
    from training import engine, inputs, runs
    net, ckpt = runs.load_checkpoint(run_dir)
    labels = ckpt["labels"]
    # the whole fold's array, so the cache the training filled is reused; then its test rows
    part = inputs.prepare(samples, labels, ckpt["spec"], cache_dir, log)
    test = [i for i, s in enumerate(samples) if s.split == "test"]
    val = [i for i, s in enumerate(samples) if s.split == "val"]
    probs = softmax(engine.predict_logits(net, part.images[test], ckpt["spec"]).astype(np.float64))
    temperature, how = 1.0, "no val images: T = 1"
    if val:
        try:
            temperature = fit_temperature(engine.predict_logits(net, part.images[val], ckpt["spec"]),
                                          part.targets[val])
            how = "fitted on {} val images".format(len(val))
        except ValueError as exc:  # a network that learnt nothing: say so rather than fail the fold
            how = "not fitted, T = 1 ({})".format(exc)
    rows = [[s.path, s.label, s.group, fold, model, "{:.6f}".format(temperature)] + [_p(p) for p in pr]
            for s, pr in zip([samples[i] for i in test], probs)]
    if val:  # the fold's val predictions too: what a decision rule or a threshold is chosen on, per fold
        val_probs = softmax(engine.predict_logits(net, part.images[val], ckpt["spec"]).astype(np.float64))
        write_predictions([[s.path, s.label, s.group, fold, model, "{:.6f}".format(temperature)] + [_p(p) for p in pr]
                           for s, pr in zip([samples[i] for i in val], val_probs)], labels, val_path(path))
    write_predictions(rows, labels, path)
    log("fold {} {}: {} test predictions -> {} (temperature {:.4f}, {})".format(
        fold, model, len(rows), path, temperature, how))


def val_path(path):
    """fold<k>/<model>/val_predictions.csv beside its predictions.csv (same columns, the fold's val images)."""
    return os.path.join(os.path.dirname(path), "val_" + os.path.basename(path))


def _p(p):
    """A probability with enough digits that a temperature can be applied to it afterwards."""
    return "{:.9g}".format(p)


def write_predictions(rows, labels, path):
    base = os.path.dirname(os.path.abspath(path))
    os.makedirs(base, exist_ok=True)
    with open(path + ".tmp", "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(FIXED_COLUMNS + ["p_" + lab for lab in labels])
        for row in rows:
            writer.writerow([os.path.relpath(os.path.abspath(row[0]), base)] + list(row[1:]))
    os.replace(path + ".tmp", path)


def read_predictions(path):
    """(labels, rows) with rows = dicts: path (absolute), label, group, fold (int), model, temperature, probs."""
    base = os.path.dirname(os.path.abspath(path))
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        labels = [c[2:] for c in reader.fieldnames if c.startswith("p_")]
        rows = [{"path": os.path.normpath(os.path.join(base, r["path"])), "label": r["label"], "group": r["group"],
                 "fold": int(r["fold"]), "model": r["model"], "temperature": float(r.get("temperature") or 1.0),
                 "probs": [float(r["p_" + lab]) for lab in labels]}
                for r in reader]
    return labels, rows


def gather(out_dir, folds, models):
    """Every fold's and model's predictions -> out_dir/predictions.csv; returns (labels, rows)."""
    labels, rows = None, []
    for fold in folds:
        for model in models:
            path = os.path.join(out_dir, "fold{}".format(fold), model, "predictions.csv")
            if not os.path.isfile(path):
                continue
            fold_labels, fold_rows = read_predictions(path)
            if labels is not None and fold_labels != labels:
                raise ValueError("{}: classes {} differ from {}".format(path, fold_labels, labels))
            labels = fold_labels
            rows += fold_rows
    if labels is None:
        raise RuntimeError("{}: no fold predictions found".format(out_dir))
    write_predictions([[r["path"], r["label"], r["group"], r["fold"], r["model"], "{:.6f}".format(r["temperature"])] +
                       [_p(p) for p in r["probs"]] for r in rows],
                      labels, os.path.join(out_dir, "predictions.csv"))
    return labels, rows


def gather_val(out_dir, folds, models):
    """{(model, fold): rows} of every fold model's val_predictions.csv that exists (runs before it have none)."""
    found = {}
    for fold in folds:
        for model in models:
            path = val_path(os.path.join(out_dir, "fold{}".format(fold), model, "predictions.csv"))
            if os.path.isfile(path):
                found[model, fold] = read_predictions(path)[1]
    return found


def _log_probs(rows):
    """log p: the logits up to a per-row constant, which neither the temperature's argmax, the offsets nor
    the softmax see."""
    return np.log(np.clip(np.array([r["probs"] for r in rows], dtype=np.float64), 1e-300, None))


def rule_figures(labels, val_rows, test_rows):
    """The decision (temperature, offsets lifting glaucoma, referral threshold for 95 % sensitivity, normal not
    referred) chosen on one fold's val rows by calibrate's own search, scored on that fold's test rows."""
    from training import calibrate
    from training import calibration as cal
    negative = [calibrate.DEFAULT_NEGATIVE] if calibrate.DEFAULT_NEGATIVE in labels else []
    lift = calibrate.DEFAULT_LIFT if calibrate.DEFAULT_LIFT in labels else None
    val_targets = np.array([labels.index(r["label"]) for r in val_rows])
    test_targets = np.array([labels.index(r["label"]) for r in test_rows])
    rule, _ = calibrate.choose(_log_probs(val_rows), val_targets, labels, negative, lift,
                               calibrate.DEFAULT_SENSITIVITY, log=lambda *a: None)
    f = cal.score(_log_probs(test_rows), test_targets, rule)
    referral = f.get("referral") or {}
    return {"accuracy_rule": f["rule"]["accuracy"], "balanced_accuracy_rule": f["rule"]["balanced_accuracy"],
            "glaucoma_recall_rule": f["rule"]["recall"].get("glaucoma"),
            "referral_sensitivity": referral.get("sensitivity"), "referral_specificity": referral.get("specificity"),
            "rule": {"temperature": rule.temperature, "offsets": dict(zip(labels, rule.offsets.tolist())),
                     "threshold": rule.threshold}}


def figures(labels, rows):
    """accuracy, balanced accuracy, glaucoma recall (None without that class), ECE at T = 1 and at each row's
    fold temperature, and n of some rows."""
    probs = np.array([r["probs"] for r in rows], dtype=np.float64)
    calibrated = at_temperature(probs, np.array([[r.get("temperature", 1.0)] for r in rows]))
    targets = np.array([labels.index(r["label"]) for r in rows])
    predicted = probs.argmax(axis=1)
    recalls = [float((predicted[targets == c] == c).mean()) for c in range(len(labels)) if (targets == c).any()]
    glaucoma = labels.index("glaucoma") if "glaucoma" in labels else None
    has_glaucoma = glaucoma is not None and (targets == glaucoma).any()
    return {"n": len(rows), "accuracy": float((predicted == targets).mean()),
            "balanced_accuracy": float(np.mean(recalls)),
            "glaucoma_recall": float((predicted[targets == glaucoma] == glaucoma).mean()) if has_glaucoma else None,
            "ece": ece(probs, targets, ECE_BINS), "ece_calibrated": ece(calibrated, targets, ECE_BINS)}


def mean_sd(values):
    values = [v for v in values if v is not None]
    if not values:
        return {"mean": None, "sd": None}
    sd = float(np.std(values, ddof=1)) if len(values) > 1 else 0.0
    return {"mean": float(np.mean(values)), "sd": sd}


def summarize(gathered, source_only=None, val=None):
    """cv.json: per model, per fold and mean +- sd (sd over folds, n-1), overall and per source kind; with
    ``val`` (gather_val), also the figures at a decision chosen on each fold's val (RULE_METRICS)."""
    labels, rows = gathered
    val = val or {}
    by = defaultdict(list)
    for r in rows:
        by[r["model"], r["fold"]].append(r)
    models = sorted({m for m, _ in by}, key=lambda m: ("teacher", "student", "labels_only").index(m)
                    if m in ("teacher", "student", "labels_only") else 9)
    out = {"labels": labels, "ece_bins": ECE_BINS, "folds": sorted({f for _, f in by}), "models": {}}
    for model in models:
        per_fold = {f: figures(labels, by[model, f]) for f in out["folds"] if by.get((model, f))}
        kinds = {}
        for kind in SOURCE_KINDS:
            kind_folds = {f: [r for r in by[model, f] if source_kind(r["path"]) == kind] for f in per_fold}
            kind_folds = {f: figures(labels, v) for f, v in kind_folds.items() if v}
            if kind_folds:
                kinds[kind] = {"n": sum(v["n"] for v in kind_folds.values()),
                               **{m: mean_sd([v[m] for v in kind_folds.values()]) for m in FOLD_METRICS}}
        out["models"][model] = {"per_fold": {str(f): v for f, v in per_fold.items()},
                                **{m: mean_sd([v[m] for v in per_fold.values()]) for m in FOLD_METRICS},
                                "per_source_kind": kinds}
        ruled = {}
        for f in per_fold:
            if val.get((model, f)):
                try:
                    ruled[f] = per_fold[f]["at_rule"] = rule_figures(labels, val[model, f], by[model, f])
                except ValueError as exc:  # a network that learnt nothing has no temperature to fit: say so
                    per_fold[f]["at_rule"] = {"skipped": str(exc)}
        if ruled:
            out["models"][model]["at_rule"] = dict({m: mean_sd([v[m] for v in ruled.values()]) for m in RULE_METRICS},
                                                   folds=len(ruled))
    if "student" in out["models"] and "labels_only" in out["models"]:
        s, b = out["models"]["student"]["per_fold"], out["models"]["labels_only"]["per_fold"]
        gains = [s[f]["accuracy"] - b[f]["accuracy"] for f in s if f in b]
        out["kd_gain_accuracy"] = mean_sd(gains)
    if source_only is not None:
        out["source_only_classifier"] = source_only
    return out


def _pm(entry, scale=100.0):
    if entry["mean"] is None:
        return "n/a"
    return "{:.1f} +- {:.1f}".format(entry["mean"] * scale, entry["sd"] * scale)


def format_summary(summary):
    lines = ["cross-validation, {} folds (mean +- sd over folds, %):".format(len(summary["folds"])),
             "  {:<12} {:>14} {:>14} {:>14} {:>14} {:>14}".format("model", "accuracy", "balanced acc",
                                                                 "glaucoma rec", "ECE (T=1)", "ECE (fold T)")]
    for model, m in summary["models"].items():
        lines.append("  {:<12} ".format(model) + " ".join("{:>14}".format(_pm(m[k])) for k in FOLD_METRICS))
        for kind, k in m["per_source_kind"].items():
            lines.append("    {:<10} n={:<5}".format(kind, k["n"]) +
                         " ".join("{:>14}".format(_pm(k[x])) for x in FOLD_METRICS))
    ruled = [(model, m["at_rule"]) for model, m in summary["models"].items() if "at_rule" in m]
    if ruled:
        lines.append("  at the decision chosen on each fold's val (as `calibrate` chooses it: temperature, offsets "
                     "lifting glaucoma, referral at 95 % val sensitivity):")
        lines.append("  {:<12} {:>14} {:>14} {:>14} {:>14} {:>14}".format(
            "model", "accuracy", "balanced acc", "glaucoma rec", "refer sens", "refer spec"))
        for model, r in ruled:
            lines.append("  {:<12} ".format(model) + " ".join("{:>14}".format(_pm(r[k])) for k in RULE_METRICS) +
                         ("" if r["folds"] == len(summary["folds"]) else "  ({} folds)".format(r["folds"])))
    if "kd_gain_accuracy" in summary:
        lines.append("  KD gain (student - labels_only accuracy): {} points".format(_pm(summary["kd_gain_accuracy"])))
    so = summary.get("source_only_classifier")
    if so:
        lines.append("  source-only classifier: accuracy {:.1f} %, balanced {:.1f} % (majority class {:.1f} %)".format(
            100 * so["accuracy"], 100 * so["balanced_accuracy"], 100 * so["majority_class_accuracy"]))
    return "\n".join(lines)
