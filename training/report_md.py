"""report.md of `retina-train report`, from the report's JSON record alone: every figure with what it means in
plain words and the images it rests on; the weakest class is named, never averaged away."""
import os


def pct(x):
    return "-" if x is None else "{:.1f} %".format(100.0 * x)


def ci(pair):
    return "-" if not pair else "{}–{}".format(pct(pair[0]), pct(pair[1]))


def num(x, digits=3):
    return "-" if x is None else "{:.{d}f}".format(x, d=digits)


def short(label):
    return label.replace("diabetic_retinopathy", "diabetic retinopathy")


def _bootstrap_words(f):
    b = f.get("bootstrap")
    if not b:
        return ""
    if b["unit"] == "groups":
        return ("Intervals are 95 % percentile bootstrap intervals from {} resamples of the {} **groups** (a "
                "patient's two eyes, or the augmented copies of one source image, are one group), not of single "
                "images: images of one group are not independent, and resampling them one by one would make the "
                "intervals too narrow.".format(b["resamples"], f["groups"]))
    return "Intervals are 95 % percentile bootstrap intervals from {} resamples of the images.".format(b["resamples"])


def class_table(f, argmax=False):
    """Per class, with the recall at argmax beside the rule's when ``argmax`` (a bundle with a decision rule)."""
    label, inter = f["label"], f["label"].get("intervals", {}).get("per_class", {})
    extra = " recall at argmax |" if argmax else ""
    lines = ["| class | images | precision (95 % CI) | recall (95 % CI) | F1 (95 % CI) | ROC-AUC |" + extra,
             "|---|---|---|---|---|---|" + ("---|" if argmax else "")]
    for l in label["labels"]:
        r, i = label["per_class"][l], inter.get(l, {})
        lines.append("| {} | {} | {} ({}) | {} ({}) | {} ({}) | {} |".format(
            short(l), r["support"], pct(r["precision"]), ci(i.get("precision")), pct(r["recall"]),
            ci(i.get("recall")), num(r["f1"]), _range(i.get("f1")), num(f["auc"].get(l))) +
            (" {} |".format(pct(f["argmax"]["recall"][l])) if argmax else ""))
    return lines


def source_gaps(f, gap=0.05):
    """Sentences naming each class whose recall differs by ``gap`` or more between source kinds."""
    found = []
    for l in f["label"]["labels"]:
        seen = [(part["label"]["per_class"][l]["recall"], kind, part["class_counts"][l])
                for kind, part in f["by_source"].items() if part["class_counts"][l]]
        if len(seen) > 1 and max(seen)[0] - min(seen)[0] >= gap:
            found.append("- {} recall differs by source: {}.".format(short(l).capitalize(), ", ".join(
                "{} on {} images ({})".format(pct(r), kind, n) for r, kind, n in sorted(seen))))
    return found


def _range(pair):
    return "-" if not pair else "{:.3f}–{:.3f}".format(*pair)


def weakest(f):
    per = f["label"]["per_class"]
    present = [l for l in f["label"]["labels"] if per[l]["support"]]
    low = min(present, key=lambda l: per[l]["recall"])
    inter = f["label"].get("intervals", {}).get("per_class", {}).get(low, {}).get("recall")
    matrix, labels = f["label"]["confusion_matrix"], f["label"]["labels"]
    row = matrix[labels.index(low)]
    wrong = sorted(((n, labels[j]) for j, n in enumerate(row) if j != labels.index(low) and n), reverse=True)
    return ("**Weakest class: {}**, recall {} ({}{}): of its {} images, {} were missed{}.".format(
        short(low), pct(per[low]["recall"]), "95 % CI " if inter else "", ci(inter) if inter else "point estimate",
        per[low]["support"], per[low]["support"] - row[labels.index(low)],
        " (" + ", ".join("{} called {}".format(n, short(l)) for n, l in wrong) + ")" if wrong else "")) + \
        _lowest_precision(f)


