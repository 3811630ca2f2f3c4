"""A short model card written next to the bundle, from the manifest (and a cross-validation run's figures
where `retina-train card --cv` put one beside it, as report/cv.json)."""
import json
import os

from models.bundle import describe as describe_preprocess


_IMAGES = {"fundus": "colour fundus photographs", "oct": "OCT B-scans"}
_LIMITS = {
    "fundus": "Most cataract and glaucoma images in this source are 256x256 augmented copies while diabetic "
              "retinopathy and normal images are 400x400; every image is cropped to the disc and resized "
              "identically, and splits keep patients and source images whole, but a source shortcut cannot be "
              "ruled out. Metrics come from one held-out split of the development data.",
    "oct": "B-scans from one source of OCT devices; other devices, scan protocols and signal strengths need their "
           "own evaluation. Splits keep each patient's B-scans (and every frame of a volume) whole. Metrics come "
           "from one held-out split of the data above; where the licence line says SYNTHETIC, they measure "
           "nothing clinical.",
}


def _modality(manifest):
    return manifest.get("modality") or "fundus"


def _modality_line(manifest):
    """The bundle's modality, stated where it is not the default (a fundus card names its modality in the
    intended use, and the shipped fundus card stays as generated)."""
    modality = _modality(manifest)
    if modality == "fundus":
        return []
    return ["**Modality.** {}: `retina-edge` screens {} with this bundle and skips the other modality (DICOM "
            "Modality OPT is OCT).".format(modality, _IMAGES[modality]), ""]


def _pct(x):
    return "{:.1f} %".format(100.0 * x)


def find_reports(bundle_dir):
    """Evaluation reports beside the bundle (`retina-train report --out <bundle>/report[/<split>]`), as paths
    relative to it."""
    top = os.path.join(bundle_dir, "report")
    folders = [top] + ([os.path.join(top, d) for d in sorted(os.listdir(top))] if os.path.isdir(top) else [])
    return [os.path.relpath(os.path.join(d, "report.md"), bundle_dir).replace(os.sep, "/")
            for d in folders if os.path.isfile(os.path.join(d, "report.md"))]


def _report_links(reports):
    if not reports:
        return []
    return ["**Evaluation report** (per-class figures with bootstrap intervals, confusion matrix, ROC-AUC, "
            "reliability, referral, per-source breakdown, cost): " + ", ".join(
                "[{}]({})".format(r.split("/")[-2], r) for r in reports) + ".", ""]


CV_FILE = os.path.join("report", "cv.json")
_CV_ROWS = (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"), ("glaucoma_recall", "glaucoma recall"),
            ("ece_calibrated", "ECE at the fold's T"))
_CV_RULE_ROWS = (("accuracy_rule", "accuracy"), ("glaucoma_recall_rule", "glaucoma recall"),
                 ("referral_sensitivity", "referral sensitivity"), ("referral_specificity", "referral specificity"))


def read_cv(bundle_dir):
    path = os.path.join(bundle_dir, CV_FILE)
    if not os.path.isfile(path):
        return None
    with open(path) as f:
        return json.load(f)


def _pm(entry):
    if not entry or entry.get("mean") is None:
        return "n/a"
    return "{:.1f} ± {:.1f}".format(100 * entry["mean"], 100 * entry["sd"])


def cv_recipe_differences(cv, manifest):
    """What differs between the CV run's recipe and the bundle's network and input (empty: the same)."""
    settings = cv.get("command_settings", {})
    found = []
    arch = manifest["model"]["architecture"]
    if settings.get("student_model") and settings["student_model"] not in (arch, arch.replace("tf_", "")):
        found.append("student {} (the bundle is {})".format(settings["student_model"], arch))
    size = manifest["input"]["shape"][-1]
    if settings.get("image_size") and int(settings["image_size"]) != int(size):
        found.append("image size {} (the bundle takes {})".format(settings["image_size"], size))
    return found


