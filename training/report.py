"""`retina-train report`: an evaluation report (report.md, report.json, PNG plots) for a bundle or a CV run.

Two inputs:

- a bundle: its fp32 model.onnx through ONNX Runtime, on one split of the bundle's own recorded split
  (default val), through the device's preprocessing (training/quantize.py's bundle_samples and logits_of),
  then the bundle's temperature, decision rule and referral point through edge.postprocess.Rule, the code
  the device runs: the figures are what `retina-edge run` would print on those images;
- a predictions CSV (path,label,group,fold,model,p_<class>...; `retina-train cv` writes it): figures per
  fold and mean +/- sd over folds for each model, and the KD gain (student - labels_only) fold by fold.

Intervals are 95 % percentile bootstrap intervals. Where the images carry a group (a patient's two eyes,
augmented copies of one source image) whole groups are resampled, because images of one group are not
independent; without groups, images are resampled.
"""
import csv
import json
import os
import time

import numpy as np

from edge.postprocess import Rule, softmax
from training import metrics
from training.calibration import ECE_BINS, at_temperature, ece
from training.sources import SOURCE_KINDS, source_kind

BOOTSTRAPS = 1000
LATENCY_RUNS = 50
LATENCY_WARMUP = 5
KD_PAIR = ("student", "labels_only")  # KD gain = first - second, fold by fold


class Evaluation(object):
    """One model's outputs on one set of images; ``decided`` is the printed label (the rule's), ``refer``
    the referral (None without an operating point), ``raw_probs`` the probabilities before temperature."""

    def __init__(self, labels, paths, targets, groups, probs, decided=None, raw_probs=None, refer=None,
                 negative=(), threshold=None):
        self.labels, self.paths, self.groups = list(labels), list(paths), groups
        self.targets, self.probs = np.asarray(targets), np.asarray(probs, dtype=np.float64)
        self.decided = self.probs.argmax(axis=1) if decided is None else np.asarray(decided)
        self.raw_probs, self.refer, self.threshold = raw_probs, refer, threshold
        self.negative = [self.labels.index(n) for n in negative if n in self.labels]

    def subset(self, mask):
        mask = np.asarray(mask, dtype=bool)
        pick = lambda a: None if a is None else np.asarray(a)[mask]  # noqa: E731
        ev = Evaluation(self.labels, [p for p, m in zip(self.paths, mask) if m], self.targets[mask],
                        pick(self.groups), self.probs[mask], self.decided[mask], pick(self.raw_probs),
                        pick(self.refer), threshold=self.threshold)
        ev.negative = self.negative
        return ev


# --- figures --------------------------------------------------------------------------------------------------

def figures(ev, bootstraps=BOOTSTRAPS, seed=0, breakdown=True, sizes=None):
    """Every figure of one evaluation; intervals when ``bootstraps`` > 0; per source kind and image size
    when ``breakdown`` (``sizes``: "WxH" per image)."""
    labels, n = ev.labels, len(ev.targets)
    if not n:
        raise ValueError("no images to report on")
    weights = None
    out = {"images": n, "groups": len(set(ev.groups)) if ev.groups is not None else None,
           "class_counts": dict((l, int(np.sum(ev.targets == k))) for k, l in enumerate(labels))}
    if bootstraps:
        weights = metrics.bootstrap_weights(n, bootstraps, seed, ev.groups)
        out["bootstrap"] = {"resamples": bootstraps, "seed": seed, "unit": "groups" if ev.groups is not None
                            else "images", "level": 0.95, "method": "percentile"}
    label = metrics.classification_report(ev.targets, ev.decided, labels)
    if weights is not None:
        label["intervals"] = metrics.classification_intervals(ev.targets, ev.decided, labels, weights)
    out["label"] = label
    argmax = ev.probs.argmax(axis=1)
    at_argmax = metrics.classification_report(ev.targets, argmax, labels)
    out["argmax"] = {"accuracy": at_argmax["accuracy"], "balanced_accuracy": at_argmax["balanced_accuracy"],
                     "recall": dict((l, at_argmax["per_class"][l]["recall"]) for l in labels)}
    out["auc"] = metrics.one_vs_rest_auc(ev.probs, ev.targets, labels)
    out["calibration"] = {"ece": ece(ev.probs, ev.targets), "bins": ECE_BINS,
                          "reliability": metrics.reliability(ev.probs, ev.targets, ECE_BINS)}
    if ev.raw_probs is not None:
        out["calibration"]["before"] = {"ece": ece(ev.raw_probs, ev.targets),
                                        "reliability": metrics.reliability(ev.raw_probs, ev.targets, ECE_BINS)}
    if ev.negative:
        positive = ~np.isin(ev.targets, ev.negative)
        score = 1.0 - ev.probs[:, ev.negative].sum(axis=1)
        out["referral_auc"] = metrics.roc_auc(score, positive)
        if ev.refer is not None:
            out["referral"] = dict(metrics.binary_rates(ev.refer, positive, weights), threshold=ev.threshold)
    if breakdown:
        kinds = [source_kind(p) for p in ev.paths]
        out["by_source"] = _breakdown(ev, kinds, SOURCE_KINDS)
        if sizes is not None:
            out["by_size"] = _breakdown(ev, sizes, sorted(set(sizes)))
    return out