def _lowest_precision(f):
    per, labels, matrix = f["label"]["per_class"], f["label"]["labels"], f["label"]["confusion_matrix"]
    given = [l for l in labels if sum(row[labels.index(l)] for row in matrix)]
    if not given:
        return ""
    low = min(given, key=lambda l: per[l]["precision"])
    j = labels.index(low)
    column = [(row[j], labels[i]) for i, row in enumerate(matrix) if i != j and row[j]]
    inter = f["label"].get("intervals", {}).get("per_class", {}).get(low, {}).get("precision")
    return (" **Lowest precision: {}**, {}{}: of the {} images labelled {}, {} were another class{}.".format(
        short(low), pct(per[low]["precision"]), " (95 % CI {})".format(ci(inter)) if inter else "",
        sum(row[j] for row in matrix), short(low), sum(n for n, _ in column),
        " (" + ", ".join("{} {}".format(n, short(l)) for n, l in sorted(column, reverse=True)) + ")" if column else ""))


def confusion_table(f):
    labels, matrix = f["label"]["labels"], f["label"]["confusion_matrix"]
    lines = ["| true \\ printed | " + " | ".join(short(l) for l in labels) + " | images |",
             "|---" * (len(labels) + 2) + "|"]
    for l, row in zip(labels, matrix):
        lines.append("| **{}** | ".format(short(l)) + " | ".join(str(v) for v in row) + " | {} |".format(sum(row)))
    return lines


def breakdown_table(parts, labels, title):
    lines = ["| {} | images | classes in it | accuracy | balanced accuracy | {} | ECE | referral sens. / spec. |".format(
        title, " | ".join("recall " + short(l) for l in labels)), "|---" * (7 + len(labels)) + "|"]
    for key, f in parts.items():
        counts = ", ".join("{} {}".format(short(l), n) for l, n in f["class_counts"].items() if n)
        recall = " | ".join(pct(f["label"]["per_class"][l]["recall"]) if f["class_counts"][l] else "-" for l in labels)
        ref = f.get("referral")
        refer = "{} / {}".format(pct(ref["sensitivity"]), pct(ref["specificity"])) if ref else "-"
        lines.append("| {} | {} | {} | {} | {} | {} | {} | {} |".format(
            key, f["images"], counts, pct(f["label"]["accuracy"]), pct(f["label"]["balanced_accuracy"]), recall,
            pct(f["calibration"]["ece"]), refer))
    return lines