def _cross_validation(cv, manifest):
    if not cv:
        return []
    settings = cv.get("command_settings", {})
    k = len(cv.get("folds", []))
    lines = ["**Cross-validation** ({} patient/source-grouped, class-stratified folds; every fold's teacher and "
             "students trained without that fold's images; mean ± sd over folds; `retina-train cv`, figures in "
             "`{}`): teacher `{}`, student `{}`, {} px, epochs {}{}{}.".format(
                 k, CV_FILE.replace(os.sep, "/"), settings.get("teacher_model"), settings.get("student_model"),
                 settings.get("image_size"), settings.get("epochs") or "teacher 6 / distil 10 (the defaults)",
                 "; teacher options `{}`".format(settings["teacher_options"]) if settings.get("teacher_options") else "",
                 "; student options `{}`".format(settings["student_options"]) if settings.get("student_options") else "")]
    if settings.get("pretrain"):
        lines[-1] = lines[-1][:-1] + "; each fold's teacher started from self-supervised pretraining on that fold's " \
                                     "train images only{}.".format(
                                         " (`{}`)".format(settings["pretrain_options"])
                                         if settings.get("pretrain_options") else "")
    differ = cv_recipe_differences(cv, manifest)
    if differ:
        lines.append("The CV recipe is NOT this bundle's: " + "; ".join(differ) + ".")
    else:
        lines.append("The same network and input size as this bundle, trained per fold by the recipe above; the "
                     "shipped network itself was trained once on the split below, so these figures describe its "
                     "recipe, not that one network.")
    models = cv.get("models", {})
    names = [m for m in ("teacher", "student", "labels_only") if m in models]
    lines += ["", "| figure | " + " | ".join(n.replace("_", "-") for n in names) + " |",
              "|---|" + "---|" * len(names)]
    for key, title in _CV_ROWS:
        lines.append("| {} (argmax) | ".format(title) + " | ".join(_pm(models[n].get(key)) for n in names) + " |")
    if any("at_rule" in models[n] for n in names):
        for key, title in _CV_RULE_ROWS:
            lines.append("| {} at the decision chosen on the fold's val | ".format(title) + " | ".join(
                _pm(models[n].get("at_rule", {}).get(key)) for n in names) + " |")
    lines.append("")
    gain = cv.get("kd_gain_accuracy")
    if gain and gain.get("mean") is not None:
        lines.append("KD gain (distilled student minus the same student on labels alone, same folds and schedule): "
                     "{:+.1f} ± {:.1f} accuracy points{}.".format(
                         100 * gain["mean"], 100 * gain["sd"],
                         "" if gain["mean"] > 0 else ": distillation did not help this recipe"))
    so = cv.get("source_only_classifier")
    if so:
        lines.append("A classifier that sees only the file's source traits (image size, file kind, JPEG size) scores "
                     "{} on the same folds (majority class {}): accuracy above it is what the network adds.".format(
                         _pct(so["accuracy"]), _pct(so["majority_class_accuracy"])))
    return lines + [""]


def render(manifest, reports=(), cv=None):
    m, prov = manifest["metrics"], manifest["provenance"]
    data = prov["data"]
    lines = [
        "# Model card: {}".format(manifest["name"]),
        "",
        "**Intended use.** A screening aid that sorts {} into {} for referral by a "
        "clinician in settings without an ophthalmologist. It is not a diagnosis and must not be used to rule "
        "disease out. It has seen only the data below; other cameras, populations and image qualities "
        "need their own evaluation.".format(_IMAGES[_modality(manifest)], ", ".join(manifest["labels"])),
        "",
    ] + _modality_line(manifest) + [
        "**Model.** `{}` ({:,} parameters), ONNX opset {}, input {} {} {} ({}), outputs logits for: {}.".format(
            manifest["model"]["architecture"], manifest["model"].get("parameters", 0), manifest["model"]["opset"],
            manifest["input"]["name"], manifest["input"]["shape"], manifest["input"]["dtype"],
            manifest["input"]["layout"], ", ".join(manifest["labels"])),
        "Preprocessing: " + describe_preprocess(manifest["preprocess"]),
        "Starting weights: {}.".format(prov.get("weights") or "see commands"),
        "",
        "**Data.** {} images from `{}`. Licence: {}.".format(
            data.get("images"), data.get("image_root") or data.get("source"), data.get("licence")),
        "Split rule: {}; counts {}; the listing is `split.csv` beside this card (sha256 of "
        "name,label,split lines `{}`).".format(
            data.get("split_rule"), data.get("split_counts"), data.get("split_sha256", "")[:16]),
        "",
    ]
    for split in ("test", "val"):
        report = m.get(split)
        if not report:
            continue
        lines += ["**{} split** (group-wise held out, n = {}): accuracy {}, balanced accuracy {}{}.".format(
            split, report["n"], _pct(report["accuracy"]), _pct(report["balanced_accuracy"]),
            " (the network's argmax; the printed label follows the decision rule below)"
            if manifest["postprocess"].get("decision") else ""), "",
            "| class | precision | recall | F1 | support |", "|---|---|---|---|---|"]
        for lab, r in report["per_class"].items():
            lines.append("| {} | {} | {} | {:.3f} | {} |".format(lab, _pct(r["precision"]), _pct(r["recall"]),
                                                                r["f1"], r["support"]))
        lines.append("")
    parity = m.get("onnx_parity", {})
    if parity:
        lines += ["ONNX Runtime vs PyTorch on {} real images: max |delta logit| = {:.2g} ({}).".format(
            parity["images"], parity["max_abs_logit_diff"], parity["runtime"]), ""]
    lines += _variants(manifest.get("variants", {}))
    lines += _calibration(manifest)
    lines += _explain(manifest.get("explain"))
    lines += _report_links(reports)
    lines += _cross_validation(cv, manifest)
    limits = _LIMITS[_modality(manifest)]
    if cv:
        limits = limits.replace("Metrics come from one held-out split of the development data.",
                                "Metrics come from one held-out split of the development data, and the "
                                "cross-validation above from {} folds of it.".format(len(cv.get("folds", []))))
    lines += ["**Known limits.** " + limits,
              "", "**Reproduce** (commit `{}`):".format(prov["commit"]), "", "```"]
    lines += prov["commands"] + ["```", ""]
    return "\n".join(lines)


