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