def _breakdown(ev, keys, order):
    keys = np.asarray(keys)
    found = {}
    for key in order:
        mask = keys == key
        if mask.any():
            found[key] = figures(ev.subset(mask), bootstraps=0, breakdown=False)
    return found


def headline(f):
    """The figures compared across folds and models, flattened: name -> value (None where undefined)."""
    labels = f["label"]["labels"]
    out = {"accuracy": f["label"]["accuracy"], "balanced_accuracy": f["label"]["balanced_accuracy"]}
    for l in labels:
        for key in ("precision", "recall", "f1"):
            out["{}/{}".format(key, l)] = f["label"]["per_class"][l][key] if f["class_counts"][l] else None
        out["auc/" + l] = f["auc"][l]
    out["ece"] = f["calibration"]["ece"]
    if "referral_auc" in f:
        out["referral_auc"] = f["referral_auc"]
    if "referral" in f:
        out["referral_sensitivity"] = f["referral"]["sensitivity"]
        out["referral_specificity"] = f["referral"]["specificity"]
    return out


def agreement(a, b):
    """How often two models give the same label on the same images (matched by path)."""
    where = dict((p, i) for i, p in enumerate(b.paths))
    pairs = [(i, where[p]) for i, p in enumerate(a.paths) if p in where]
    if not pairs:
        return None
    ia, ib = np.array(pairs).T
    same = a.decided[ia] == b.decided[ib]
    return {"images": int(len(pairs)), "label_agreement": float(same.mean()), "disagreements": int((~same).sum()),
            "both_right": int(np.sum(same & (a.decided[ia] == a.targets[ia]))),
            "first_right_only": int(np.sum((a.decided[ia] == a.targets[ia]) & (b.decided[ib] != b.targets[ib]))),
            "second_right_only": int(np.sum((a.decided[ia] != a.targets[ia]) & (b.decided[ib] == b.targets[ib])))}


# --- predictions CSV (cross-validation) ----------------------------------------------------------------------

def read_predictions(path, negative=("normal",)):
    """{model: {fold: Evaluation}} from path,label,group,fold,model[,temperature],p_<class>... With a
    temperature column (`retina-train cv` fits one per fold and model on that fold's val split) the figures
    are at it and the T = 1 probabilities as written are the "before" of the reliability diagram."""
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        columns = reader.fieldnames or []
        labels = [c[2:] for c in columns if c.startswith("p_")]
        missing = sorted({"path", "label", "fold", "model"} - set(columns))
        if missing or not labels:
            raise ValueError("{}: needs columns path,label,fold,model and p_<class> per class; missing {}".format(
                path, missing or ["p_<class>"]))
        rows = list(reader)
    if not rows:
        raise ValueError("{}: no rows".format(path))
    found = {}
    for line, row in enumerate(rows, start=2):
        if row["label"] not in labels:
            raise ValueError("{}:{}: label {!r} has no p_{} column".format(path, line, row["label"], row["label"]))
        try:
            p = [float(row["p_" + l]) for l in labels]
        except ValueError:
            raise ValueError("{}:{}: a p_<class> value is not a number".format(path, line))
        if min(p) < 0 or abs(sum(p) - 1) > 1e-3:
            raise ValueError("{}:{}: the probabilities must be >= 0 and sum to 1 (they sum to {:.4f})".format(
                path, line, sum(p)))
        found.setdefault(row["model"], {}).setdefault(row["fold"], []).append((row, p))
    has_group, has_temperature = "group" in columns, "temperature" in columns
    out = {}
    for model, folds in sorted(found.items()):
        out[model] = {}
        for fold, items in sorted(folds.items(), key=lambda kv: _fold_key(kv[0])):
            raw = np.array([p for _, p in items])
            probs = at_temperature(raw, np.array([[float(r["temperature"] or 1)] for r, _ in items])) \
                if has_temperature else raw
            out[model][fold] = Evaluation(
                labels, [r["path"] for r, _ in items], [labels.index(r["label"]) for r, _ in items],
                np.array([r["group"] or r["path"] for r, _ in items]) if has_group else None,
                probs, raw_probs=raw if has_temperature else None, negative=negative)
    return labels, out


