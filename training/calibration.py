"""The statistics behind `retina-train calibrate`, NumPy only: calibration error, temperature scaling,
a regularised search for per-class logit offsets, the referral threshold and bootstrap intervals.

Every choice is made on the val split's logits; what a choice does is scored
with edge.postprocess.Rule, the code the device runs.
"""
import itertools
import math

import numpy as np

from edge.postprocess import Rule, softmax

ECE_BINS = 15
# offsets search: a 0.25 grid in [-2, 2] per class, the reference class fixed at 0; the objective is the
# lifted class's recall (or, with no class to lift, balanced accuracy) averaged over bootstrap resamples
# of val (smooths a step function of a few hundred images), minus OFFSET_PENALTY * sum(offset^2) (a
# correction must pay for itself), subject to val accuracy at most MAX_ACCURACY_DROP below argmax's
OFFSET_GRID = tuple(np.round(np.arange(-2.0, 2.0001, 0.25), 2))
OFFSET_PENALTY = 0.005
MAX_ACCURACY_DROP = 0.01
BOOTSTRAPS = 200
MAX_COMBINATIONS = 200000


def ece(probs, targets, bins=ECE_BINS):
    """Expected calibration error of the top-1 probability: equal-width bins over [0, 1], weighted by count."""
    probs = np.asarray(probs)
    confidence, correct = probs.max(axis=1), probs.argmax(axis=1) == np.asarray(targets)
    which = np.minimum((confidence * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.sum() * abs(correct[inside].mean() - confidence[inside].mean())
    return float(total / len(targets))


def nll(logits, targets, temperature=1.0):
    """Mean negative log-likelihood of the targets under softmax(logits / T)."""
    z = np.asarray(logits, dtype=np.float64) / temperature
    z = z - z.max(axis=1, keepdims=True)
    log_p = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-log_p[np.arange(len(targets)), targets].mean())


def fit_temperature(logits, targets, low=0.05, high=20.0, tolerance=1e-6):
    """The one scalar T > 0 minimising the NLL: golden-section search on log T (the NLL is unimodal in it)."""
    ratio = (math.sqrt(5) - 1) / 2
    a, b = math.log(low), math.log(high)
    c, d = b - ratio * (b - a), a + ratio * (b - a)
    fc, fd = nll(logits, targets, math.exp(c)), nll(logits, targets, math.exp(d))
    while b - a > tolerance:
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - ratio * (b - a)
            fc = nll(logits, targets, math.exp(c))
        else:
            a, c, fc = c, d, fd
            d = a + ratio * (b - a)
            fd = nll(logits, targets, math.exp(d))
    t = math.exp((a + b) / 2)
    if min(abs(t - low), abs(t - high)) < 1e-3 * t:
        raise ValueError("the fitted temperature {:.3g} sits on the search bound [{}, {}]: the logits do not look "
                         "like a classifier's".format(t, low, high))
    return t


def at_temperature(probs, temperature):
    """Probabilities written at T = 1 re-scaled to ``temperature`` (a number, or one per row as an N x 1
    array): softmax(log p / T) equals softmax(z / T) for the logits z they came from (the softmax ignores a
    constant shift); p = 0 stays 0."""
    with np.errstate(divide="ignore"):
        z = np.log(np.asarray(probs, dtype=np.float64)) / np.asarray(temperature, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def class_report(predicted, targets, labels):
    """Accuracy, balanced accuracy, per-class recall and the confusion matrix (rows: truth)."""
    predicted, targets = np.asarray(predicted), np.asarray(targets)
    k = len(labels)
    matrix = np.zeros((k, k), dtype=int)
    np.add.at(matrix, (targets, predicted), 1)
    support = matrix.sum(axis=1)
    recall = np.where(support > 0, np.diag(matrix) / np.maximum(support, 1), np.nan)
    return {"images": int(len(targets)), "accuracy": float(np.mean(predicted == targets)),
            "balanced_accuracy": float(np.nanmean(recall)),
            "recall": dict((l, float(r)) for l, r in zip(labels, recall)),
            "confusion_matrix": matrix.tolist()}


def bootstrap_weights(n, count=BOOTSTRAPS, seed=0):
    """count x n: how often each image is drawn in each resample (with replacement)."""
    rng = np.random.RandomState(seed)
    return np.stack([np.bincount(rng.randint(0, n, n), minlength=n) for _ in range(count)]).astype(np.float64)


def choose_offsets(logits, targets, rule, reference, lift=None, grid=OFFSET_GRID, penalty=OFFSET_PENALTY,
                   max_drop=MAX_ACCURACY_DROP, bootstraps=BOOTSTRAPS, seed=0):
    """Per-class logit offsets (``reference`` fixed at 0) for ``rule``'s temperature that lift the recall
    of class ``lift`` (None: balanced accuracy); see OFFSET_GRID's note.

    Returns (offsets dict, record of the search)."""
    labels, targets = rule.labels, np.asarray(targets)
    free = [i for i, l in enumerate(labels) if l != reference]
    if len(grid) ** len(free) > MAX_COMBINATIONS:
        raise ValueError("{} classes make {} offset combinations; the grid search stops at {}".format(
            len(labels), len(grid) ** len(free), MAX_COMBINATIONS))
    combos = np.zeros((len(grid) ** len(free), len(labels)))
    combos[:, free] = np.array(list(itertools.product(grid, repeat=len(free))))
    z = np.asarray(logits, dtype=np.float64) / rule.temperature
    predicted = np.argmax(z[None, :, :] + combos[:, None, :], axis=2)          # combos x N
    correct = (predicted == targets[None, :]).astype(np.float64)
    weights = bootstrap_weights(len(targets), bootstraps, seed)                # B x N
    recalls = []
    for k in range(len(labels)):
        mask = (targets == k).astype(np.float64)
        recalls.append((correct * mask) @ weights.T / np.maximum(weights @ mask, 1.0))  # combos x B
    gain = (recalls[labels.index(lift)] if lift else np.mean(recalls, axis=0)).mean(axis=1)
    accuracy = correct.mean(axis=1)
    objective = gain - penalty * (combos ** 2).sum(axis=1)
    zero = int(np.flatnonzero((combos == 0).all(axis=1))[0])
    objective[accuracy < accuracy[zero] - max_drop - 1e-12] = -np.inf
    best = int(np.argmax(objective))  # ties: the first in grid order
    offsets = dict((l, float(combos[best, i])) for i, l in enumerate(labels))
    aim = "{} recall".format(lift) if lift else "balanced accuracy"
    record = {"objective": "{} on val, averaged over {} bootstrap resamples, minus {} x sum of squared offsets; "
                           "val accuracy at most {:.0%} below argmax's".format(aim, bootstraps, penalty, max_drop),
              "lift": lift,
              "grid": [float(grid[0]), float(grid[-1]), float(grid[1] - grid[0])], "reference_class": reference,
              "combinations": int(len(combos)), "bootstrap_seed": seed,
              "objective_value": float(objective[best]), "objective_at_zero": float(objective[zero])}
    return offsets, record


def choose_threshold(scores, positive, sensitivity=0.95):
    """The largest threshold on ``scores`` at which the sensitivity on ``positive`` reaches ``sensitivity``.

    It is placed halfway between the last positive score it must keep and the
    next lower score of any image, so the figures it gave do not hinge on float
    rounding of that one image. Returns (threshold, positives it rests on)."""
    scores, positive = np.asarray(scores, dtype=np.float64), np.asarray(positive, dtype=bool)
    ranked = np.sort(scores[positive])[::-1]
    if not len(ranked):
        raise ValueError("no referable images to choose a referral threshold on")
    kept = ranked[max(int(math.ceil(sensitivity * len(ranked) - 1e-9)), 1) - 1]
    below = scores[scores < kept]
    threshold = (kept + below.max()) / 2 if len(below) else kept
    return float(threshold), int(len(ranked))


def rates(refer, positive):
    refer, positive = np.asarray(refer, dtype=bool), np.asarray(positive, dtype=bool)
    return {"sensitivity": float(refer[positive].mean()) if positive.any() else None,
            "specificity": float((~refer[~positive]).mean()) if (~positive).any() else None,
            "referable": int(positive.sum()), "not_referable": int((~positive).sum()),
            "referred": int(refer.sum()), "missed": int((positive & ~refer).sum())}


def bootstrap_interval(refer, positive, count=2000, seed=0):
    """95 % percentile intervals of sensitivity and specificity at a fixed threshold, resampling the images."""
    refer, positive = np.asarray(refer, dtype=np.float64), np.asarray(positive, dtype=np.float64)
    weights = bootstrap_weights(len(refer), count, seed)
    sens = (weights @ (refer * positive)) / np.maximum(weights @ positive, 1.0)
    spec = (weights @ ((1 - refer) * (1 - positive))) / np.maximum(weights @ (1 - positive), 1.0)
    return {"resamples": count, "seed": seed,
            "sensitivity_95": [float(np.percentile(sens, 2.5)), float(np.percentile(sens, 97.5))],
            "specificity_95": [float(np.percentile(spec, 2.5)), float(np.percentile(spec, 97.5))]}


def score(logits, targets, rule):
    """What ``rule`` does on these logits: calibration, labels at argmax and at the rule, referral."""
    targets = np.asarray(targets)
    probs = softmax(logits, rule.temperature)
    figures = {"images": int(len(targets)), "ece": ece(probs, targets), "nll": nll(logits, targets, rule.temperature),
               "uncalibrated": {"temperature": 1.0, "ece": ece(softmax(logits), targets), "nll": nll(logits, targets)},
               "argmax": class_report(probs.argmax(axis=1), targets, rule.labels),
               "rule": class_report(rule.decide(logits), targets, rule.labels)}
    refer = rule.refers(probs)
    if refer is not None:
        positive = ~np.isin(targets, rule.negative)
        disease_label = ~np.isin(rule.decide(logits), rule.negative)
        figures["referral"] = dict(rates(refer, positive), threshold=rule.threshold,
                                   disease_label_not_referred=int(np.sum(disease_label & ~refer)),
                                   negative_label_referred=int(np.sum(~disease_label & refer)))
    return figures
