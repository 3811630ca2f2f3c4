"""The PNG plots of `retina-train report`, with matplotlib (loaded by edge.profiling.plots.pyplot, on the Agg backend).

    confusion.png      confusion matrix at the printed label (rows: truth), counts and row percentages
    per_class.png      precision / recall / F1 per class with their 95 % bootstrap intervals
    roc.png            one-vs-rest ROC curve per class (and the referral score's, where defined)
    reliability.png    top-1 reliability diagram before and after the temperature
    folds.png          (predictions) accuracy, balanced accuracy and recall per class, fold by fold, per model
"""
import os

import numpy as np

from edge.profiling.plots import pyplot
from training import metrics

DPI = 80  # small files: the report is committed beside the shipped bundle


def _save(plt, fig, out_dir, name, written):
    fig.tight_layout()
    fig.savefig(os.path.join(out_dir, name), dpi=DPI)
    plt.close(fig)
    written.append(name)


def confusion(plt, out_dir, name, matrix, labels, title, written):
    matrix = np.asarray(matrix)
    rows = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(5.2, 4.4))
    ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    for i in range(len(labels)):
        for j in range(len(labels)):
            ax.text(j, i, "{}\n{:.0%}".format(matrix[i, j], rows[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if rows[i, j] > 0.6 else "black")
    short = [l.replace("diabetic_retinopathy", "DR") for l in labels]
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels(short, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)))
    ax.set_yticklabels(short)
    ax.set_xlabel("printed label")
    ax.set_ylabel("true class")
    ax.set_title(title, fontsize=9)
    _save(plt, fig, out_dir, name, written)


def per_class(plt, out_dir, name, label_figures, title, written):
    labels = label_figures["labels"]
    intervals = label_figures.get("intervals", {}).get("per_class", {})
    fig, ax = plt.subplots(figsize=(6.4, 3.4))
    width = 0.27
    for n, key in enumerate(("precision", "recall", "f1")):
        x = np.arange(len(labels)) + (n - 1) * width
        values = [label_figures["per_class"][l][key] for l in labels]
        low = [v - (intervals.get(l, {}).get(key) or [v, v])[0] for l, v in zip(labels, values)]
        high = [(intervals.get(l, {}).get(key) or [v, v])[1] - v for l, v in zip(labels, values)]
        ax.bar(x, values, width, label=key, yerr=[low, high], capsize=3)
    ax.set_xticks(range(len(labels)))
    ax.set_xticklabels([l.replace("diabetic_retinopathy", "DR") for l in labels])
    ax.set_ylim(0, 1.05)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    _save(plt, fig, out_dir, name, written)


def roc(plt, out_dir, name, ev, auc, title, written, referral=None):
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    for k, label in enumerate(ev.labels):
        if auc.get(label) is not None:
            fpr, tpr = metrics.roc_curve(ev.probs[:, k], ev.targets == k)
            ax.plot(fpr, tpr, label="{} (AUC {:.3f})".format(label.replace("diabetic_retinopathy", "DR"), auc[label]))
    if ev.negative:
        positive = ~np.isin(ev.targets, ev.negative)
        score = 1.0 - ev.probs[:, ev.negative].sum(axis=1)
        area = metrics.roc_auc(score, positive)
        if area is not None:
            fpr, tpr = metrics.roc_curve(score, positive)
            ax.plot(fpr, tpr, "k--", label="refer (AUC {:.3f})".format(area))
    if referral and referral.get("sensitivity") is not None and referral.get("specificity") is not None:
        ax.plot([1 - referral["specificity"]], [referral["sensitivity"]], "k*", ms=10,
                label="the bundle's referral point")
    ax.plot([0, 1], [0, 1], color="grey", lw=0.5)
    ax.set_xlabel("false positive rate (1 - specificity)")
    ax.set_ylabel("true positive rate (sensitivity)")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="lower right")
    _save(plt, fig, out_dir, name, written)