def _fold_key(fold):
    return (0, int(fold), "") if fold.isdigit() else (1, 0, fold)


def pooled(folds):
    evs = list(folds.values())
    first = evs[0]
    groups = None if first.groups is None else np.concatenate(
        [np.array(["{}|{}".format(fold, g) for g in ev.groups]) for fold, ev in folds.items()])
    raw = None if any(e.raw_probs is None for e in evs) else np.concatenate([e.raw_probs for e in evs])
    ev = Evaluation(first.labels, sum([e.paths for e in evs], []), np.concatenate([e.targets for e in evs]),
                    groups, np.concatenate([e.probs for e in evs]), raw_probs=raw)
    ev.negative = first.negative
    return ev


def _pooled_figures(ev, bootstraps, seed, data):
    """With ``data`` (the image root the paths are relative to), also per image size."""
    sizes = None
    if data:
        paths = [p if os.path.isabs(p) else os.path.join(data, p) for p in ev.paths]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise FileNotFoundError("{}: image missing ({} of {}); is --data the image root of the predictions' "
                                    "paths?".format(missing[0], len(missing), len(paths)))
        sizes = image_sizes(paths)
    return figures(ev, bootstraps, seed, sizes=sizes)


def cv_figures(models, bootstraps=BOOTSTRAPS, seed=0, data=None):
    """Per model: each fold's figures, mean +/- sd over folds, pooled out-of-fold figures with intervals;
    the KD gain per fold; teacher-student agreement per fold."""
    out = {"models": {}, "kd_gain": None, "teacher_student": None}
    for model, folds in models.items():
        per_fold = dict((fold, figures(ev, bootstraps=0)) for fold, ev in folds.items())
        lines = dict((fold, headline(f)) for fold, f in per_fold.items())
        names = sorted(set(k for h in lines.values() for k in h))
        out["models"][model] = {"folds": per_fold, "headline": lines,
                                "mean_sd": dict((k, metrics.mean_sd([h.get(k) for h in lines.values()]))
                                                for k in names),
                                "pooled": _pooled_figures(pooled(folds), bootstraps, seed, data)}
    a, b = KD_PAIR
    if a in models and b in models:
        common = [f for f in models[a] if f in models[b]]
        gains = {}
        for fold in common:
            ha, hb = out["models"][a]["headline"][fold], out["models"][b]["headline"][fold]
            gains[fold] = dict((k, ha[k] - hb[k]) for k in ha if ha.get(k) is not None and hb.get(k) is not None)
        names = sorted(set(k for g in gains.values() for k in g))
        out["kd_gain"] = {"definition": "{} - {}, same fold, same images".format(a, b), "folds": gains,
                          "mean_sd": dict((k, metrics.mean_sd([g.get(k) for g in gains.values()])) for k in names)}
    if "teacher" in models and "student" in models:
        out["teacher_student"] = dict((fold, agreement(models["student"][fold], models["teacher"][fold]))
                                      for fold in models["student"] if fold in models["teacher"])
    return out


# --- a bundle -------------------------------------------------------------------------------------------------

def evaluate_bundle(bundle, samples, split, cache_dir=None, log=print):
    """(Evaluation at the bundle's rule, prepared images) on ``split`` of the bundle's split."""
    from training.calibrate import network, split_images  # onnxruntime: only for a bundle
    images, targets = split_images(bundle, samples, split, cache_dir, log)
    chosen = [s for s in samples if s.split == split]
    logits = network(bundle, "fp32", images)
    rule = Rule.from_bundle(bundle)
    probs = rule.probabilities(logits)
    return Evaluation(bundle.labels, [s.path for s in chosen], targets, np.array([s.group for s in chosen]),
                      probs, rule.decide(logits), softmax(logits), rule.refers(probs),
                      (bundle.referral or {}).get("negative", ()), rule.threshold), images


