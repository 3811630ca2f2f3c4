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
    fold<k>/pretrain/       with --pretrain: the teacher's self-supervised start (fold's train images only)
    predictions.csv         path,label,group,fold,model,p_<class>...  (every fold and model)
    cv.json                 per fold and mean +- sd: accuracy, balanced accuracy, glaucoma recall, ECE,
                            per source kind; the KD gain; the source-only classifier

Resumable: a model whose fold<k>/<model>/predictions.csv exists is not trained again, and one stopped
part-way goes on from its last.pt (the recipe's --resume). Each model also writes val_predictions.csv
(its fold's val images), what a per-fold decision rule is chosen on.

Parallel: ``--jobs N`` trains N folds at once, each in its own ``retina-train cv --fold K`` process (log in
fold<K>/cv.log), then gathers; on a GPU this keeps it busy where one small network cannot. ``--fold K``
alone trains that fold only (several machines can share one run folder) and gathers nothing.

The recipe: ``--teacher-options`` / ``--student-options`` are the teacher's and distil's own options
(e.g. ``--teacher-options="--epochs 30 --augment strong"``), checked by their parsers; the labels-only
student takes the student's options that plain training has (not --alpha, --temperature, --kd-config).
"""
import csv
import hashlib
import json
import os
import shlex
import subprocess
import sys
import time


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


def _verb_options(verb):
    """{option string: takes a value} of a retina-train verb."""
    from training import config
    from training.cli import build_parser
    parser = config._verb_parser(build_parser(), verb)
    return {o: a.nargs != 0 for a in parser._actions for o in a.option_strings}


def options_for(text, verb, log=print, what="--student-options"):
    """The tokens of ``text`` that ``verb`` has (the rest dropped, and said); the values stay with their option."""
    tokens = shlex.split(text or "")
    mine = _verb_options(verb)
    kept, dropped, i = [], [], 0
    while i < len(tokens):
        name = tokens[i].split("=", 1)[0]
        takes = "=" not in tokens[i] and _verb_options("distil").get(name, mine.get(name, False))
        chunk = tokens[i:i + (2 if takes else 1)]
        (kept if name in mine else dropped).append(chunk)
        i += len(chunk)
    if dropped:
        log("{} for {}: left out {} (plain training has no such option)".format(
            what, verb, " ".join(" ".join(c) for c in dropped)))
    return [t for c in kept for t in c]


CONTROLLED = ("--data", "--out", "--model", "--teacher", "--cache-dir", "--seed", "--init", "--resume")


def check_options(args):
    """Parse --teacher-options / --student-options now, with their verbs' parsers, before any training."""
    from training.cli import build_parser
    if args.pretrain_options and not args.pretrain:
        raise ValueError("--pretrain-options without --pretrain: add --pretrain to pretrain each fold's teacher")
    for text, verb, what in ((args.teacher_options, "teacher", "--teacher-options"),
                             (args.student_options, "distil", "--student-options"),
                             (args.pretrain_options, "pretrain", "--pretrain-options")):
        tokens = shlex.split(text or "")
        clash = sorted({t.split("=", 1)[0] for t in tokens} & set(CONTROLLED))
        if clash:
            raise ValueError("{} may not set {}: cv sets them for every fold".format(what, ", ".join(clash)))
        try:
            fixed = {"distil": ["--teacher", "-"], "pretrain": ["--model", args.teacher_model]}.get(verb, [])
            build_parser().parse_args([verb, "--data", "-", "--out", "-"] + fixed + tokens)
            if verb == "pretrain" and args.pretrain:
                from training import pretrain
                pretrain.check_model(args.teacher_model)
        except SystemExit:
            raise ValueError("{} {!r}: not options of retina-train {} (its error is above)".format(
                what, text, verb))


def recipe_args(args, verb, model, split_csv, run_dir, teacher_dir=None, schedule_of=None, options=(), init=None):
    """The recipe's arguments for one training run, parsed by retina-train's own parser (its defaults).

    ``schedule_of``: take the epochs and learning rate of that verb's defaults (the labels-only student
    trains with the distil schedule, so the two students differ only in the teacher). ``options``: the
    verb's own options (from --teacher-options / --student-options), last, so they win.
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
    if init:
        argv += ["--init", init]
    return build_parser().parse_args(argv + list(options))


def pretrain_args(args, split_csv, run_dir, options=()):
    """`retina-train pretrain` on the fold's split: it reads the train side only (no val or test image)."""
    from training.cli import build_parser
    argv = ["pretrain", "--data", split_csv, "--model", args.teacher_model, "--out", run_dir,
            "--image-size", str(args.image_size), "--seed", str(args.seed), "--cache-dir", args.cache_dir]
    if args.max_steps is not None:
        argv += ["--max-steps", str(args.max_steps)]
    return build_parser().parse_args(argv + list(options))


def plan(args):
    """(model name, recipe verb, timm model, teacher run name or None) in training order."""
    steps = [("teacher", "teacher", args.teacher_model, None)]
    if args.pretrain:  # self-supervised, on the fold's training images only; the teacher starts from it
        steps.insert(0, ("pretrain", "pretrain", args.teacher_model, None))
    if not args.teacher_only:
        steps.append(("student", "distil", args.student_model, "teacher"))
        if args.labels_only:  # the teacher verb is the recipe's cross-entropy training of any network
            steps.append(("labels_only", "teacher", args.student_model, None))
    return steps


def model_names(args):
    """The fold models that predict (pretraining makes an encoder, not a classifier)."""
    return [name for name, verb, _, _ in plan(args) if verb != "pretrain"]


def step_options(args, name, log=print):
    if name == "pretrain":
        return shlex.split(args.pretrain_options or "")
    if name == "teacher":
        return shlex.split(args.teacher_options or "")
    if name == "student":
        return shlex.split(args.student_options or "")
    return options_for(args.student_options, "teacher", log)


def train_fold(args, folded, fold, log=print):
    from training import cvresults
    fold_dir = os.path.join(args.out, "fold{}".format(fold))
    split_csv = os.path.join(fold_dir, "split.csv")
    samples = fold_split(folded, fold, args.val, seed=args.seed)
    datalib.write_manifest(samples, split_csv)
    for name, verb, model, teacher in plan(args):
        run_dir = os.path.join(fold_dir, name)
        if verb == "pretrain":
            pretrain_fold(args, fold, split_csv, run_dir, log)
            continue
        done = os.path.join(run_dir, "predictions.csv")
        if os.path.isfile(done):
            log("fold {} {}: done ({} exists), skipped".format(fold, name, done))
            continue
        if not os.path.isfile(os.path.join(run_dir, "checkpoint.pt")):
            log("fold {} {}: training {} on {}".format(fold, name, model, split_csv))
            from training import recipe
            teacher_dir = os.path.join(fold_dir, teacher) if teacher else None
            schedule_of = "distil" if name == "labels_only" else None
            options = step_options(args, name, log)
            if os.path.isfile(os.path.join(run_dir, "last.pt")):  # an interrupted run: go on from its last epoch
                log("fold {} {}: resuming from {}".format(fold, name, os.path.join(run_dir, "last.pt")))
                options = options + ["--resume"]
            init = os.path.join(fold_dir, "pretrain") if args.pretrain and name == "teacher" else None
            recipe.train(recipe_args(args, verb, model, split_csv, run_dir, teacher_dir, schedule_of, options,
                                     init), teacher_dir, log=log)
        cvresults.write_fold_predictions(run_dir, samples, fold, name, args.cache_dir, done, log=log)


def pretrain_fold(args, fold, split_csv, run_dir, log=print):
    from training import pretrain
    if os.path.isfile(os.path.join(run_dir, "encoder.pt")):
        log("fold {} pretrain: done ({} exists), skipped".format(fold, os.path.join(run_dir, "encoder.pt")))
        return
    options = step_options(args, "pretrain", log)
    if os.path.isfile(os.path.join(run_dir, "last.pt")):
        log("fold {} pretrain: resuming from {}".format(fold, os.path.join(run_dir, "last.pt")))
        options = options + ["--resume"]
    log("fold {} pretrain: {} on the train side of {}".format(fold, args.teacher_model, split_csv))
    pretrain.main(pretrain_args(args, split_csv, run_dir, options), log=log)


def folds_digest(out):
    with open(os.path.join(out, "folds.csv"), "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def checked_before(out):
    """Whether the leakage checks passed on this run's folds.csv as it is now (leakage.ok holds its sha256)."""
    path = os.path.join(out, "leakage.ok")
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        return f.read().strip() == folds_digest(out)


# cv's own options a fold process is given (the run folder's folds.csv supplies the folds themselves)
FOLD_PROCESS_OPTIONS = ("data", "out", "folds", "val", "teacher_model", "student_model", "labels_only", "weights",
                        "image_size", "epochs", "batch_size", "max_steps", "seed", "cache_dir", "teacher_options",
                        "student_options", "pretrain", "pretrain_options", "teacher_only")


def fold_command(args, fold):
    argv = [sys.executable, "-m", "training", "cv"]
    for dest in FOLD_PROCESS_OPTIONS:
        value = getattr(args, dest)
        flag = "--" + dest.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif value is not None and value is not False:
            argv.append("{}={}".format(flag, value))  # '=': an options string may start with '--'
    return argv + ["--fold", str(fold)]


def run_parallel(args, folds, log=print):
    """Each fold in its own `cv --fold K` process, ``args.jobs`` at a time; output to fold<K>/cv.log."""
    waiting, running, failed = list(folds), {}, []
    while waiting or running:
        while waiting and len(running) < args.jobs:
            fold = waiting.pop(0)
            fold_dir = os.path.join(args.out, "fold{}".format(fold))
            os.makedirs(fold_dir, exist_ok=True)
            log_path = os.path.join(fold_dir, "cv.log")
            with open(log_path, "a") as out:
                running[fold] = (subprocess.Popen(fold_command(args, fold), stdout=out, stderr=subprocess.STDOUT),
                                 log_path)
            log("fold {}: started (process {}, log {})".format(fold, running[fold][0].pid, log_path))
        time.sleep(1.0)
        for fold, (proc, log_path) in list(running.items()):
            if proc.poll() is not None:
                del running[fold]
                if proc.returncode:
                    failed.append(fold)
                    log("fold {}: FAILED (exit {}); see {}".format(fold, proc.returncode, log_path))
                else:
                    log("fold {}: done".format(fold))
    if failed:
        raise RuntimeError("fold(s) {} failed; their logs say why; rerun the same command to resume".format(
            ", ".join(str(f) for f in sorted(failed))))


def main(args, log=print):
    from training import cvresults, shortcut
    os.makedirs(args.out, exist_ok=True)
    check_options(args)
    folded = make_folds(args, log)
    folds = sorted({int(s.split) for s in folded})
    if args.fold is not None:
        if args.fold not in folds:
            raise ValueError("--fold {}: the run has folds {}".format(args.fold, folds))
        if not checked_before(args.out):
            check_folds(folded, args.out, log)
        train_fold(args, folded, args.fold, log)
        log("fold {} done; run the command without --fold to gather every fold's figures".format(args.fold))
        return None
    check_folds(folded, args.out, log)
    with open(os.path.join(args.out, "leakage.ok"), "w") as f:
        f.write(folds_digest(args.out) + "\n")
    source_only = shortcut.cross_validate(folded, [int(s.split) for s in folded])
    log(shortcut.format_result(source_only))
    if args.jobs > 1:
        run_parallel(args, folds, log)
    for fold in folds:
        train_fold(args, folded, fold, log)
    names = model_names(args)
    rows = cvresults.gather(args.out, folds, names)
    summary = cvresults.summarize(rows, source_only, cvresults.gather_val(args.out, folds, names))
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
    p.add_argument("--teacher-options", default=None, metavar="OPTIONS",
                   help="the teacher verb's own options for every fold, one string; write it with '=' when it "
                        "starts with '--': --teacher-options='--epochs 30 --augment strong' (default none)")
    p.add_argument("--student-options", default=None, metavar="OPTIONS",
                   help="distil's own options for every fold's student; the labels-only student takes those "
                        "plain training has (default none)")
    p.add_argument("--pretrain", action="store_true",
                   help="before each fold's teacher, self-supervised pretraining of --teacher-model on that fold's "
                        "train images only (FCMAE for ConvNeXtV2, MAE for a ViT); the teacher starts from it "
                        "(--init)")
    p.add_argument("--pretrain-options", default=None, metavar="OPTIONS",
                   help="pretrain's own options for every fold: --pretrain-options='--epochs 100' (default none)")
    p.add_argument("--teacher-only", action="store_true",
                   help="train (pretrain and) teachers only, no students: a teacher comparison on the folds")
    p.add_argument("--jobs", type=int, default=1,
                   help="folds trained at once, each in its own process (default %(default)s); for a GPU, "
                        "where one small network leaves it idle")
    p.add_argument("--fold", type=int, default=None,
                   help="train this fold only and gather nothing (default: every fold)")