def reliability(plt, out_dir, name, calibration, title, written):
    fig, ax = plt.subplots(figsize=(4.6, 4.4))
    ax.plot([0, 1], [0, 1], color="grey", lw=0.5)
    series = []
    if calibration.get("before"):
        series.append(("before (T = 1), ECE {:.1%}".format(calibration["before"]["ece"]),
                       calibration["before"]["reliability"], "o--"))
    series.append(("{} ECE {:.1%}".format("after temperature," if calibration.get("before") else "as given,",
                                          calibration["ece"]), calibration["reliability"], "s-"))
    most = max(r["images"] for _, rows, _ in series for r in rows)
    for n, (text, rows, style) in enumerate(series):
        rows = [r for r in rows if r["images"]]
        x, y = [r["confidence"] for r in rows], [r["accuracy"] for r in rows]
        ax.plot(x, y, style[1:], color="C{}".format(n), lw=1, label=text)
        ax.scatter(x, y, s=[8 + 200.0 * r["images"] / most for r in rows], color="C{}".format(n), alpha=0.6,
                   marker=style[0])
    ax.set_xlabel("top-1 confidence per bin (marker area ~ images)")
    ax.set_ylabel("accuracy in the bin")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    _save(plt, fig, out_dir, name, written)


def bundle_plots(out_dir, ev, record):
    plt = pyplot()
    if plt is None:
        return {"written": [], "skipped": "matplotlib is not installed (pip install matplotlib)"}
    f, written = record["figures"], []
    where = "{} split, {} images".format(record["split"], f["images"])
    confusion(plt, out_dir, "confusion.png", f["label"]["confusion_matrix"], ev.labels,
              "printed label (the bundle's rule), " + where, written)
    per_class(plt, out_dir, "per_class.png", f["label"], "per class, 95 % bootstrap intervals, " + where, written)
    roc(plt, out_dir, "roc.png", ev, f["auc"], "one-vs-rest ROC, " + where, written, f.get("referral"))
    reliability(plt, out_dir, "reliability.png", f["calibration"], "reliability, " + where, written)
    return {"written": written, "skipped": None}


def cv_plots(out_dir, models, record):
    plt = pyplot()
    if plt is None:
        return {"written": [], "skipped": "matplotlib is not installed (pip install matplotlib)"}
    written = []
    for model, entry in sorted(record["cv"]["models"].items()):
        from training.report import pooled
        f, ev = entry["pooled"], pooled(models[model])
        where = "{}, out-of-fold, {} images".format(model, f["images"])
        confusion(plt, out_dir, "{}_confusion.png".format(model), f["label"]["confusion_matrix"], ev.labels,
                  where, written)
        roc(plt, out_dir, "{}_roc.png".format(model), ev, f["auc"], where, written)
        reliability(plt, out_dir, "{}_reliability.png".format(model), f["calibration"], where, written)
    folds_plot(plt, out_dir, record, written)
    return {"written": written, "skipped": None}


def folds_plot(plt, out_dir, record, written):
    models = record["cv"]["models"]
    keys = ["accuracy", "balanced_accuracy"] + ["recall/" + l for l in record["labels"]]
    fig, ax = plt.subplots(figsize=(7.2, 3.6))
    for n, (model, entry) in enumerate(sorted(models.items())):
        for fold, h in entry["headline"].items():
            xs = [i + (n - (len(models) - 1) / 2.0) * 0.2 for i in range(len(keys))]
            ax.plot(xs, [h.get(k) if h.get(k) is not None else np.nan for k in keys], "o", ms=3,
                    color="C{}".format(n), label=model if fold == next(iter(entry["headline"])) else None)
        means = [entry["mean_sd"].get(k, {}).get("mean") for k in keys]
        ax.plot(xs, [np.nan if v is None else v for v in means], "_", ms=14, mew=2, color="C{}".format(n))
    ax.set_xticks(range(len(keys)))
    ax.set_xticklabels([k.replace("recall/", "recall\n").replace("diabetic_retinopathy", "DR") for k in keys],
                       fontsize=7)
    ax.set_title("each dot is one fold, each bar the mean over folds", fontsize=9)
    ax.legend(fontsize=7)
    _save(plt, fig, out_dir, "folds.png", written)
