"""Several bundles in one station: a ``Lane`` per bundle, a ``Router`` that sends each frame to one.

A lane is what screening with one bundle needs: the bundle, its backend (an ONNX
Runtime session, or a TensorRT engine of its own: the engine cache key holds the
model's sha256), the backend's preprocessor and the bundle's checks (the quality
gate only for fundus bundles, ``edge.checks.default_checks``). ``Pipeline`` with
one bundle is the one-lane case.

Routing, on a worker thread after the frame is decoded (``Router.route``):

- a DICOM frame keeps the modality its header gives (OP -> fundus, OPT -> oct;
  ``meta["modality_source"] = "dicom"``);
- a plain image (file, camera, video) is a fundus photograph, as always, unless
  the station serves another modality too (or its one bundle is an OCT bundle):
  then ``edge.modality.guess_modality`` looks at its pixels and
  ``meta["modality_source"]`` says ``"guessed"`` (``modality_score`` keeps the
  guess's score);
- with several lanes, the frame goes to the lane of its modality, or is
  ``skipped`` with a reason naming its modality and the bundles loaded; with
  one lane it always goes to that lane, whose own modality check words the skip
  as a one-bundle run always has.

Two lanes of one modality are refused (``RouterError``): which one would screen
a frame would be a guess. The lane's name is written into ``meta["model"]`` and
every Result it gives (``Result.model``), except a ``skipped`` verdict: no bundle
screened that frame.
"""
from edge.records import Result

_NAMES = {"fundus": "fundus photograph", "oct": "OCT B-scan"}


class RouterError(ValueError):
    """Lanes that cannot share a station (two of one modality, two of one name); the message says which."""


class Lane(object):
    """One bundle's share of the station. ``checks=None``: the bundle's default checks."""

    def __init__(self, name, bundle, backend, checks=None, batch=None):
        if checks is None:
            from edge.checks import default_checks
            checks = default_checks(bundle)
        self.name, self.bundle, self.backend = name, bundle, backend
        self.checks = list(checks)
        self.batch = max(1, int(batch or getattr(backend, "max_batch", 1) or 1))
        self.preprocessor = backend.make_preprocessor()

    @property
    def modality(self):
        return self.bundle.modality

    def check(self, frame):
        """The first check's verdict (named after this lane unless it is a skip), or None."""
        for check in self.checks:
            verdict = check(frame, self.bundle)
            if verdict is not None:
                return verdict if verdict.status == "skipped" else verdict._replace(model=self.name)
        return None

    def describe(self):
        return "{} ({})".format(self.name, self.modality)


class Router(object):
    """Picks each frame's lane. ``guess``: a ``guess_modality(rgb)`` stand-in (default: edge.modality's,
    imported when the first plain image needs a guess)."""

    def __init__(self, lanes, guess=None):
        self.lanes = list(lanes)
        if not self.lanes:
            raise RouterError("no bundle to screen with")
        refuse_ambiguous([(lane.name, lane.modality) for lane in self.lanes])
        self.by_name = dict((lane.name, lane) for lane in self.lanes)
        self.by_modality = dict((lane.modality, lane) for lane in self.lanes)
        self.guessing = any(lane.modality != "fundus" for lane in self.lanes)
        self._guess = guess

    def lane_of(self, frame):
        """The lane a routed frame went to (the first lane for a frame not routed yet)."""
        return self.by_name.get(frame.meta.get("model"), self.lanes[0])

    def modality(self, frame):
        """The frame's modality: its DICOM header's, else fundus, else (when this station needs it) a guess."""
        meta = frame.meta
        if meta.get("dicom_modality"):
            meta.setdefault("modality_source", "dicom")
        elif self.guessing:
            guess = self.guess(frame.image)
            meta.update(modality=guess[0], modality_source="guessed", modality_score=round(float(guess[1]), 3))
        else:
            meta.setdefault("modality", "fundus")
        return meta.get("modality")

    def guess(self, rgb):
        if self._guess is None:
            from edge.modality import guess_modality  # only stations that need a guess import it
            self._guess = guess_modality
        return self._guess(rgb)

    def route(self, frame):
        """(lane, None), or (None, a skipped Result) for a modality no loaded bundle serves."""
        modality = self.modality(frame)
        lane = self.by_modality.get(modality) if len(self.lanes) > 1 else self.lanes[0]
        if lane is None:
            return None, Result(frame.source_id, "skipped", error="modality: {}, which no loaded bundle screens "
                                "(loaded: {})".format(describe_modality(frame.meta),
                                                      ", ".join(l.describe() for l in self.lanes)))
        frame.meta["model"] = lane.name
        return lane, None


def refuse_ambiguous(named):
    """Raise RouterError for [(name, modality)] holding a name or a modality twice (before any backend is built)."""
    names, modalities = {}, {}
    for name, modality in named:
        if name in names:
            raise RouterError("two bundles are named {!r}: give each its own name (--model NAME=DIR)".format(name))
        if modality in modalities:
            raise RouterError("bundles {} and {} both screen {}s: which one screens a frame would be a guess; "
                              "load one bundle per modality".format(modalities[modality], name,
                                                                    _NAMES.get(modality, modality)))
        names[name] = modalities[modality] = name


def describe_modality(meta):
    """'OCT B-scan (DICOM Modality OPT)', 'fundus photograph (guessed)', ..."""
    modality = meta.get("modality") or "fundus"
    what = _NAMES.get(modality, "{} image".format(modality))
    if meta.get("dicom_modality"):
        return what + " (DICOM Modality {})".format(meta["dicom_modality"])
    if meta.get("modality_source") == "guessed":
        return what + " (guessed from the image)"
    return what