def _explain(entry):
    """The device's class activation maps (`retina-edge run --explain`), where the bundle carries them."""
    if not entry:
        return []
    parity = entry.get("parity", {})
    return ["**Explanations.** `{}` is `model.onnx` with its last feature map as a second output and `{}` holds the "
            "classifier weights: `retina-edge run --explain` draws class activation maps from them (ONNX Runtime, "
            "fp32). Logits against `model.onnx` on {} real images: max |delta| = {:.2g}. Made with: `{}`".format(
                entry["file"], entry["classifier"]["file"], parity.get("images", "?"),
                parity.get("max_abs_logit_diff", float("nan")), entry.get("command", "")), ""]


def _how(entry):
    if entry["kind"] != "qdq-int8":
        return "float16 inside, float32 input/output"
    cal, q = entry.get("calibration", {}), entry.get("quantization", {})
    method = cal.get("method", "?") + (" {}".format(cal["percentile"]) if cal.get("percentile") else "")
    text = "Q/DQ int8, {} calibration on {} {} images; left in float: {}".format(
        method, cal.get("images"), cal.get("split"), q.get("keep_fp32") or "nothing")
    if q.get("fine_tuning"):
        text += "; fine-tuned {} epoch(s) to the fp32 logits".format(q["fine_tuning"]["epochs"])
    return text


def _variants(variants):
    if not variants:
        return []
    lines = ["**Precision variants** (for TensorRT: INT8 on Orin, FP16 for TensorRT 11's strongly typed networks), "
             "compared with fp32 through ONNX Runtime on the same held-out images:", "",
             "| variant | file | made by | split | top-1 agreement | accuracy (fp32) | max abs delta prob |",
             "|---|---|---|---|---|---|---|"]
    for precision, entry in sorted(variants.items()):
        for key in ("agreement", "agreement_test"):
            a = entry.get(key)
            if a:
                lines.append("| {} | `{}` | {} | {} ({}) | {} | {} ({}) | {:.3f} |".format(
                    precision, entry["file"], _how(entry), a["split"], a["images"], _pct(a["top1_agreement"]),
                    _pct(a["accuracy"]), _pct(a["fp32_accuracy"]), a["max_abs_prob_diff"]))
    commands = sorted(set(e["command"] for e in variants.values() if e.get("command")))
    lines += ["", "Variants made with: " + "; ".join("`{}`".format(c) for c in commands)] if commands else []
    return lines + [""]


def _rule_row(split, f):
    a, r, ref = f["argmax"], f["rule"], f.get("referral")
    recall = ", ".join("{} {} -> {}".format(k, _pct(a["recall"][k]), _pct(v)) for k, v in r["recall"].items())
    refer = "{} ({} of {} missed) / {} ({} not referable)".format(
        _pct(ref["sensitivity"]), ref["missed"], ref["referable"], _pct(ref["specificity"]),
        ref["not_referable"]) if ref else "-"
    return "| {} ({}) | {} -> {} | {} -> {} | {} -> {} | {} | {} |".format(
        split, f["images"], _pct(f["uncalibrated"]["ece"]), _pct(f["ece"]), _pct(a["accuracy"]), _pct(r["accuracy"]), _pct(a["balanced_accuracy"]),
        _pct(r["balanced_accuracy"]), recall, refer)