def bundle_md(r):
    f, labels = r["figures"], r["figures"]["label"]["labels"]
    rule = r["rule"]
    ref = f.get("referral")
    where = "the **{} split** of the bundle's own recorded split ({} images in {} groups; the split holds {})".format(
        r["split"], f["images"], f["groups"], ", ".join("{} {}".format(k, v) for k, v in r["split_images"].items()))
    lines = ["# Evaluation report: {} on the {} split".format(r["bundle"]["name"], r["split"]), "",
             "What the device would print on {}: the bundle's fp32 `model.onnx` through ONNX Runtime, with the "
             "device's own preprocessing, temperature ({:.4f}), decision rule (logit offsets {}) and referral "
             "point. The images are held out from training, group-wise; {}.".format(
                 where, rule["temperature"], _offsets(rule["offsets"]),
                 "the val split also chose the temperature, the rule and the referral threshold, so these figures "
                 "flatter the model slightly; the test split's do not" if r["split"] == "val" else
                 "the test split chose nothing (the temperature, the rule and the referral threshold were chosen "
                 "on val)"), "",
             _bootstrap_words(f), "",
             "## Headline", "",
             "| figure | value | 95 % CI | what it means |", "|---|---|---|---|"]
    inter = f["label"].get("intervals", {})
    lines += [
        "| accuracy | {} | {} | share of the {} images whose printed label is the true class |".format(
            pct(f["label"]["accuracy"]), ci(inter.get("accuracy")), f["images"]),
        "| balanced accuracy | {} | {} | mean of the per-class recalls: every class counts the same |".format(
            pct(f["label"]["balanced_accuracy"]), ci(inter.get("balanced_accuracy"))),
        "| accuracy at argmax | {} | | the most probable class instead of the rule's label, for comparison |".format(
            pct(f["argmax"]["accuracy"])),
        "| ECE before → after temperature | {} → {} | | expected calibration error (top-1, {} bins): how far the "
        "shown confidence is from the real hit rate |".format(
            pct(f["calibration"].get("before", {}).get("ece")), pct(f["calibration"]["ece"]), f["calibration"]["bins"])]
    if ref:
        lines += [
            "| referral sensitivity | {} | {} | of the {} images with disease, the share referred ({} missed) |".format(
                pct(ref["sensitivity"]), ci(ref.get("sensitivity_95")), ref["positives"], ref["missed"]),
            "| referral specificity | {} | {} | of the {} normal images, the share not referred ({} referred) |".format(
                pct(ref["specificity"]), ci(ref.get("specificity_95")), ref["negatives"], ref["false_alarms"])]
    if f.get("referral_auc") is not None:
        lines.append("| referral ROC-AUC | {} | | how well P(refer) ranks disease above normal, at any threshold |".format(
            num(f["referral_auc"])))
    lines += ["", weakest(f), "", "## Per class", "",
              "Precision: of the images given this label, the share that truly are this class. Recall (sensitivity "
              "for this class): of the images of this class, the share given this label. F1 is their harmonic mean. "
              "ROC-AUC (one class against the rest, from the calibrated probability of that class): the chance that "
              "an image of the class gets a higher probability than one of another class; 1 is perfect, 0.5 is "
              "chance.{}".format(" The last column is the recall of the most probable class, before the decision "
                                 "rule's offsets: what the rule traded." if rule["offsets"] and any(
                                     rule["offsets"].values()) else ""), ""] + \
        class_table(f, argmax=bool(rule["offsets"] and any(rule["offsets"].values()))) + \
        ["", "![per class](per_class.png)", "",
              "## Confusion matrix", "",
              "Rows are the true class, columns the label the device prints (after the decision rule). The diagonal "
              "is right; every other cell is a kind of mistake.", ""] + confusion_table(f) + [
              "", "![confusion matrix](confusion.png) ![ROC](roc.png)", ""]
    lines += _calibration_md(f) + _referral_md(ref, rule) + _breakdown_md(f, labels)
    lines += _teacher_md(r) + _cost_md(r["cost"]) + _how_md(r)
    return "\n".join(lines)


def _offsets(offsets):
    text = ", ".join("{} {:+.2f}".format(short(k), v) for k, v in sorted((offsets or {}).items()) if v)
    return text or "none"


def _calibration_md(f):
    c = f["calibration"]
    return ["## Calibration", "",
            "When the device says 80 %, is it right about 80 % of the time? The reliability diagram puts the "
            "images into {} bins by their top-1 probability and plots the hit rate in each bin against the mean "
            "probability; a calibrated model lies on the diagonal. ECE is the images-weighted mean gap. Before: the "
            "raw softmax (T = 1); after: the bundle's temperature, the probabilities every output shows. ECE: {} → "
            "{}.{}".format(c["bins"], pct(c.get("before", {}).get("ece")), pct(c["ece"]), _worse(c)), "",
            "![reliability](reliability.png)", ""]


def _worse(c):
    before = c.get("before", {}).get("ece")
    if before is None or c["ece"] <= before:
        return ""
    return (" **On these images the temperature made the ECE worse**: it was fitted to minimise the log-loss on "
            "val, not the ECE, and a few hundred images in 15 bins make the ECE itself noisy (sparse bins swing "
            "the most; see the marker sizes).")


def _referral_md(ref, rule):
    if not ref:
        return ["## Referral", "", "The bundle has no referral operating point: not available.", ""]
    chosen = rule.get("referral_chosen_on") or {}
    return ["## Referral", "",
            "The device refers an image when P(refer) = {} reaches {:.4f}, the threshold stored in the bundle "
            "(chosen on val for sensitivity ≥ 95 %; on val it gave sensitivity {}, specificity {}). Here: "
            "sensitivity {} (95 % CI {}): {} of {} images with disease were **not referred**; specificity {} "
            "(95 % CI {}): {} of {} normal images were referred. A missed referral is the costly error; the "
            "lower end of the interval is the honest figure to plan with.".format(
                rule["referral"].get("score"), ref["threshold"], pct(chosen.get("sensitivity")),
                pct(chosen.get("specificity")), pct(ref["sensitivity"]), ci(ref.get("sensitivity_95")),
                ref["missed"], ref["positives"], pct(ref["specificity"]), ci(ref.get("specificity_95")),
                ref["false_alarms"], ref["negatives"]), ""]


