"""Per-volume summaries: the results of a multi-frame file (an OCT volume of B-scans) summed up.

Every frame of a volume carries ``meta["frames"]`` (the volume's frame count)
and ``meta["index"]``; ``VolumeTally`` counts their results and hands back a
JSON-able summary once the last one is in. Three outputs use it: the console
prints it as one line, the CSV writes it as one row of status ``volume``
(``edge.io.outputs.CsvOutput``), the ledger keeps it in its ``volumes`` table
(``edge.ledger``). None of them is a frame: run counts never include it.

The worst finding of a volume is the ok frame that ranks highest by, first,
its referral probability when its bundle has a referral rule (P(refer) = 1 -
P(the rule's negative classes), the number ``refer`` is decided on), then the
probability of its most probable finding: a class that is not negative (the
referral rule's negative classes, else the classes named "normal" in any
case). Ties go to the earlier frame. A volume with no ok frame has no worst
finding (``worst`` is None) and says so.

Standard library only.
"""
from collections import Counter

VOLUME_STATUS = "volume"  # the CSV status of a volume's summary row (never a frame's)


def negatives_of(bundle):
    """The classes of ``bundle`` that are not a finding: its referral rule's negatives, else those named normal."""
    negative = (bundle.referral or {}).get("negative")
    return list(negative) if negative else [l for l in bundle.labels if l.lower() == "normal"]


def severity(result, negatives=None):
    """How bad an ok frame's finding is, as a sortable tuple (see the module docstring)."""
    probs = result.probs or {}
    if negatives is None:
        negatives = [l for l in probs if l.lower() == "normal"]
    findings = [p for l, p in probs.items() if l not in negatives]
    top = max(findings) if findings else 0.0
    if result.refer is None:
        return (top,)
    return (1.0 - sum(probs.get(l, 0.0) for l in negatives), top)


class VolumeTally(object):
    """Counts the results of each multi-frame volume; ``add`` returns its summary once its last frame is in.

    The summary is a JSON-able dict: path, modality, dicom_modality, frames,
    size_bytes, mtime_ns, model, statuses {status: n}, labels {label: n} (ok
    frames), worst (index, source, label, confidence, refer, probs of the worst
    ok frame; None without one). ``negatives``: {model name: negative classes}
    (``negatives_of``; a model not in it: the classes named normal). Frames may
    arrive in any order; a volume cut short by a stop never completes and is
    dropped with the tally.
    """

    def __init__(self, negatives=None):
        self.open = {}
        self.negatives = dict(negatives or {})

    def add(self, frame, result):
        meta = frame.meta
        if meta.get("frames", 1) < 2 or "index" not in meta:
            return None
        path = meta.get("path", frame.source_id)
        entry = self.open.setdefault(path, {
            "path": path, "modality": meta.get("modality"), "dicom_modality": meta.get("dicom_modality"),
            "frames": meta["frames"], "size_bytes": meta.get("size_bytes"), "mtime_ns": meta.get("mtime_ns"),
            "model": None, "statuses": Counter(), "labels": Counter(), "worst": None, "_key": None})
        entry["statuses"][result.status] += 1
        entry["model"] = entry["model"] or result.model
        if result.status == "ok" and result.label:
            entry["labels"][result.label] += 1
            self._rank(entry, meta["index"], frame.source_id, result)
        if sum(entry["statuses"].values()) < entry["frames"]:
            return None
        del self.open[path]
        del entry["_key"]
        entry["statuses"], entry["labels"] = dict(entry["statuses"]), dict(entry["labels"])
        return entry

    def _rank(self, entry, index, source, result):
        key = severity(result, self.negatives.get(result.model)) + (-index,)
        if entry["_key"] is None or key > entry["_key"]:
            entry["_key"] = key
            entry["worst"] = {"index": index, "source": source, "label": result.label,
                              "confidence": result.confidence, "refer": result.refer, "probs": result.probs}


def statuses_text(summary):
    """'10 ok (CNV 6, NORMAL 4), 2 ungradable'."""
    parts = []
    for status in ("ok", "skipped", "ungradable", "error"):
        n = summary["statuses"].get(status)
        if n:
            labels = ""
            if status == "ok" and summary["labels"]:
                labels = " ({})".format(", ".join("{} {}".format(l, c) for l, c in
                                                  sorted(summary["labels"].items(), key=lambda kv: -kv[1])))
            parts.append("{} {}{}".format(n, status, labels))
    return ", ".join(parts)


def worst_text(summary):
    """'worst: frame 7 (CNV 91.0%, refer)', or 'no frame screened ok'."""
    worst = summary.get("worst")
    if worst is None:
        return "no frame screened ok"
    refer = "" if worst["refer"] is None else (", refer" if worst["refer"] else ", no referral")
    return "worst: frame {} ({} {:.1%}{})".format(worst["index"], worst["label"], worst["confidence"], refer)


def summary_line(summary):
    """One console line for a volume's summary (its worst frame after a ';' when a frame was screened ok)."""
    return "volume {}: {} frames, {} (DICOM {}): {}{}".format(
        summary["path"], summary["frames"], summary["modality"], summary["dicom_modality"], statuses_text(summary),
        "; " + worst_text(summary) if summary.get("worst") else "")
