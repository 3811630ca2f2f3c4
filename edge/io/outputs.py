"""Outputs chosen by URI through a scheme -> class registry. Each receives every Frame with its Result.

An output class takes ``(uri, labels, options)`` and offers ``write(frame, result)``
and ``close()``. ``write`` must leave what it wrote on disk (flushed) before it
returns, so a killed run keeps well-formed files. The ledger is not in this
table: every run writes to it (``edge.ledger``) and ``LedgerOutput`` adapts it.
"""
import csv
import importlib
import io
import json
import os
import sys

from edge.io.uri import UriError, parse_output
from edge.io.volumes import VOLUME_STATUS, VolumeTally, statuses_text, summary_line, worst_text

# scheme -> (module, class)
OUTPUTS = {
    "csv": ("edge.io.outputs", "CsvOutput"),
    "jsonl": ("edge.io.outputs", "JsonlOutput"),
    "null": ("edge.io.outputs", "NullOutput"),
    "display": ("edge.io.display", "DisplayOutput"),
    "images": ("edge.io.annotate", "AnnotatedImages"),
}

NOT_YET = {}


class OutputError(ValueError):
    """An output that cannot be opened; the message names it and says why."""


class OutputDisabled(OutputError):
    """An output deliberately left out (display://0 with --headless): say so, and run without it."""


class Output(object):
    def __init__(self, uri, labels, options=None):
        self.uri = uri
        self.labels = list(labels)
        self.options = dict(uri.options)
        self.options.update(options or {})

    def write(self, frame, result):
        raise NotImplementedError

    def close(self):
        pass

    def describe(self):
        return self.uri.text


def _ensure_parent(path):
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        os.makedirs(folder)


def _fmt(value, spec):
    return "" if value is None else spec.format(value)


def _yes_no(flag):
    return "" if flag is None else ("yes" if flag else "no")


class CsvOutput(Output):
    """One row per frame: path, label, confidence, refer, p_<class>..., status, error, latency_ms, modality, model.

    ``refer`` is yes/no at the bundle's referral point, empty when the bundle has
    none or the row is not ok. ``labels`` are the loaded bundles' classes (their
    union, first bundle's first); a row's ``p_`` columns are empty for classes its
    bundle lacks. ``model`` names the bundle that screened the row (empty when none
    took it); it is the last column, so readers of the older columns keep working.

    A multi-frame file (an OCT volume) gets, after its frames, one row of status
    ``volume``: ``path`` the file, label/confidence/refer/p_ of its worst frame
    (``edge.io.volumes``), ``error`` saying which frame that is and how its frames
    ended ("worst: frame 7 (CNV 91.0%); 12 frames: 12 ok (CNV 7, NORMAL 5)", or
    "no frame screened ok; ..."), ``latency_ms`` empty. Count images with
    ``status != "volume"``.

    Appends to an existing file with the same columns (runs accumulate, as in the
    ledger). A file an older retina-edge wrote for the same classes (without the
    columns added since: ``LATER_COLUMNS``) is upgraded first: rewritten beside
    itself with those columns empty in its rows, then put in its place, and
    ``note`` says so. Any other file with other columns (another bundle's
    classes) is refused rather than mixed. Each row is flushed as it is written.
    """
    # columns added after the first release, in the order they came; an older file lacks a tail of them
    LATER_COLUMNS = ("refer", "modality", "model")

    def __init__(self, uri, labels, options=None):
        super(CsvOutput, self).__init__(uri, labels, options)
        self.path = uri.path
        self.volumes = VolumeTally(self.options.get("negatives"))
        self.header = (["path", "label", "confidence", "refer"] + ["p_" + l for l in self.labels]
                       + ["status", "error", "latency_ms", "modality", "model"])
        self.note = None
        existing = self._existing_header()
        _ensure_parent(self.path)
        self.file = io.open(self.path, "a", newline="", encoding="utf-8")
        self.writer = csv.writer(self.file)
        if existing is None:
            self.writer.writerow(self.header)
            self.file.flush()

    def _existing_header(self):
        if not os.path.isfile(self.path) or os.path.getsize(self.path) == 0:
            return None
        with io.open(self.path, newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), None)
        lacks = [c for c in self.header if c not in (header or [])]
        if lacks and header == [c for c in self.header if c not in lacks] and \
                all(c in self.LATER_COLUMNS for c in lacks):
            self._upgrade(header)
            return self.header
        if header != self.header:
            header = header or []
            differ = []
            lacks, extra = [c for c in self.header if c not in header], [c for c in header if c not in self.header]
            if lacks:
                differ.append("lacks " + ", ".join(lacks))
            if extra:
                differ.append("has " + ", ".join(extra))
            raise OutputError("{}: exists with other columns ({}), written by another bundle or an older retina-edge; "
                              "appending would misalign the rows: give a new results file or move this one "
                              "away".format(self.path, "; ".join(differ) or "in another order"))
        return header

    def _upgrade(self, old):
        """Rewrite an older retina-edge's file with this version's columns, the new ones empty in old rows."""
        where = [old.index(c) if c in old else None for c in self.header]
        tmp = self.path + ".upgrading"
        with io.open(self.path, newline="", encoding="utf-8") as f, \
                io.open(tmp, "w", newline="", encoding="utf-8") as out:
            rows = csv.reader(f)
            next(rows)
            writer = csv.writer(out)
            writer.writerow(self.header)
            count = 0
            for row in rows:
                writer.writerow([row[i] if i is not None and i < len(row) else "" for i in where])
                count += 1
            out.flush()
            os.fsync(out.fileno())
        os.replace(tmp, self.path)  # the old file stays whole until the new one is complete
        self.note = "{}: written by an older retina-edge; added the column(s) {} (empty in its {} row(s))".format(
            self.path, ", ".join(c for c, i in zip(self.header, where) if i is None), count)

    def write(self, frame, r):
        self._row(r.path, r.label, r.confidence, r.refer, r.probs, r.status, r.error, r.latency_ms,
                  frame.meta.get("modality", ""), r.model)
        volume = self.volumes.add(frame, r)
        if volume is not None:
            worst = volume["worst"] or {}
            self._row(volume["path"], worst.get("label"), worst.get("confidence"), worst.get("refer"),
                      worst.get("probs"), VOLUME_STATUS, "{}; {} frames: {}".format(
                          worst_text(volume), volume["frames"], statuses_text(volume)), None,
                      volume["modality"] or "", volume["model"])
        self.file.flush()

    def _row(self, path, label, confidence, refer, probs, status, error, latency_ms, modality, model):
        p = [_fmt(probs.get(l) if probs else None, "{:.6f}") for l in self.labels]
        self.writer.writerow([path, label or "", _fmt(confidence, "{:.6f}"), _yes_no(refer)] + p
                             + [status, error, _fmt(latency_ms, "{:.3f}"), modality, model or ""])

    def close(self):
        self.file.close()