def image_sizes(paths):
    """"WxH" of every image, from its header (Pillow) or, failing that, by decoding it."""
    sizes = []
    for path in paths:
        try:
            from PIL import Image
            with Image.open(path) as im:
                w, h = im.size
        except Exception:  # not Pillow-readable (DICOM, odd JPEG): decode as the device does
            from edge.io.decode import read_image
            h, w = read_image(path).shape[:2]
        sizes.append("{}x{}".format(w, h))
    return sizes


def read_teacher(path, student):
    """The teacher's predictions (path,p_<class>..., any other columns ignored) on the student's images."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    missing = [l for l in student.labels if rows and "p_" + l not in rows[0]]
    if not rows or missing or "path" not in rows[0]:
        raise ValueError("{}: needs columns path and p_<class> for {}".format(path, student.labels))
    key = lambda p: "/".join(os.path.normpath(p).split(os.sep)[-2:])  # noqa: E731  class/file
    probs = dict((key(r["path"]), [float(r["p_" + l]) for l in student.labels]) for r in rows)
    keep = [i for i, p in enumerate(student.paths) if key(p) in probs]
    if not keep:
        raise ValueError("{}: none of its paths are images of the evaluated split".format(path))
    return Evaluation(student.labels, [student.paths[i] for i in keep], student.targets[keep], None,
                      np.array([probs[key(student.paths[i])] for i in keep]))


def onnx_cost(model_path, image, spec, runs=LATENCY_RUNS, warmup=LATENCY_WARMUP, threads=0):
    """Parameters (ONNX initializers), file size and batch-1 CPU latency (median of ``runs``) of a model."""
    import onnx
    import onnxruntime as ort
    from edge.backends.ort import session_options
    from edge.preprocess import normalize
    model = onnx.load(model_path)
    parameters = int(sum(int(np.prod(t.dims)) for t in model.graph.initializer))
    session = ort.InferenceSession(model_path, session_options("fp32", threads), providers=["CPUExecutionProvider"])
    feed = {session.get_inputs()[0].name: normalize(image[None], spec).astype(np.float32)}
    for _ in range(warmup):
        session.run(None, feed)
    times_ms = []
    for _ in range(runs):
        start = time.perf_counter()
        session.run(None, feed)
        times_ms.append(1000.0 * (time.perf_counter() - start))
    return {"file": os.path.basename(model_path), "onnx_bytes": os.path.getsize(model_path),
            "onnx_initializer_values": parameters, "latency_ms_median": float(np.median(times_ms)),
            "latency_ms_p90": float(np.percentile(times_ms, 90)), "runs": runs, "warmup": warmup, "batch": 1,
            "threads": threads or "onnxruntime default", "cpu_count": os.cpu_count(),
            "runtime": "onnxruntime {} CPUExecutionProvider".format(ort.__version__)}


def bundle_report(bundle_dir, data, split="val", teacher_predictions=None, teacher_model=None,
                  bootstraps=BOOTSTRAPS, seed=0, latency_runs=LATENCY_RUNS, cache_dir=None, log=print):
    """The report's JSON for a bundle on one split of its recorded split."""
    from models.bundle import load_bundle
    from training.quantize import bundle_samples
    bundle = load_bundle(bundle_dir)
    samples = bundle_samples(bundle, data)
    ev, images = evaluate_bundle(bundle, samples, split, cache_dir, log)
    log("{}: {} images; figures with {} bootstrap resamples of groups".format(split, len(ev.targets), bootstraps))
    out = {"kind": "bundle", "bundle": {"name": bundle.manifest["name"], "root": bundle_dir,
                                        "sha256": bundle.manifest["model"]["sha256"],
                                        "architecture": bundle.manifest["model"].get("architecture")},
           "split": split, "split_images": dict((s, sum(1 for x in samples if x.split == s))
                                                for s in ("train", "val", "test")),
           "model": "fp32 model.onnx through onnxruntime CPU, the device's preprocessing and edge.postprocess.Rule",
           "rule": {"temperature": bundle.temperature, "offsets": bundle.decision_offsets,
                    "referral": {k: v for k, v in (bundle.referral or {}).items() if k != "val"} or None,
                    "referral_chosen_on": (bundle.referral or {}).get("val")},
           "figures": figures(ev, bootstraps, seed, sizes=image_sizes(ev.paths))}
    if teacher_predictions:
        teacher = read_teacher(teacher_predictions, ev)
        out["teacher"] = {"source": teacher_predictions, "figures": figures(teacher, bootstraps=0, breakdown=False),
                          "agreement": agreement(ev, teacher)}
    else:
        out["teacher"] = None
    log("timing the student on this CPU: batch 1, median of {}".format(latency_runs))
    cost = {"student": dict(onnx_cost(bundle.onnx_path, images[0], bundle.preprocess, latency_runs),
                            parameters=bundle.manifest["model"].get("parameters"))}
    cost["teacher"] = (dict(onnx_cost(teacher_model, images[0], bundle.preprocess, latency_runs), parameters=None)
                       if teacher_model else None)
    out["cost"] = cost
    return out, ev


