"""Progress bars for long training loops: on a terminal, a bar per epoch (step, loss, images/s); in a pipe, a
log file or CI, nothing extra (the per-epoch log lines stay the record).

``RETINA_TRAIN_PROGRESS`` = auto (a bar when stderr is a terminal, the default), on, or off. The bar is tqdm's
(it comes with timm); without tqdm there is no bar.
"""
import os
import sys

ENV = "RETINA_TRAIN_PROGRESS"


def wanted(stream):
    mode = os.environ.get(ENV, "auto").strip().lower()
    if mode not in ("auto", "on", "off"):
        raise ValueError("{}={!r}: use auto, on or off".format(ENV, mode))
    if mode == "auto":
        isatty = getattr(stream, "isatty", None)
        return bool(isatty and isatty())
    return mode == "on"


def steps(total, desc, initial=0, stream=None):
    """A bar over ``total`` steps (``initial`` of them already done: a resumed epoch), or a quiet stand-in."""
    stream = stream or sys.stderr
    if not wanted(stream):
        return Quiet()
    try:
        from tqdm import tqdm
    except ImportError:
        return Quiet()
    return Bar(tqdm(total=total, initial=initial, desc=desc, file=stream, leave=False, unit="step",
                    dynamic_ncols=True, mininterval=0.5))


class Bar(object):
    def __init__(self, bar):
        self.bar = bar

    def update(self, n=1, **figures):
        if figures:
            self.bar.set_postfix(dict((k, "{:.4g}".format(v) if isinstance(v, float) else v)
                                      for k, v in figures.items()), refresh=False)
        self.bar.update(n)

    def close(self):
        self.bar.close()


class Quiet(object):
    def update(self, n=1, **figures):
        pass

    def close(self):
        pass
