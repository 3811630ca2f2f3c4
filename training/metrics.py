"""Classification metrics from labels and predictions (NumPy only)."""
import numpy as np


def confusion_matrix(y_true, y_pred, num_classes):
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true), np.asarray(y_pred)), 1)
    return cm


def classification_report(y_true, y_pred, labels):
    """Accuracy, balanced accuracy, per-class precision/recall/F1/support and the confusion matrix."""
    cm = confusion_matrix(y_true, y_pred, len(labels))
    tp = np.diag(cm).astype(float)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    present = support > 0
    return {
        "n": int(cm.sum()),
        "accuracy": float(tp.sum() / max(cm.sum(), 1)),
        "balanced_accuracy": float(recall[present].mean()) if present.any() else 0.0,
        "per_class": {lab: {"precision": float(precision[i]), "recall": float(recall[i]),
                            "f1": float(f1[i]), "support": int(support[i])}
                      for i, lab in enumerate(labels)},
        "confusion_matrix": cm.tolist(),
        "labels": list(labels),
    }


def format_report(report, title="evaluation"):
    labels = report["labels"]
    width = max(len(l) for l in labels + ["class"])
    lines = ["{}: n={}  accuracy={:.4f}  balanced_accuracy={:.4f}".format(
        title, report["n"], report["accuracy"], report["balanced_accuracy"]),
        "  {:<{w}}  precision  recall     f1  support".format("class", w=width)]
    for lab in labels:
        r = report["per_class"][lab]
        lines.append("  {:<{w}}  {:9.4f}  {:6.4f}  {:5.4f}  {:7d}".format(
            lab, r["precision"], r["recall"], r["f1"], r["support"], w=width))
    lines.append("  confusion matrix (rows = true, columns = predicted):")
    short = [l[:10] for l in labels]
    lines.append("  {:<{w}}  ".format("", w=width) + " ".join("{:>10}".format(s) for s in short))
    for lab, row in zip(labels, report["confusion_matrix"]):
        lines.append("  {:<{w}}  ".format(lab, w=width) + " ".join("{:>10d}".format(v) for v in row))
    return "\n".join(lines)


# --- ranking, calibration and uncertainty (the evaluation report) ------------------------------------------------

def roc_auc(scores, positive):
    """Area under the ROC curve: the probability that a random positive scores above a random negative
    (ties count one half), from average ranks (Mann-Whitney U). None when either side is empty."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return None
    order = np.argsort(scores, kind="mergesort")
    ranks = np.empty(len(scores))
    ranks[order] = np.arange(1, len(scores) + 1)
    for value in np.unique(scores[order][np.flatnonzero(np.diff(scores[order]) == 0)]):
        tied = scores == value
        ranks[tied] = ranks[tied].mean()
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2.0) / (n_pos * n_neg))


def roc_curve(scores, positive):
    """(false positive rates, true positive rates) at every distinct threshold, from (0, 0) to (1, 1)."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    order = np.argsort(-scores, kind="mergesort")
    s, p = scores[order], positive[order]
    last = np.r_[np.flatnonzero(np.diff(s) != 0), len(s) - 1]  # the last image of each distinct score
    tp, fp = np.cumsum(p)[last], np.cumsum(~p)[last]
    return np.r_[0.0, fp / max(fp[-1], 1)], np.r_[0.0, tp / max(tp[-1], 1)]


def one_vs_rest_auc(probs, targets, labels):
    """Per class: ROC-AUC of P(class) for that class against all the others."""
    probs, targets = np.asarray(probs), np.asarray(targets)
    return dict((lab, roc_auc(probs[:, k], targets == k)) for k, lab in enumerate(labels))


def reliability(probs, targets, bins=15):
    """Top-1 reliability diagram: per equal-width confidence bin, its image count, mean confidence and accuracy."""
    probs = np.asarray(probs)
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == np.asarray(targets)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    rows = []
    for b in range(bins):
        inside = which == b
        rows.append({"low": b / float(bins), "high": (b + 1) / float(bins), "images": int(inside.sum()),
                     "confidence": float(confidence[inside].mean()) if inside.any() else None,
                     "accuracy": float(correct[inside].mean()) if inside.any() else None})
    return rows


