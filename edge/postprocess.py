"""Logits -> calibrated probabilities, a label and a referral, as the bundle's postprocess section says.

Three steps, each optional in the manifest (``retina-train calibrate`` fits them on the val split):

- ``temperature``: probabilities are softmax(logits / T), the calibrated probabilities every output shows;
- ``decision``: per-class additive offsets on the calibrated logits (a prior correction): the label is
  argmax(logits / T + offset), which can differ from the most probable class; a bundle without it
  labels by argmax;
- ``referral``: refer when P(refer) = 1 - P(negative classes), from the calibrated probabilities, reaches
  ``threshold``; a bundle without it gives no referral (``refer`` is None). The referral and the label
  are two operating points: under a rule that over-calls one disease, a label of that disease can fall
  below the referral threshold (the calibration record counts how often on val).

The workstation scores its choices with these same functions, so what it measures is what the device does.
"""
import numpy as np


def softmax(logits, temperature=1.0):
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class Rule(object):
    """The bundle's decision: temperature, per-class logit offsets, referral threshold."""

    def __init__(self, labels, temperature=1.0, offsets=None, negative=(), threshold=None):
        self.labels = list(labels)
        self.temperature = float(temperature)
        offsets = offsets or {}
        self.offsets = np.array([float(offsets.get(l, 0.0)) for l in self.labels], dtype=np.float64)
        self.negative = [self.labels.index(l) for l in negative]
        self.threshold = None if threshold is None else float(threshold)

    @classmethod
    def from_bundle(cls, bundle):
        referral = bundle.referral or {}
        return cls(bundle.labels, bundle.temperature, bundle.decision_offsets,
                   referral.get("negative", ()), referral.get("threshold"))

    def probabilities(self, logits):
        return softmax(logits, self.temperature)

    def decide(self, logits):
        """Label indices: argmax of the calibrated logits plus the offsets (plain argmax without offsets)."""
        z = np.asarray(logits, dtype=np.float64) / self.temperature
        return np.argmax(z + self.offsets, axis=-1)

    def refer_scores(self, probs):
        """P(refer) = 1 - the probability of the negative classes."""
        return 1.0 - np.asarray(probs)[..., self.negative].sum(axis=-1)

    def refers(self, probs):
        """True/False per row at the threshold; None when the bundle has no referral point."""
        if self.threshold is None:
            return None
        return self.refer_scores(probs) >= self.threshold


class Classification(object):
    """Calibrated probabilities over the bundle's labels for one image, the rule's label and the referral."""

    __slots__ = ("labels", "probs", "index", "refer")

    def __init__(self, labels, probs, index=None, refer=None):
        self.labels, self.probs = labels, probs
        self.index = int(np.argmax(probs)) if index is None else int(index)
        self.refer = None if refer is None else bool(refer)

    @property
    def label(self):
        return self.labels[self.index]

    @property
    def confidence(self):
        """The calibrated probability of the label given (not always the largest one under a decision rule)."""
        return float(self.probs[self.index])


def classify(logits, bundle):
    """One Classification per row of ``logits``."""
    if np.ndim(logits) != 2 or np.shape(logits)[1] != len(bundle.labels):
        raise ValueError("model output shape {} does not match the bundle's {} labels".format(
            np.shape(logits), len(bundle.labels)))
    rule = Rule.from_bundle(bundle)
    probs = rule.probabilities(logits)
    refers = rule.refers(probs)
    indices = rule.decide(logits)
    return [Classification(bundle.labels, p, i, None if refers is None else refers[n])
            for n, (p, i) in enumerate(zip(probs, indices))]