class JsonlOutput(Output):
    """One JSON object per line and frame; flushed per line."""

    def __init__(self, uri, labels, options=None):
        super(JsonlOutput, self).__init__(uri, labels, options)
        _ensure_parent(uri.path)
        self.file = io.open(uri.path, "a", encoding="utf-8")

    def write(self, frame, r):
        record = r._asdict()
        meta = dict((k, v) for k, v in frame.meta.items() if isinstance(v, (str, int, float, bool, type(None))))
        record["meta"] = meta
        self.file.write(json.dumps(record, sort_keys=True) + "\n")
        self.file.flush()

    def close(self):
        self.file.close()


class NullOutput(Output):
    def write(self, frame, result):
        pass


class ConsoleOutput(object):
    """One line per frame on the console (--quiet keeps only the problems), one per DICOM volume.

    An ok line shows the label, its calibrated probability and, when the bundle
    has a referral point, ``REFER`` for a frame to refer (a blank column otherwise);
    with several bundles loaded (``show_model``), ``[model]`` after the path.

    Paths under the working folder are shown relative to it; files and the
    ledger keep them absolute. A multi-frame volume (an OCT scan) gets a
    summary line after its last frame (``edge.io.volumes.VolumeTally``) in
    place of one "skipped" line per frame.
    """

    def __init__(self, stream=None, errors_only=False, show_model=False, negatives=None):
        self.stream = stream or sys.stdout
        self.errors_only = errors_only
        self.show_model = show_model
        self.cwd = os.getcwd() + os.sep
        self.volumes = VolumeTally(negatives)

    def short(self, text):
        return text.replace(self.cwd, "")

    def write(self, frame, r):
        line = None
        if r.status == "ok":
            if not self.errors_only:
                marker = "" if r.refer is None else ("REFER  " if r.refer else " " * 7)
                line = "ok     {:<22} {:6.1%}  {}{}".format(r.label, r.confidence, marker, self.short(r.path))
                if self.show_model:
                    line += "  [{}]".format(r.model)
        elif r.status == "error":
            line = "error  {}".format(self.short(r.error))
            if frame.meta.get("quarantined_to"):
                line += " (moved to {})".format(self.short(frame.meta["quarantined_to"]))
        elif not (r.status == "skipped" and "index" in frame.meta and frame.meta.get("frames", 1) > 1):
            line = "{} {}: {}".format(r.status, self.short(r.path), r.error)  # a volume's skips: its summary
        volume = self.volumes.add(frame, r)
        if volume is not None:
            line = (line + "\n" if line else "") + self.short(summary_line(volume))
        if line:
            self.stream.write(line + "\n")
            self.stream.flush()

    def close(self):
        pass

    def describe(self):
        return "console"


class LedgerOutput(object):
    """Commits each result to the run's ledger before the frame counts as done; a volume's summary goes
    into the ledger's ``volumes`` table after its last frame (``negatives``: see ``VolumeTally``)."""

    def __init__(self, ledger, run_id, negatives=None):
        self.ledger, self.run_id = ledger, run_id
        self.volumes = VolumeTally(negatives)

    def write(self, frame, r):
        self.ledger.add_result(self.run_id, r, frame.meta)
        volume = self.volumes.add(frame, r)
        if volume is not None:
            self.ledger.add_volume(self.run_id, volume)

    def close(self):
        pass

    def describe(self):
        return "ledger {} (run {})".format(self.ledger.path, self.run_id)


def roi_of(options, result):
    """The region to draw for ``result``: its bundle's (``options["rois"]``, by model name), else ``options["roi"]``."""
    return (options.get("rois") or {}).get(result.model) or options.get("roi")


def open_output(text, labels, options=None):
    """Open the output URI ``text`` (see edge.io.uri); raises OutputError naming it."""
    try:
        uri = parse_output(text)
    except UriError as exc:
        raise OutputError(str(exc))
    if uri.scheme in NOT_YET and uri.scheme not in OUTPUTS:
        raise OutputError("{}: {} are not supported yet by this build".format(text, NOT_YET[uri.scheme]))
    if uri.scheme not in OUTPUTS:
        raise OutputError("{}: {} is written with --ledger, not as an output".format(text, uri.scheme))
    module_name, class_name = OUTPUTS[uri.scheme]
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise OutputError("{}: needs a package that is not installed: {}".format(text, exc))
    try:
        return getattr(module, class_name)(uri, labels, options)
    except (IOError, OSError) as exc:
        raise OutputError("{}: cannot open for writing: {}".format(uri.path or text, exc))
