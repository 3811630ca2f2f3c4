"""Where results go: a CSV file, the SQLite ledger, the console. Each writes one result at a time."""
import csv
import os
import sys


class CsvSink(object):
    """One row per input file: path, label, confidence, p_<class>..., status, error, latency_ms.

    Each row is flushed as it is written, so an interrupted run keeps its rows.
    """

    def __init__(self, path, labels):
        folder = os.path.dirname(os.path.abspath(path))
        if not os.path.isdir(folder):
            os.makedirs(folder)
        self.labels = list(labels)
        self.file = open(path, "w", newline="")
        self.writer = csv.writer(self.file)
        self.writer.writerow(["path", "label", "confidence"] + ["p_" + l for l in self.labels]
                             + ["status", "error", "latency_ms"])
        self.file.flush()

    def write(self, r):
        probs = ["{:.6f}".format(r.probs[l]) if r.probs else "" for l in self.labels]
        self.writer.writerow([r.path, r.label or "", "" if r.confidence is None else "{:.6f}".format(r.confidence)]
                             + probs + [r.status, r.error,
                                        "" if r.latency_ms is None else "{:.3f}".format(r.latency_ms)])
        self.file.flush()

    def close(self):
        self.file.close()


class LedgerSink(object):
    def __init__(self, ledger, run_id):
        self.ledger, self.run_id = ledger, run_id

    def write(self, r):
        self.ledger.add_result(self.run_id, r)

    def close(self):
        pass


class ConsoleSink(object):
    def __init__(self, stream=None, errors_only=False):
        self.stream = stream or sys.stdout
        self.errors_only = errors_only

    def write(self, r):
        if r.status == "ok":
            if self.errors_only:
                return
            line = "ok     {:<22} {:6.1%}  {}".format(r.label, r.confidence, r.path)
        else:
            line = "error  {}".format(r.error)
        self.stream.write(line + "\n")
        self.stream.flush()

    def close(self):
        pass
