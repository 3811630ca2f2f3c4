"""How much of the accuracy the *source* of an image gives away: a classifier that never sees the retina.

The classes of fundus4 come from different source datasets (the data README's shortcut trap). This
classifier sees only what a file says about where it came from: width, height, file suffix, JPEG
quality (estimated from the quantisation tables against the IJG standard tables) and file size. It is a
small CART decision tree written with NumPy, trained and scored on the same grouped folds as the
networks; whatever it reaches is accuracy a network could get without looking at the disease.

NumPy + Pillow (Pillow reads only the header: no image is decoded).
"""
import os
from collections import Counter

import numpy as np

# ITU-T T.81 Annex K.1, the IJG libjpeg base luminance table (natural order) that quality scales.
IJG_LUMINANCE = np.array([
    16, 11, 10, 16, 24, 40, 51, 61, 12, 12, 14, 19, 26, 58, 60, 55,
    14, 13, 16, 24, 40, 57, 69, 56, 14, 17, 22, 29, 51, 87, 80, 62,
    18, 22, 37, 56, 68, 109, 103, 77, 24, 35, 55, 64, 81, 104, 113, 92,
    49, 64, 78, 87, 103, 121, 120, 101, 72, 92, 95, 98, 112, 100, 103, 99], dtype=np.float64)
SUFFIXES = (".jpg", ".jpeg", ".png")
FEATURES = ("width", "height", "suffix_jpg", "suffix_jpeg", "suffix_png", "jpeg_quality", "file_kib")
TREE_DEPTH = 4
MIN_LEAF = 5


def ijg_table(quality):
    """The luminance table libjpeg writes at ``quality`` (jpeg_quality_scaling + jpeg_add_quant_table)."""
    quality = min(max(int(quality), 1), 100)
    scale = 5000.0 / quality if quality < 50 else 200.0 - 2.0 * quality
    return np.clip(np.floor((IJG_LUMINANCE * scale + 50) / 100), 1, 255)


def jpeg_quality(tables):
    """Estimated IJG quality 1..100 from Pillow's ``quantization`` dict, 0 where there is none.

    The closest standard table by mean absolute difference; sorted values, so the order Pillow
    returns the table in does not matter.
    """
    if not tables:
        return 0
    seen = np.sort(np.asarray(tables[min(tables)], dtype=np.float64))
    errors = [np.abs(np.sort(ijg_table(q)) - seen).mean() for q in range(1, 101)]
    return int(np.argmin(errors)) + 1


def features(path):
    """The source-only feature vector of one file (see FEATURES)."""
    from PIL import Image  # Pillow comes with torchvision on the workstation
    with Image.open(path) as im:
        width, height = im.size
        quality = jpeg_quality(getattr(im, "quantization", None))
    suffix = os.path.splitext(path)[1].lower()
    return [width, height] + [float(suffix == s) for s in SUFFIXES] + [quality, os.path.getsize(path) / 1024.0]


def _gini(counts):
    n = counts.sum()
    return 1.0 - ((counts / n) ** 2).sum() if n else 0.0


def fit_tree(x, y, classes, depth=TREE_DEPTH, min_leaf=MIN_LEAF):
    """A CART tree (Gini, axis-aligned thresholds halfway between seen values) as nested tuples."""
    counts = np.bincount(y, minlength=classes).astype(np.float64)
    leaf = ("leaf", int(np.argmax(counts)))
    if depth == 0 or len(y) < 2 * min_leaf or counts.max() == len(y):
        return leaf
    best = None
    for f in range(x.shape[1]):
        order = np.argsort(x[:, f], kind="stable")
        xs, ys = x[order, f], y[order]
        left = np.cumsum(np.eye(classes)[ys], axis=0)
        for i in range(min_leaf, len(y) - min_leaf + 1):
            if xs[i - 1] == xs[i]:
                continue
            score = i * _gini(left[i - 1]) + (len(y) - i) * _gini(counts - left[i - 1])
            if best is None or score < best[0]:
                best = (score, f, (xs[i - 1] + xs[i]) / 2.0)
    if best is None or best[0] >= len(y) * _gini(counts) - 1e-12:
        return leaf
    _, f, cut = best
    go_left = x[:, f] <= cut
    return ("split", f, cut, fit_tree(x[go_left], y[go_left], classes, depth - 1, min_leaf),
            fit_tree(x[~go_left], y[~go_left], classes, depth - 1, min_leaf))


