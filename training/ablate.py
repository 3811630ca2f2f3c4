"""retina-train ablate: distillation variants trained on the same folds, one table of what each is worth.

Each variant is a ``training.kd`` config (``labels``, ``logits``, ``logits+pca``, ``logits+gl``,
``logits+adv``, ``logits+mv``, ``logits+fmap``, any ``+`` combination, or a JSON/YAML file) trained by
the recipe's distil step with the same student, schedule, seed and split; only the loss differs.

Folds never leak into the teacher: with ``--folds K`` the teacher is a ``retina-train cv`` run folder
and each fold's variants distil from that fold's teacher on that fold's own split.csv (the teacher never
saw the fold's test groups); with ``--split`` the teacher is one run and the data a split CSV whose test
images that teacher did not train on (checked).

The run folder: fold<k>/<variant>/ (the recipe's run + predictions.csv), predictions.csv,
ablation.json / ablation.csv / ablation.md (mean +- sd over folds). Resumable like cv.
"""
import csv
import json
import os

from training import cv, cvresults
from training import data as datalib

DEFAULT_VARIANTS = "labels,logits,logits+pca,logits+gl,logits+adv,logits+mv"
COLUMNS = (("accuracy", "accuracy"), ("balanced_accuracy", "balanced accuracy"),
           ("glaucoma_recall", "glaucoma recall"), ("ece", "ECE"))


def parse_variants(text):
    """[(name, resolved config)]; a file variant is named by its file name without the extension."""
    from training.kd import config as kdconfig
    out = []
    for item in [v.strip() for v in text.split(",") if v.strip()]:
        name = os.path.splitext(os.path.basename(item))[0] if os.path.isfile(item) else item
        out.append((name, kdconfig.load(item)))
    if len({n for n, _ in out}) != len(out):
        raise ValueError("--variants names a variant twice: {}".format(text))
    return out


def fold_plan(args, log=print):
    """[(fold, split_csv, teacher_dir)]: the teacher of each fold and the split it was trained on."""
    if args.folds:
        folds_csv = os.path.join(args.teacher, "folds.csv")
        if not os.path.isfile(folds_csv):
            raise ValueError("{}: --folds needs a `retina-train cv` run folder as --teacher (one teacher per fold, "
                             "none of which saw its fold's test groups); a single teacher run goes with "
                             "--split".format(args.teacher))
        folded = cv.read_folds(folds_csv)
        folds = sorted({int(s.split) for s in folded})
        if len(folds) != args.folds:
            raise ValueError("{}: {} folds, --folds {}".format(folds_csv, len(folds), args.folds))
        given = {os.path.abspath(s.path) for s in datalib.load_samples(args.data)}
        if given != {os.path.abspath(s.path) for s in folded}:
            raise ValueError("{}: its folds cover other images than --data {}".format(folds_csv, args.data))
        return [(f, os.path.join(args.teacher, "fold{}".format(f), "split.csv"),
                 os.path.join(args.teacher, "fold{}".format(f), "teacher")) for f in folds]
    from training import runs
    samples = datalib.load_samples(args.data)
    if not all(s.split for s in samples):
        raise ValueError("{}: --split needs a split CSV (path,label,group,split)".format(args.data))
    seen = {os.path.abspath(s.path) for s in runs.run_split(args.teacher) if s.split == "train"}
    leaked = [s.path for s in samples if s.split == "test" and os.path.abspath(s.path) in seen]
    if leaked:
        raise ValueError("the teacher {} trained on {} of the test images of {}, e.g. {}".format(
            args.teacher, len(leaked), args.data, leaked[0]))
    return [(0, args.data, args.teacher)]


def train_variants(args, variants, fold, split_csv, teacher_dir, log=print):
    from training import recipe
    samples = datalib.read_manifest(split_csv)
    for name, config in variants:
        run_dir = os.path.join(args.out, "fold{}".format(fold), name)
        done = os.path.join(run_dir, "predictions.csv")
        if os.path.isfile(done):
            log("fold {} {}: done ({} exists), skipped".format(fold, name, done))
            continue
        if not os.path.isfile(os.path.join(run_dir, "checkpoint.pt")):
            log("fold {} {}: distilling {} from {}".format(fold, name, args.student_model, teacher_dir))
            run_args = cv.recipe_args(args, "distil", args.student_model, split_csv, run_dir, teacher_dir)
            run_args.kd_config = config
            recipe.train(run_args, teacher_dir, log=log)
        cvresults.write_fold_predictions(run_dir, samples, fold, name, args.cache_dir, done, log=log)


