"""Logits -> calibrated probabilities and a label, as the bundle's postprocess section says."""
import numpy as np


def softmax(logits, temperature=1.0):
    z = np.asarray(logits, dtype=np.float64) / float(temperature)
    z = z - z.max(axis=-1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=-1, keepdims=True)


class Classification(object):
    """Probabilities over the bundle's labels for one image."""

    __slots__ = ("labels", "probs")

    def __init__(self, labels, probs):
        self.labels, self.probs = labels, probs

    @property
    def index(self):
        return int(np.argmax(self.probs))

    @property
    def label(self):
        return self.labels[self.index]

    @property
    def confidence(self):
        return float(self.probs[self.index])


def classify(logits, bundle):
    """One Classification per row of ``logits``."""
    if np.ndim(logits) != 2 or np.shape(logits)[1] != len(bundle.labels):
        raise ValueError("model output shape {} does not match the bundle's {} labels".format(
            np.shape(logits), len(bundle.labels)))
    probs = softmax(logits, bundle.temperature)
    return [Classification(bundle.labels, p) for p in probs]