def _breakdown_md(f, labels):
    lines = ["## By source", "",
             "The four classes come from different source datasets (the data README's shortcut trap: diabetic "
             "retinopathy and normal are 400x400 patient photographs, most cataract and glaucoma images 256x256 "
             "augmented copies). A figure that mixes sources can reward recognising the source instead of the "
             "disease, so every headline figure is repeated per source kind (from the file name: `patient` = "
             "NNNN_left/right, `augmented` = _N_XXXXXXX copies, `single` = anything else) and per image size. A "
             "row with one class only says nothing about telling classes apart; small rows are noisy.", ""]
    lines += breakdown_table(f["by_source"], labels, "source kind") + [""]
    gaps = source_gaps(f)
    if gaps:
        lines += ["Where a class does better on one source than another (a hint of the shortcut, or of one source "
                  "being harder):", ""] + gaps + [""]
    if f.get("by_size"):
        lines += breakdown_table(f["by_size"], labels, "image size") + [""]
    return lines


def _teacher_md(r):
    t = r.get("teacher")
    if not t:
        return ["## Teacher–student agreement", "",
                "Not available: the bundle carries only the student; give the teacher's predictions on these "
                "images with `--teacher-predictions FILE.csv` (path,p_<class>...).", ""]
    a, f = t["agreement"], t["figures"]
    return ["## Teacher–student agreement", "",
            "On the {} images both have: the student's printed label equals the teacher's argmax on {} ({} differ; "
            "student right and teacher wrong on {}, the reverse on {}). Teacher accuracy on them {}, balanced {} "
            "(from `{}`).".format(a["images"], pct(a["label_agreement"]), a["disagreements"], a["first_right_only"],
                                  a["second_right_only"], pct(f["label"]["accuracy"]),
                                  pct(f["label"]["balanced_accuracy"]), t["source"]), ""]


def _cost_md(cost):
    lines = ["## Cost", "",
             "Batch 1, fp32 ONNX Runtime on this workstation's CPU (not the Jetson): median and 90th percentile of "
             "the timed runs after warm-up. Other work on the machine disturbs these; rerun on a quiet machine "
             "for figures to quote.", "",
             "| model | parameters | ONNX initializer values | ONNX size | latency median (ms) | p90 (ms) | runs | CPU |",
             "|---|---|---|---|---|---|---|---|"]
    for name in ("student", "teacher"):
        c = cost.get(name)
        if not c:
            lines.append("| {} | not available | | | | | | no teacher ONNX given (`--teacher-model`) |".format(name))
            continue
        lines.append("| {} (`{}`) | {} | {:,} | {:.1f} MB | {:.1f} | {:.1f} | {} | {} cores, {} |".format(
            name, c["file"], "{:,}".format(c["parameters"]) if c.get("parameters") else "-",
            c["onnx_initializer_values"], c["onnx_bytes"] / 1e6, c["latency_ms_median"], c["latency_ms_p90"],
            c["runs"], c["cpu_count"], c["runtime"]))
    return lines + [""]


def _how_md(r):
    return ["## How this was made", "", "`{}`".format(r.get("command") or "retina-train report"), "",
            "Every number above, and more (reliability bins, per-size figures), is in `report.json`.", ""]