def table_rows(summary, names):
    rows = []
    for name in names:
        m = summary["models"].get(name)
        if m is None:
            continue
        rows.append([name] + [cvresults._pm(m[key]) for key, _ in COLUMNS])
    return rows


def write_tables(summary, names, out_dir):
    header = ["variant"] + ["{} (%)".format(title) for _, title in COLUMNS]
    rows = table_rows(summary, names)
    with open(os.path.join(out_dir, "ablation.csv"), "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["variant"] + ["{}_{}".format(key, s) for key, _ in COLUMNS for s in ("mean", "sd")])
        for name in names:
            m = summary["models"].get(name)
            if m is not None:
                writer.writerow([name] + ["" if m[k][s] is None else "{:.6f}".format(m[k][s])
                                          for k, _ in COLUMNS for s in ("mean", "sd")])
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    with open(os.path.join(out_dir, "ablation.md"), "w") as f:
        f.write("Distillation ablation, {} fold(s), mean +- sd over folds (sd n-1; 0 with one split).\n\n".format(
            len(summary["folds"])) + "\n".join(lines) + "\n")
    with open(os.path.join(out_dir, "ablation.json"), "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    widths = [max(len(header[0]), *(len(r[0]) for r in rows))] + [18] * len(COLUMNS)
    text = ["  ".join(h.rjust(w) if i else h.ljust(w) for i, (h, w) in enumerate(zip(header, widths)))]
    text += ["  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows]
    return "\n".join(text)


def main(args, log=print):
    if bool(args.folds) == bool(args.split):
        raise ValueError("give one of --folds K (with a cv run as --teacher) or --split")
    variants = parse_variants(args.variants)
    os.makedirs(args.out, exist_ok=True)
    plan = fold_plan(args, log)
    for fold, split_csv, teacher_dir in plan:
        train_variants(args, variants, fold, split_csv, teacher_dir, log)
    names = [n for n, _ in variants]
    summary = cvresults.summarize(cvresults.gather(args.out, [f for f, _, _ in plan], names))
    summary["variants"] = {n: c for n, c in variants}
    summary["command_settings"] = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    log(write_tables(summary, names, args.out))
    log("wrote {}".format(", ".join(os.path.join(args.out, n) for n in ("ablation.md", "ablation.csv",
                                                                         "ablation.json"))))
    return summary


def add_arguments(p):
    p.add_argument("--data", required=True, help="class-folder root or CSV (--folds), or a split CSV (--split) "
                                                 "(required)")
    p.add_argument("--teacher", required=True, help="a `retina-train cv` run folder (--folds) or a teacher run "
                                                    "folder (--split) (required)")
    p.add_argument("--out", required=True, help="ablation folder (required; an existing one is resumed)")
    p.add_argument("--variants", default=DEFAULT_VARIANTS,
                   help="comma-separated kd configs: labels, logits, logits+pca, logits+gl, logits+adv, logits+mv, "
                        "logits+fmap, any + combination, or JSON/YAML files (default %(default)s)")
    p.add_argument("--folds", type=int, default=None, help="number of folds of the cv run given as --teacher (default: none, give it or --split)")
    p.add_argument("--split", action="store_true", help="one split: --data's train/val/test (sd reads 0)")
    p.add_argument("--student-model", default="tf_efficientnet_lite0", help="timm student (default %(default)s)")
    p.add_argument("--weights", default="imagenet", help="student starting weights (default %(default)s)")
    p.add_argument("--image-size", type=int, default=224, help="student input side in pixels (default %(default)s)")
    p.add_argument("--epochs", type=int, default=None, help="epochs (default %(default)s: the distil default)")
    p.add_argument("--batch-size", type=int, default=32, help="images per optimiser step (default %(default)s)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop each training after this many steps, for smoke runs (default %(default)s: no limit)")
    p.add_argument("--seed", type=int, default=0, help="seed of training (default %(default)s)")
    p.add_argument("--cache-dir", default=".cache/prepared",
                   help="where prepared images are cached, '' for none (default %(default)s)")