def _calibration(manifest):
    post = manifest["postprocess"]
    c = post.get("calibration")
    if not c:
        return []
    t, d, ref = c["temperature"], c["decision"], post.get("referral", {})
    boot = c["referral"]["bootstrap"]
    offsets = ", ".join("{} {:+.2f}".format(k, v) for k, v in sorted(d["offsets"].items()) if v)
    lines = ["**Calibration and decision** (chosen on the val split, {} images; the test split chose nothing):".format(
                 c["images"]), "",
             "- Temperature {:.4f} (minimises val NLL): val ECE (top-1, 15 bins) {} -> {}, NLL {:.4f} -> {:.4f}; "
             "the probabilities every output shows are these calibrated ones.".format(
                 t["fitted"], _pct(t["before"]["ece"]), _pct(t["after"]["ece"]), t["before"]["nll"],
                 t["after"]["nll"]),
             "- Decision rule: the printed label is argmax(logits / T + offset) with offsets {} (others 0), "
             "from a grid search: {}.".format(offsets or "none", d["objective"]),
             "- Referral: refer when P(refer) = {} (calibrated) >= {:.4f}, chosen as the largest threshold with val "
             "sensitivity >= {:.0%}; it rests on {} referable val images (bootstrap 95 % at this threshold: "
             "sensitivity {}-{}, specificity {}-{}): the true sensitivity may be lower, confirm it on your own "
             "data. The label and the referral are separate operating points: on val {} image(s) got a disease "
             "label below the referral threshold and {} a normal label above it.".format(
                 ref.get("score"), ref.get("threshold", 0), c["referral"]["target_sensitivity"],
                 c["referral"]["referable_images"], *([_pct(x) for x in boot["sensitivity_95"] + boot["specificity_95"]]
                                                      + [c["val"]["referral"]["disease_label_not_referred"],
                                                         c["val"]["referral"]["negative_label_referred"]])),
             "",
             "| split | ECE (T = 1 -> T) | accuracy (argmax -> rule) | balanced accuracy | recall per class | referral sensitivity / "
             "specificity |", "|---|---|---|---|---|---|"]
    lines.append(_rule_row("val", c["val"]))
    if c.get("test"):
        lines.append(_rule_row("test, once", c["test"]))
    agreement = ["{} on {}: label at the rule agrees with fp32 on {} ({} differ; argmax agreement {}), referral "
                 "differs on {}".format(p, a["split"], _pct(a["rule_label_agreement"]), a["rule_label_disagreements"],
                                        _pct(a["argmax_agreement"]), a.get("refer_disagreements", "-"))
                 for key in ("variants", "variants_test") for p, a in sorted(c.get(key, {}).items())]
    if agreement:
        lines += ["", "Precision variants at the rule (the offsets move the decision boundary, so a variant can "
                      "agree less often than its argmax agreement above): " + "; ".join(agreement) + "."]
    return lines + ["", "Calibrated with: `{}`".format(c.get("command") or "retina-train calibrate"), ""]


def write(bundle_dir, manifest):
    path = os.path.join(bundle_dir, "MODEL_CARD.md")
    with open(path, "w") as f:
        f.write(render(manifest, find_reports(bundle_dir), read_cv(bundle_dir)))
    return path


def add_cv(bundle_dir, run_dir, log=print):
    """Put a `retina-train cv` run's figures (its cv.json) beside the bundle and rewrite the card."""
    from models.bundle import load_bundle
    bundle = load_bundle(bundle_dir)
    source = os.path.join(run_dir, "cv.json")
    if not os.path.isfile(source):
        raise ValueError("{}: no cv.json; run `retina-train cv --out {}` to its end first".format(run_dir, run_dir))
    with open(source) as f:
        cv = json.load(f)
    if not cv.get("models"):
        raise ValueError("{}: holds no model figures".format(source))
    if len(cv["models"].get("student", {}).get("per_fold", {})) != len(cv.get("folds", [])):
        log("note: {} lacks some folds' student; the card says how many folds it has".format(source))
    cv["run"] = os.path.abspath(run_dir)
    for difference in cv_recipe_differences(cv, bundle.manifest):
        log("note: the CV recipe differs from the bundle: {}".format(difference))
    target = os.path.join(bundle_dir, CV_FILE)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with open(target + ".tmp", "w") as f:
        json.dump(cv, f, indent=2)
        f.write("\n")
    os.replace(target + ".tmp", target)
    log("wrote {}".format(target))
    return write(bundle_dir, bundle.manifest)