def bootstrap_weights(n, count=1000, seed=0, groups=None):
    """count x n: how often each image is drawn in each resample. With ``groups`` (one key per image) whole
    groups are drawn with replacement and every image of a drawn group comes along: images of one group
    (a patient's two eyes, copies of one source image) are not independent, and resampling them one by
    one would make the intervals too narrow."""
    rng = np.random.RandomState(seed)
    if groups is None:
        return np.stack([np.bincount(rng.randint(0, n, n), minlength=n) for _ in range(count)]).astype(np.float64)
    _, index = np.unique(np.asarray(groups), return_inverse=True)
    g = int(index.max()) + 1
    drawn = np.stack([np.bincount(rng.randint(0, g, g), minlength=g) for _ in range(count)])
    return drawn[:, index].astype(np.float64)


def percentile_interval(values, level=0.95):
    """[low, high] percentile interval of bootstrap values, ignoring resamples where the figure is undefined."""
    values = np.asarray(values, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    tail = 100 * (1 - level) / 2
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]


def _ratio(num, den):
    return np.where(den > 0, num / np.where(den > 0, den, 1), np.nan)


def classification_intervals(y_true, y_pred, labels, weights):
    """95 % bootstrap intervals of accuracy, balanced accuracy and per-class precision/recall/F1, one
    weighted confusion matrix per resample (``weights`` from bootstrap_weights)."""
    k = len(labels)
    pairs = np.zeros((len(y_true), k * k))
    pairs[np.arange(len(y_true)), np.asarray(y_true) * k + np.asarray(y_pred)] = 1
    cms = (weights @ pairs).reshape(-1, k, k)                                  # B x truth x predicted
    tp, support, predicted = np.diagonal(cms, axis1=1, axis2=2), cms.sum(axis=2), cms.sum(axis=1)
    precision, recall = _ratio(tp, predicted), _ratio(tp, support)
    f1 = _ratio(2 * precision * recall, precision + recall)
    present = np.asarray(support.sum(axis=0) > 0)  # classes in the sample itself
    return {"accuracy": percentile_interval(tp.sum(axis=1) / np.maximum(cms.sum(axis=(1, 2)), 1)),
            "balanced_accuracy": percentile_interval(np.nanmean(recall[:, present], axis=1)),
            "per_class": dict((lab, {"precision": percentile_interval(precision[:, i]),
                                     "recall": percentile_interval(recall[:, i]),
                                     "f1": percentile_interval(f1[:, i])}) for i, lab in enumerate(labels))}


def binary_rates(flagged, positive, weights=None):
    """Sensitivity and specificity of ``flagged`` against ``positive``, with intervals when ``weights`` are given."""
    flagged, positive = np.asarray(flagged, dtype=bool), np.asarray(positive, dtype=bool)
    out = {"sensitivity": float(flagged[positive].mean()) if positive.any() else None,
           "specificity": float((~flagged[~positive]).mean()) if (~positive).any() else None,
           "positives": int(positive.sum()), "negatives": int((~positive).sum()),
           "flagged": int(flagged.sum()), "missed": int((positive & ~flagged).sum()),
           "false_alarms": int((~positive & flagged).sum())}
    if weights is not None:
        f, p = flagged.astype(np.float64), positive.astype(np.float64)
        out["sensitivity_95"] = percentile_interval(_ratio(weights @ (f * p), weights @ p))
        out["specificity_95"] = percentile_interval(_ratio(weights @ ((1 - f) * (1 - p)), weights @ (1 - p)))
    return out


def mean_sd(values):
    """{"mean", "sd" (sample, n - 1), "n"} over the defined values; sd None below two values."""
    values = np.asarray([v for v in values if v is not None], dtype=np.float64)
    if not len(values):
        return {"mean": None, "sd": None, "n": 0}
    return {"mean": float(values.mean()), "sd": float(values.std(ddof=1)) if len(values) > 1 else None,
            "n": int(len(values))}