def cv_md(r):
    cv, labels = r["cv"], r["labels"]
    lines = ["# Cross-validation report", "",
             "From `{}`: out-of-fold predictions, one model per fold trained without that fold's groups. Figures "
             "are computed per fold from the probabilities as written (label = most probable class); mean ± sd is "
             "over folds (sd with n - 1: the spread between folds, how much one split's figure can be trusted). "
             "Pooled: all out-of-fold predictions of a model together, with bootstrap intervals. A predictions "
             "file carries no decision rule or referral threshold, so referral sensitivity/specificity at an "
             "operating point are not available here (the bundle's report has them); the referral ROC-AUC "
             "(P(refer) = 1 - P({})) is.".format(r["source"], " + ".join(r["negative"]) or "-"), ""]
    for model, m in _ordered(cv["models"]):
        folds = list(m["headline"])
        keys = ["accuracy", "balanced_accuracy"] + ["recall/" + l for l in labels] + ["ece"] + \
            [k for k in ("referral_auc",) if k in m["mean_sd"]]
        lines += ["## {}".format(model), "", "| figure | mean ± sd | " + " | ".join("fold " + f for f in folds) + " |",
                  "|---" * (len(folds) + 2) + "|"]
        lines.append("| images | | " + " | ".join(str(m["folds"][f]["images"]) for f in folds) + " |")
        for k in keys:
            s, fmt = m["mean_sd"].get(k, {}), num if k.startswith(("auc/", "referral_auc")) else pct
            lines.append("| {} | {} ± {} | ".format(k, fmt(s.get("mean")), fmt(s.get("sd"))) +
                         " | ".join(fmt(m["headline"][f].get(k)) for f in folds) + " |")
        p = m["pooled"]
        lines += ["", "Pooled out-of-fold ({} images, {} groups): accuracy {} ({}), balanced accuracy {}.".format(
            p["images"], p["groups"], pct(p["label"]["accuracy"]), ci(p["label"]["intervals"]["accuracy"]),
            pct(p["label"]["balanced_accuracy"])), "", weakest(p), "", _bootstrap_words(p), ""]
        lines += class_table(p) + [""] + breakdown_table(p["by_source"], labels, "source kind") + [""]
        if p.get("by_size"):
            lines += breakdown_table(p["by_size"], labels, "image size") + [""]
        lines += ["![{0}]({0}_confusion.png) ![{0}]({0}_roc.png) ![{0}]({0}_reliability.png)".format(model), ""]
    lines += _kd_md(cv) + _agreement_md(cv) + ["![folds](folds.png)", ""] + _how_md(r)
    return "\n".join(lines)


def _ordered(models):
    first = ("teacher", "student", "labels_only")
    return sorted(models.items(), key=lambda kv: (first.index(kv[0]) if kv[0] in first else len(first), kv[0]))


def _kd_md(cv):
    kd = cv.get("kd_gain")
    if not kd:
        return ["## KD gain", "", "Not available: the file needs both `student` and `labels_only` rows.", ""]
    folds = list(kd["folds"])
    acc = [g.get("accuracy") for g in kd["folds"].values() if g.get("accuracy") is not None]
    lines = ["## KD gain", "", "Distillation's gain: {}, in percentage points (AUC x 100); positive = distillation "
             "helped, except for ECE, where negative is better. Accuracy rose on {} of {} folds, fell on {}.".format(
                 kd["definition"], sum(a > 0 for a in acc), len(acc), sum(a < 0 for a in acc)), "",
             "| figure | mean ± sd | " + " | ".join("fold " + f for f in folds) + " |",
        "|---" * (len(folds) + 2) + "|"]
    for k, s in sorted(kd["mean_sd"].items()):
        if k.startswith(("precision/", "f1/", "auc/")):
            continue
        lines.append("| {} | {:+.2f} ± {} | ".format(k, 100 * s["mean"], "-" if s["sd"] is None else
                                                     "{:.2f}".format(100 * s["sd"])) +
                     " | ".join("{:+.2f}".format(100 * kd["folds"][f][k]) if k in kd["folds"][f] else "-"
                                for f in folds) + " |")
    return lines + [""]


def _agreement_md(cv):
    ts = cv.get("teacher_student")
    if not ts:
        return ["## Teacher–student agreement", "", "Not available: the file needs `teacher` and `student` rows.", ""]
    lines = ["## Teacher–student agreement", "", "| fold | images | same label | student right only | teacher right only |",
             "|---|---|---|---|---|"]
    for fold, a in ts.items():
        if a:
            lines.append("| {} | {} | {} | {} | {} |".format(fold, a["images"], pct(a["label_agreement"]),
                                                            a["first_right_only"], a["second_right_only"]))
    return lines + [""]


def write(out_dir, record):
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as f:
        f.write(bundle_md(record) if record["kind"] == "bundle" else cv_md(record))
    return path