def predictions_report(path, negative=("normal",), bootstraps=BOOTSTRAPS, seed=0, data=None):
    labels, models = read_predictions(path, negative)
    out = {"kind": "predictions", "source": path, "labels": labels,
           "negative": list(negative), "cv": cv_figures(models, bootstraps, seed, data)}
    return out, models


def write_json(record, out_dir):
    path = os.path.join(out_dir, "report.json")
    with open(path + ".tmp", "w") as f:
        json.dump(record, f, indent=1, sort_keys=True)
    os.replace(path + ".tmp", path)
    return path


def run(args, log=print):
    from training import report_md, report_plots
    if bool(args.bundle) == bool(args.predictions):
        raise ValueError("give --bundle (with --data) or --predictions, one of them")
    os.makedirs(args.out, exist_ok=True)
    if args.bundle:
        if not args.data:
            raise ValueError("--bundle needs --data: the image root of the bundle's split.csv, or the run's split CSV")
        record, ev = bundle_report(args.bundle, args.data, args.split, args.teacher_predictions, args.teacher_model,
                                   args.bootstraps, args.seed, args.latency_runs, args.cache_dir or None, log)
        record["plots"] = report_plots.bundle_plots(args.out, ev, record)
    else:
        negative = [n.strip() for n in args.negative.split(",") if n.strip()]
        record, models = predictions_report(args.predictions, negative, args.bootstraps, args.seed, args.data)
        record["plots"] = report_plots.cv_plots(args.out, models, record)
    record["command"] = getattr(args, "command", "")
    write_json(record, args.out)
    md = report_md.write(args.out, record)
    if args.bundle and _inside(args.out, args.bundle):  # the card links the reports beside the bundle
        from models.bundle import load_bundle
        from training import modelcard
        log("updated {}".format(modelcard.write(args.bundle, load_bundle(args.bundle).manifest)))
    log("wrote {}, report.json and {} plot(s) in {}".format(os.path.basename(md), len(record["plots"]["written"]),
                                                           args.out))
    return record


def _inside(path, folder):
    path, folder = os.path.realpath(path), os.path.realpath(folder)
    return path.startswith(folder + os.sep)


def add_arguments(p):
    p.add_argument("--bundle", default=None,
                   help="bundle folder to evaluate, with --data (default: none; --bundle or --predictions is required)")
    p.add_argument("--data", default=None, help="image root the bundle's split.csv is relative to "
                                               "(e.g. ../shared/data/fundus4), or the run's split CSV; with "
                                               "--predictions, optional: the image root of its paths, for the "
                                               "per-image-size figures (default: none)")
    p.add_argument("--split", default="val", choices=("val", "test"),
                   help="which split of the bundle's split to report on (default %(default)s)")
    p.add_argument("--predictions", default=None, metavar="CSV",
                   help="instead of a bundle: a CV predictions file path,label,group,fold,model,p_<class>... (default: none)")
    p.add_argument("--negative", default="normal", metavar="CLASSES",
                   help="with --predictions: classes not referred, for the referral AUC (default %(default)s)")
    p.add_argument("--teacher-predictions", default=None, metavar="CSV",
                   help="the teacher's predictions (path,p_<class>...) on the same images, for the agreement "
                        "(default: none: 'not available')")
    p.add_argument("--teacher-model", default=None, metavar="ONNX", help="the teacher's ONNX, for the cost table (default: none: 'not available')")
    p.add_argument("--out", required=True, help="report folder to write (required)")
    p.add_argument("--bootstraps", type=int, default=BOOTSTRAPS, help="bootstrap resamples (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="bootstrap seed (default %(default)s)")
    p.add_argument("--latency-runs", type=int, default=LATENCY_RUNS,
                   help="timed batch-1 runs of each ONNX model on this CPU (default %(default)s)")
    p.add_argument("--cache-dir", default=".cache/prepared", help="prepared-image cache ('' for none; default %(default)s)")
