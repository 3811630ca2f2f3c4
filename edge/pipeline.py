"""source -> pre-process -> network -> post-process -> sinks: one loop that owns timing.

A frame that fails at any stage becomes an error result naming the file and
the stage; the loop goes on with the next frame.
"""
from typing import NamedTuple, Optional

from edge.postprocess import classify
from edge.preprocess import preprocess
from edge.profiler import Profiler


class Result(NamedTuple):
    path: str
    status: str  # "ok" or "error"
    label: Optional[str]
    confidence: Optional[float]
    probs: Optional[dict]  # label -> probability
    error: str
    latency_ms: Optional[float]


def error_result(path, message):
    return Result(path, "error", None, None, None, message, None)


class Pipeline(object):
    def __init__(self, bundle, backend, sinks=(), profiler=None):
        self.bundle = bundle
        self.backend = backend
        self.sinks = list(sinks)
        self.profiler = profiler or Profiler()

    def process(self, frame):
        """One frame -> Result; exceptions become error results naming the stage."""
        if frame.error:
            return error_result(frame.source_id, frame.error)
        prof = self.profiler
        stage = "pre-process"
        try:
            with prof.stage("pre-process"):
                batch = preprocess(frame.image, self.bundle.preprocess)
            stage = "network"
            with prof.stage("network"):
                logits = self.backend.infer(batch)
            stage = "post-process"
            with prof.stage("post-process"):
                (c,) = classify(logits, self.bundle)
                probs = dict((lab, float(p)) for lab, p in zip(c.labels, c.probs))
        except Exception as exc:  # a bad frame must not stop the run; the message names it
            return error_result(frame.source_id, "{}: {}: {}: {}".format(
                stage, frame.source_id, type(exc).__name__, exc))
        latency_ms = sum(prof.samples_ms[s][-1] for s in ("pre-process", "network", "post-process"))
        return Result(frame.source_id, "ok", c.label, c.confidence, probs, "", latency_ms)

    def run(self, source):
        """Process every frame of ``source``; returns the list of results."""
        prof = self.profiler
        results = []
        frames = iter(source)
        while True:
            prof.begin_frame()
            start = prof.clock()
            frame = next(frames, None)
            if frame is None:
                break
            prof.record("capture", (prof.clock() - start) * 1000.0)
            result = self.process(frame)
            with prof.stage("output"):
                for sink in self.sinks:
                    sink.write(result)
            prof.end_frame()
            results.append(result)
        return results