def predict_tree(tree, x):
    out = np.empty(len(x), dtype=np.int64)
    for i, row in enumerate(x):
        node = tree
        while node[0] == "split":
            node = node[3] if row[node[1]] <= node[2] else node[4]
        out[i] = node[1]
    return out


def describe_tree(tree, labels, indent="  "):
    if tree[0] == "leaf":
        return [indent + "-> " + labels[tree[1]]]
    name = FEATURES[tree[1]]
    return ([indent + "{} <= {:g}:".format(name, tree[2])] + describe_tree(tree[3], labels, indent + "  ")
            + [indent + "{} > {:g}:".format(name, tree[2])] + describe_tree(tree[4], labels, indent + "  "))


def cross_validate(samples, folds, log=print):
    """Train on all folds but one, predict that one, for every fold. ``folds`` = fold index per sample.

    Returns a dict: accuracy, balanced accuracy, per-class recall, majority-class baseline, per-fold
    accuracy, the tree fitted on everything (text) and the feature means per class.
    """
    from training.metrics import classification_report
    labels = sorted({s.label for s in samples})
    x = np.array([features(s.path) for s in samples], dtype=np.float64)
    y = np.array([labels.index(s.label) for s in samples], dtype=np.int64)
    folds = np.asarray(folds)
    predicted = np.empty_like(y)
    per_fold = []
    for k in sorted(set(folds.tolist())):
        test = folds == k
        tree = fit_tree(x[~test], y[~test], len(labels))
        predicted[test] = predict_tree(tree, x[test])
        per_fold.append(float((predicted[test] == y[test]).mean()))
    report = classification_report(y, predicted, labels)
    majority = Counter(y.tolist()).most_common(1)[0][1] / float(len(y))
    return {
        "features": list(FEATURES), "tree_depth": TREE_DEPTH, "min_leaf": MIN_LEAF,
        "accuracy": report["accuracy"], "balanced_accuracy": report["balanced_accuracy"],
        "accuracy_per_fold": per_fold, "majority_class_accuracy": majority,
        "recall_per_class": {lab: report["per_class"][lab]["recall"] for lab in labels},
        "confusion_matrix": report["confusion_matrix"], "labels": labels,
        "feature_means_per_class": {lab: dict(zip(FEATURES, np.round(x[y == i].mean(0), 2).tolist()))
                                    for i, lab in enumerate(labels)},
        "tree_on_all": "\n".join(describe_tree(fit_tree(x, y, len(labels)), labels)),
    }


def format_result(result):
    lines = ["source-only classifier ({} features, depth-{} tree, grouped folds): accuracy {:.3f} "
             "(folds {}), balanced accuracy {:.3f}; majority class {:.3f}".format(
                 ", ".join(result["features"]), result["tree_depth"], result["accuracy"],
                 " ".join("{:.3f}".format(a) for a in result["accuracy_per_fold"]),
                 result["balanced_accuracy"], result["majority_class_accuracy"])]
    lines += ["  recall {:<22} {:.3f}".format(lab, r) for lab, r in result["recall_per_class"].items()]
    lines.append("  feature means per class:")
    for lab, means in result["feature_means_per_class"].items():
        lines.append("    {:<22} ".format(lab) + "  ".join("{}={:g}".format(k, v) for k, v in means.items()))
    lines.append("  the tree fitted on all images:")
    lines.append(result["tree_on_all"])
    return "\n".join(lines)
