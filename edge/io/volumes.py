"""Per-volume summaries: the results of a multi-frame file (an OCT volume of B-scans) summed up.

Every frame of a volume carries ``meta["frames"]`` (the volume's frame count)
and ``meta["index"]``; ``VolumeTally`` counts their results and hands back a
JSON-able summary once the last one is in. The console prints it as one line
(``edge.io.outputs.ConsoleOutput``); the ledger needs no table for it, since
its rows keep ``file`` and ``frame_index``:

    SELECT file, status, count(*) FROM results WHERE frame_index IS NOT NULL GROUP BY file, status

Standard library only.
"""
from collections import Counter


class VolumeTally(object):
    """Counts the results of each multi-frame volume; ``add`` returns its summary once its last frame is in.

    The summary is a JSON-able dict: path, modality, dicom_modality, frames,
    statuses {status: n}, labels {label: n} (ok frames). Frames may arrive in
    any order; a volume cut short by a stop never completes and is dropped
    with the tally.
    """

    def __init__(self):
        self.open = {}

    def add(self, frame, result):
        meta = frame.meta
        if meta.get("frames", 1) < 2 or "index" not in meta:
            return None
        path = meta.get("path", frame.source_id)
        entry = self.open.setdefault(path, {
            "path": path, "modality": meta.get("modality"), "dicom_modality": meta.get("dicom_modality"),
            "frames": meta["frames"], "statuses": Counter(), "labels": Counter()})
        entry["statuses"][result.status] += 1
        if result.status == "ok" and result.label:
            entry["labels"][result.label] += 1
        if sum(entry["statuses"].values()) < entry["frames"]:
            return None
        del self.open[path]
        entry["statuses"], entry["labels"] = dict(entry["statuses"]), dict(entry["labels"])
        return entry


def summary_line(summary):
    """One console line for a volume's summary."""
    parts = []
    for status in ("ok", "skipped", "ungradable", "error"):
        n = summary["statuses"].get(status)
        if n:
            labels = ""
            if status == "ok" and summary["labels"]:
                labels = " ({})".format(", ".join("{} {}".format(l, c) for l, c in
                                                  sorted(summary["labels"].items(), key=lambda kv: -kv[1])))
            parts.append("{} {}{}".format(n, status, labels))
    return "volume {}: {} frames, {} (DICOM {}): {}".format(
        summary["path"], summary["frames"], summary["modality"], summary["dicom_modality"], ", ".join(parts))
