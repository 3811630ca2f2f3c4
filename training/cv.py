"""retina-train cv: k-fold cross-validation that cannot leak, with mean +- sd figures over folds.

Folds are patient/source-grouped and class-stratified (training.splits.grouped_split with k equal
fractions). The leakage checks (training.leakage) run on the folds before anything is trained and refuse
a group in two folds or an exact duplicate in two folds. For each fold, the teacher, the distilled
student and (with --labels-only) the same student on labels alone are trained by training.recipe.train
on that fold's training groups only; a val part is taken out of those groups (whole groups) for the
recipe's per-epoch checks; the fold's test groups are seen by none of them until prediction.

The run folder:

    folds.csv               path,label,group,fold
    leakage.txt             the leakage report of the folds
    fold<k>/split.csv       that fold's train/val/test split (the recipe's input)
    fold<k>/<model>/        the recipe's run folder, plus predictions.csv (its test groups)
    predictions.csv         path,label,group,fold,model,p_<class>...  (every fold and model)
    cv.json                 per fold and mean +- sd: accuracy, balanced accuracy, glaucoma recall, ECE,
                            per source kind; the KD gain; the source-only classifier

Resumable: a model whose fold<k>/<model>/predictions.csv exists is not trained again.
"""
import csv
import json
import os


from training import data as datalib
from training import leakage, splits

MODELS = ("teacher", "student", "labels_only")
PATHS_NOTE = "paths are relative to the folder of the CSV that holds them"


def assign_folds(samples, k, seed=0):
    """Samples with ``split`` = the fold index as a string, whole groups, class-stratified."""
    if k < 2:
        raise ValueError("--folds must be at least 2, got {}".format(k))
    fractions = {str(i): 1.0 / k for i in range(k)}
    fractions[str(k - 1)] = 1.0 - sum(fractions[str(i)] for i in range(k - 1))  # sums to 1 exactly
    return splits.grouped_split(samples, fractions, seed=seed)


def write_folds(samples, path):
    """folds.csv: path,label,group,fold (the fold index is the sample's ``split``)."""
    datalib.write_manifest(samples, path, side_column="fold")


def read_folds(path):
    """Samples of a folds CSV with ``split`` = the fold index as a string."""
    base = os.path.dirname(os.path.abspath(path))
    samples = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        missing = {"path", "label", "group", "fold"} - set(reader.fieldnames or [])
        if missing:
            raise ValueError("{}: missing column(s) {}".format(path, sorted(missing)))
        for row in reader:
            p = os.path.normpath(os.path.join(base, row["path"]))  # an absolute path stays as it is
            samples.append(datalib.Sample(p, row["label"], row["group"], row["fold"]))
    if not samples:
        raise ValueError("{}: no rows".format(path))
    return samples


def fold_split(folded, fold, val_fraction, seed=0):
    """The recipe's split for one fold: its groups are test; val is whole groups out of the rest.

    Keeps the order of ``folded`` so every fold prepares (and caches) the same image array.
    """
    rest = [s for s in folded if s.split != str(fold)]
    chosen = splits.grouped_split(rest, {"train": 1.0 - val_fraction, "val": val_fraction}, seed=seed)
    side = {s.path: s.split for s in chosen}
    out = [s._replace(split=side.get(s.path, "test")) for s in folded]
    splits.check_no_leak(out)
    return out


def check_folds(folded, out_dir, log=print):
    """Run the leakage checks on the folds, write leakage.txt, refuse exact duplicates across folds."""
    report = leakage.check(folded, log=log)
    root = os.path.commonpath([os.path.dirname(os.path.dirname(s.path)) for s in folded])
    text = leakage.format_report(report, root=root)
    with open(os.path.join(out_dir, "leakage.txt"), "w") as f:
        f.write(text + "\n")
    log(text)
    leakage.require_clean(report)
    return report


def make_folds(args, log=print):
    """folds.csv: read where it exists (resume), else made from --data and written."""
    path = os.path.join(args.out, "folds.csv")
    if os.path.isfile(path):
        folded = read_folds(path)
        log("resuming with {} ({} folds)".format(path, len(set(s.split for s in folded))))
        return folded
    samples = datalib.load_samples(args.data)
    folded = assign_folds(samples, args.folds, seed=args.seed)
    write_folds(folded, path)
    for name, counts in sorted(splits.summarize(folded).items(), key=lambda kv: int(kv[0])):
        log("fold {} {:5d} images  {}".format(name, sum(counts.values()), dict(sorted(counts.items()))))
    return folded


def recipe_args(args, verb, model, split_csv, run_dir, teacher_dir=None, schedule_of=None):
    """The recipe's arguments for one training run, parsed by retina-train's own parser (its defaults).

    ``schedule_of``: take the epochs and learning rate of that verb's defaults (the labels-only student
    trains with the distil schedule, so the two students differ only in the teacher).
    """
    from training.cli import build_parser
    argv = [verb, "--data", split_csv, "--model", model, "--out", run_dir, "--weights", args.weights,
            "--image-size", str(args.image_size), "--batch-size", str(args.batch_size),
            "--seed", str(args.seed), "--cache-dir", args.cache_dir]
    if schedule_of:
        like = build_parser().parse_args([schedule_of, "--data", split_csv, "--out", run_dir, "--teacher", "-"])
        argv += ["--epochs", str(like.epochs), "--lr", str(like.lr)]
    if args.epochs is not None:
        argv += ["--epochs", str(args.epochs)]
    if args.max_steps is not None:
        argv += ["--max-steps", str(args.max_steps)]
    if teacher_dir:
        argv += ["--teacher", teacher_dir]
    return build_parser().parse_args(argv)


def plan(args):
    """(model name, recipe verb, timm model, teacher run name or None) in training order."""
    steps = [("teacher", "teacher", args.teacher_model, None),
             ("student", "distil", args.student_model, "teacher")]
    if args.labels_only:  # the teacher verb is the recipe's cross-entropy training of any network
        steps.append(("labels_only", "teacher", args.student_model, None))
    return steps


def train_fold(args, folded, fold, log=print):
    from training import cvresults
    fold_dir = os.path.join(args.out, "fold{}".format(fold))
    split_csv = os.path.join(fold_dir, "split.csv")
    samples = fold_split(folded, fold, args.val, seed=args.seed)
    datalib.write_manifest(samples, split_csv)
    for name, verb, model, teacher in plan(args):
        run_dir = os.path.join(fold_dir, name)
        done = os.path.join(run_dir, "predictions.csv")
        if os.path.isfile(done):
            log("fold {} {}: done ({} exists), skipped".format(fold, name, done))
            continue
        if not os.path.isfile(os.path.join(run_dir, "checkpoint.pt")):
            log("fold {} {}: training {} on {}".format(fold, name, model, split_csv))
            from training import recipe
            teacher_dir = os.path.join(fold_dir, teacher) if teacher else None
            schedule_of = "distil" if name == "labels_only" else None
            recipe.train(recipe_args(args, verb, model, split_csv, run_dir, teacher_dir, schedule_of),
                         teacher_dir, log=log)
        cvresults.write_fold_predictions(run_dir, samples, fold, name, args.cache_dir, done, log=log)


def main(args, log=print):
    from training import cvresults, shortcut
    os.makedirs(args.out, exist_ok=True)
    folded = make_folds(args, log)
    check_folds(folded, args.out, log)
    folds = sorted({int(s.split) for s in folded})
    source_only = shortcut.cross_validate(folded, [int(s.split) for s in folded])
    log(shortcut.format_result(source_only))
    for fold in folds:
        train_fold(args, folded, fold, log)
    rows = cvresults.gather(args.out, folds, [name for name, _, _, _ in plan(args)])
    summary = cvresults.summarize(rows, source_only)
    summary["command_settings"] = {k: v for k, v in vars(args).items() if not k.startswith("_")}
    with open(os.path.join(args.out, "cv.json"), "w") as f:
        json.dump(summary, f, indent=2)
        f.write("\n")
    log(cvresults.format_summary(summary))
    log("wrote {}".format(os.path.join(args.out, "cv.json")))
    return summary


def add_arguments(p):
    p.add_argument("--data", required=True, help="class-folder root, or a CSV with path,label[,group] (required)")
    p.add_argument("--out", required=True, help="run folder: folds.csv, fold<k>/, predictions.csv, cv.json "
                                                "(required; an existing one is resumed)")
    p.add_argument("--folds", type=int, default=5, help="number of folds (default %(default)s)")
    p.add_argument("--val", type=float, default=0.125,
                   help="fraction of each fold's training groups held out as val (default %(default)s)")
    p.add_argument("--teacher-model", default="tf_efficientnet_lite2", help="timm teacher (default %(default)s)")
    p.add_argument("--student-model", default="tf_efficientnet_lite0", help="timm student (default %(default)s)")
    p.add_argument("--labels-only", action="store_true",
                   help="also train the student on labels alone, to measure the KD gain on the same folds")
    p.add_argument("--weights", default="imagenet", help="starting weights, as for teacher/distil "
                                                         "(default %(default)s)")
    p.add_argument("--image-size", type=int, default=224, help="square input side in pixels (default %(default)s)")
    p.add_argument("--epochs", type=int, default=None,
                   help="epochs for every model (default %(default)s: the teacher/distil defaults, 6 and 10)")
    p.add_argument("--batch-size", type=int, default=32, help="images per optimiser step (default %(default)s)")
    p.add_argument("--max-steps", type=int, default=None,
                   help="stop each training after this many steps, for smoke runs (default %(default)s: no limit)")
    p.add_argument("--seed", type=int, default=0, help="seed of the folds and of training (default %(default)s)")
    p.add_argument("--cache-dir", default=".cache/prepared",
                   help="where prepared images are cached, '' for none (default %(default)s)")
