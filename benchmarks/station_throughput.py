"""End-to-end folder screening: our loop against a seed-style PyTorch pipeline, on the same images.

    .venv/bin/python benchmarks/station_throughput.py                    # 320 test-split images, 3 rounds
    .venv/bin/python benchmarks/station_throughput.py --split val --sweep   # try thread layouts (tune on val)

Prints images/s of each, their ratio, our loop's ratio to the bare network
and to the bound that perfect overlap of the measured per-stage CPU costs
would give on this machine. A script that prints figures, never a test.

* Seed-style: PyTorch eager fp32, PIL + torchvision transforms (Resize,
  ToTensor, Normalize), a DataLoader with one worker, batch 32, timed from the
  first image read to the last batch's labels (decoding included), as the
  published Jetson Nano figure of 2.19 images/s was taken.
* Ours: what `retina-edge run FOLDER --results X.csv --quiet` does (bundle,
  ONNX Runtime, ledger, CSV, console), timed by the run's own profiler
  from the start of the run to the last frame's outputs.
* Both run the same architecture, the shipped student (tf_efficientnet_lite0,
  4 classes; the seed side builds it in timm with random weights: weights do
  not change the cost of a dense CNN), each in its own process, in turns, so
  both see the same machine state. Model loading is excluded from both; no
  warm-up for either.
* Stage costs (each alone, one thread): read + decode + pre-process per image;
  the network per image at our loop's settings and at 1 thread (its cheapest
  CPU cost per image); outputs (ledger row + CSV row) per image. CPU time per
  image is time.process_time() over the stage, so library threads count.
  Perfect-overlap bound = CPU cores / (sum of the cheapest per-image CPU
  cost of each stage): the most images/s the cores could give if no stage
  ever waited and nothing but the work itself used CPU.

The machine is shared: every figure comes with the load average, and rounds
are repeated so the range is visible. Never tune on the split you report:
tune with --split val, report with --split test.
"""
import argparse
import csv
import json
import os
import random
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
DEFAULT_DATA = os.path.normpath(os.path.join(REPO, "..", "shared", "data", "fundus4"))
DEFAULT_BUNDLE = os.path.join(REPO, "models", "default")


def pick_images(split_csv, data, split, count, seed):
    """``count`` images of ``split`` in the bundle's split CSV, a seeded sample, in file order."""
    with open(split_csv, newline="") as f:
        rows = [r for r in csv.DictReader(f) if r["split"] == split]
    rows = sorted(random.Random(seed).sample(rows, min(count, len(rows))), key=lambda r: r["path"])
    return [os.path.join(data, r["path"]) for r in rows], rows


def link_folder(paths, folder):
    """A folder of symlinks to ``paths`` (what a technician would point the tools at)."""
    for i, path in enumerate(paths):
        os.symlink(path, os.path.join(folder, "{:04d}_{}".format(i, os.path.basename(path))))
    return folder


# --- parts, each run in its own process ------------------------------------------------------------

def part_seed(folder, batch_size=32, workers=1):
    import torch
    import timm
    from PIL import Image
    from torchvision import transforms

    files = sorted(os.path.join(folder, f) for f in os.listdir(folder))
    tf = transforms.Compose([transforms.Resize((224, 224)), transforms.ToTensor(),
                             transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])

    class Images(torch.utils.data.Dataset):
        def __len__(self):
            return len(files)

        def __getitem__(self, i):
            return tf(Image.open(files[i]).convert("RGB"))

    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, num_classes=4).eval()
    loader = torch.utils.data.DataLoader(Images(), batch_size=batch_size, num_workers=workers)
    labels = []
    cpu0, t0 = time.process_time(), time.perf_counter()
    with torch.no_grad():
        for x in loader:
            labels.extend(model(x).softmax(1).argmax(1).tolist())
    wall = time.perf_counter() - t0
    return {"images": len(labels), "wall_s": wall, "images_per_s": len(labels) / wall,
            "cpu_ms_per_image": (time.process_time() - cpu0) * 1000 / len(labels),
            "torch_threads": torch.get_num_threads()}


def _edge_args(folder, out_dir, opts):
    from edge.cli import build_parser
    argv = ["run", folder, "--quiet", "--backend", "onnxruntime", "--results", os.path.join(out_dir, "r.csv"),
            "--ledger", os.path.join(out_dir, "ledger.db"), "--threads", str(opts["threads"]),
            "--batch", str(opts["batch"]), "--workers", str(opts["workers"])]
    return build_parser().parse_args(argv)


def _spinning(opts):
    """--spin 0/1 forces ONNX Runtime's intra-op spin-wait in this process, whatever the backend sets
    (benchmark only; -1 leaves the backend's choice)."""
    if opts.get("spin", -1) < 0:
        return
    import onnxruntime as ort
    key, forced, base = "session.intra_op.allow_spinning", str(opts["spin"]), ort.SessionOptions

    class Options(base):
        def __init__(self):
            super(Options, self).__init__()
            base.add_session_config_entry(self, key, forced)

        def add_session_config_entry(self, name, value):
            if name != key:
                base.add_session_config_entry(self, name, value)
    ort.SessionOptions = Options


def part_ours(folder, opts):
    """retina-edge run's build + pipeline, timed as the run reports it."""
    _spinning(opts)
    from edge.commands.run import Session, build, pipeline_options
    from edge.pipeline import Pipeline
    out_dir = tempfile.mkdtemp(prefix="bench-ours-")
    args = _edge_args(folder, out_dir, opts)
    session = Session()
    build(args, session, log=lambda line: None)
    pipeline = Pipeline(session.bundle, session.backend, session.outputs, checks=session.checks,
                        **pipeline_options(args))
    cpu0, t0 = time.process_time(), time.perf_counter()
    stats = pipeline.run(session.source)
    wall = time.perf_counter() - t0
    cpu = time.process_time() - cpu0
    session.ledger.finish_run(session.run_id, stats.as_dict())
    session.ledger.close()
    session.close()
    summary = pipeline.profiler.summary()
    return {"images": stats.frames, "ok": stats.counts["ok"], "wall_s": wall,
            "images_per_s": pipeline.profiler.images_per_s(), "cpu_ms_per_image": cpu * 1000 / stats.frames,
            "stage_mean_ms": dict((k, v["mean_ms"]) for k, v in summary.items()), "options": opts,
            "workers": pipeline.workers, "batch": pipeline.batch}


def _timed(fn, n):
    cpu0, t0 = time.process_time(), time.perf_counter()
    fn()
    wall, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return {"images_per_s": n / wall, "wall_ms_per_image": wall * 1000 / n, "cpu_ms_per_image": cpu * 1000 / n}


def part_stages(folder, opts):
    """Each stage alone on one thread: decode + pre-process, the network, the outputs."""
    import numpy as np
    from edge.backends import create_backend
    from edge.io.decode import decode_image
    from edge.io.outputs import LedgerOutput, open_output
    from edge.ledger import Ledger
    from edge.records import Frame, Result
    from models.bundle import load_bundle

    bundle = load_bundle(DEFAULT_BUNDLE)
    files = sorted(os.path.join(folder, f) for f in os.listdir(folder))
    n = len(files)
    pre = create_backend("onnxruntime", bundle, threads=1).make_preprocessor()
    prepared = []

    def decode_prepare():
        for path in files:
            with open(path, "rb") as f:
                prepared.append(pre.prepare(decode_image(f.read(), path)))
    out = {"decode+pre-process": _timed(decode_prepare, n)}

    _spinning(opts)

    def network(threads, batch):
        backend = create_backend("onnxruntime", bundle, threads=threads, batch=batch)
        backend.infer(np.concatenate(prepared[:batch]))  # first call allocates; not the steady cost
        return _timed(lambda: [backend.infer(pre.collate(prepared[i:i + batch])) for i in range(0, n, batch)], n)
    out["network (loop's settings)"] = network(opts["threads"], opts["batch"])
    out["network (1 thread, batch 1)"] = network(1, 1)

    tmp = tempfile.mkdtemp(prefix="bench-stages-")
    ledger = Ledger(os.path.join(tmp, "l.db"))
    run_id = ledger.start_run(folder, bundle, "bench")
    outputs = [LedgerOutput(ledger, run_id), open_output(os.path.join(tmp, "r.csv"), bundle.labels)]
    probs = dict((lab, 0.25) for lab in bundle.labels)

    def write_all():
        for path in files:
            frame, result = Frame(path, meta={"path": path}), Result(path, "ok", bundle.labels[0], 0.25, probs, "", 9.0)
            for output in outputs:
                output.write(frame, result)
    out["outputs (ledger + CSV)"] = _timed(write_all, n)
    ledger.close()
    return out


PARTS = {"seed": lambda a, o: part_seed(a.folder), "ours": lambda a, o: part_ours(a.folder, o),
         "stages": lambda a, o: part_stages(a.folder, o)}


def run_part(name, folder, opts):
    """Run one part in a fresh process (no torch in our loop's process, no threads left over)."""
    cmd = [sys.executable, os.path.abspath(__file__), "--part", name, "--folder", folder,
           "--threads", str(opts["threads"]), "--batch", str(opts["batch"]), "--workers", str(opts["workers"]),
           "--spin", str(opts.get("spin", -1))]
    load = os.getloadavg()[0]
    out = subprocess.check_output(cmd, cwd=REPO)
    result = json.loads(out.decode("utf-8").strip().splitlines()[-1])
    result["load_before"] = load
    return result


# --- the report -----------------------------------------------------------------------------------

def _range(values, spec="{:.1f}"):
    lo, hi = min(values), max(values)
    return spec.format(lo) if abs(hi - lo) < 1e-9 else (spec + "-" + spec).format(lo, hi)


def report(stages, rounds, cores, opts):
    seed = [r["seed"]["images_per_s"] for r in rounds]
    ours = [r["ours"]["images_per_s"] for r in rounds]
    ratio = [r["ours"]["images_per_s"] / r["seed"]["images_per_s"] for r in rounds]
    net = stages["network (loop's settings)"]["images_per_s"]
    costs = {"decode+pre-process": stages["decode+pre-process"]["cpu_ms_per_image"],
             "network": min(stages["network (loop's settings)"]["cpu_ms_per_image"],
                            stages["network (1 thread, batch 1)"]["cpu_ms_per_image"]),
             "outputs": stages["outputs (ledger + CSV)"]["cpu_ms_per_image"]}
    bound = cores * 1000.0 / sum(costs.values())
    print("\nstage alone (one thread unless said)   images/s   wall ms/img   CPU ms/img")
    for name, s in stages.items():
        if not isinstance(s, dict):
            continue
        print("  {:<36} {:>8.1f}   {:>11.2f}   {:>10.2f}".format(name, s["images_per_s"], s["wall_ms_per_image"],
                                                                s["cpu_ms_per_image"]))
    print("\nperfect-overlap bound = {} cores / ({}) ms = {:.1f} images/s".format(
        cores, " + ".join("{:.2f} {}".format(v, k) for k, v in costs.items()), bound))
    print("\nround  load   seed-style img/s  (CPU ms/img)   ours img/s  (CPU ms/img)   ours/seed")
    for i, r in enumerate(rounds):
        print("  {:<4} {:>5.2f}   {:>15.1f}  ({:>6.1f})      {:>9.1f}  ({:>6.1f})     {:>6.2f}x".format(
            i + 1, r["seed"]["load_before"], r["seed"]["images_per_s"], r["seed"]["cpu_ms_per_image"],
            r["ours"]["images_per_s"], r["ours"]["cpu_ms_per_image"], ratio[i]))
    print("\nseed-style (PyTorch eager fp32, PIL + torchvision, DataLoader 1 worker, batch 32): {} images/s".format(
        _range(seed)))
    print("ours (retina-edge run: {} decode worker(s), ONNX Runtime {} thread(s), batch up to {}): {} images/s".format(
        rounds[0]["ours"]["workers"], opts["threads"] or "default", rounds[0]["ours"]["batch"], _range(ours)))
    print("ours / seed-style:          {}x (target >= 3x)".format(_range(ratio, "{:.2f}")))
    print("ours / bare network:        {}x (bare network {:.1f} images/s)".format(
        _range([o / net for o in ours], "{:.2f}"), net))
    print("ours / perfect-overlap bound: {}x (bound {:.1f} images/s)".format(
        _range([o / bound for o in ours], "{:.2f}"), bound))
    stage_ms = rounds[-1]["ours"]["stage_mean_ms"]
    print("ours, last round, mean ms per image by stage: " + ", ".join(
        "{} {:.2f}".format(k, v) for k, v in stage_ms.items()))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=DEFAULT_DATA, help="fundus4 root (default %(default)s)")
    p.add_argument("--split-csv", default=os.path.join(DEFAULT_BUNDLE, "split.csv"),
                   help="the split the shipped bundle was trained with (default %(default)s)")
    p.add_argument("--split", default="test", choices=("train", "val", "test"),
                   help="which split's images (default %(default)s: unseen by the model; tune on val)")
    p.add_argument("--count", type=int, default=320, help="images (default %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="sample seed (default %(default)s)")
    p.add_argument("--rounds", type=int, default=3, help="seed-style and ours, in turns (default %(default)s)")
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime intra-op threads (default %(default)s: "
                                                           "retina-edge run's default)")
    p.add_argument("--workers", type=int, default=-1, help="decode workers (default %(default)s: run's default)")
    p.add_argument("--batch", type=int, default=1, help="network batch, up to (default %(default)s)")
    p.add_argument("--spin", type=int, default=-1, choices=(-1, 0, 1),
                   help="ONNX Runtime intra-op spin-wait: 1 on, 0 off, -1 as the backend sets it (default %(default)s)")
    p.add_argument("--sweep", nargs="?", const="full", choices=("full", "small"),
                   help="time our loop for several thread layouts (full, or small: the main contenders), then stop")
    p.add_argument("--part", choices=sorted(PARTS), help=argparse.SUPPRESS)
    p.add_argument("--folder", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.workers < 0:
        from edge.commands.run import default_workers
        args.workers = default_workers()
    opts = {"threads": args.threads, "batch": args.batch, "workers": args.workers, "spin": args.spin}
    if args.part:
        print(json.dumps(PARTS[args.part](args, opts)))
        return 0
    paths, rows = pick_images(args.split_csv, args.data, args.split, args.count, args.seed)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    folder = link_folder(paths, tempfile.mkdtemp(prefix="bench-images-"))
    print("{} {} images of {} ({}), {} CPU cores, load average {:.2f} {:.2f} {:.2f}".format(
        len(paths), args.split, args.data, ", ".join("{} {}".format(sum(r["label"] == lab for r in rows), lab)
                                                      for lab in sorted(set(r["label"] for r in rows))),
        cores, *os.getloadavg()))
    if args.sweep:
        return sweep(folder, args)
    stages = run_part("stages", folder, opts)
    rounds = []
    for i in range(args.rounds):
        rounds.append({"seed": run_part("seed", folder, opts), "ours": run_part("ours", folder, opts)})
        print("round {}: seed-style {:.1f} images/s, ours {:.1f} images/s".format(
            i + 1, rounds[-1]["seed"]["images_per_s"], rounds[-1]["ours"]["images_per_s"]), flush=True)
    report(stages, rounds, cores, opts)
    return 0


def sweep(folder, args):
    """Our loop for several (ONNX Runtime threads, decode workers, batch) layouts, in turns, `--rounds` times."""
    layouts = SWEEP_SMALL if args.sweep == "small" else SWEEP_FULL
    figures = dict((layout, []) for layout in layouts)
    for _ in range(args.rounds):
        for t, spin, w, b in layouts:
            r = run_part("ours", folder, {"threads": t, "spin": spin, "workers": w, "batch": b})
            figures[(t, spin, w, b)].append((r["images_per_s"], r["cpu_ms_per_image"], r["load_before"]))
    print("\nORT threads  spin  workers  batch   best  median   images/s per round (CPU ms/img, load before)")
    for (t, spin, w, b), values in figures.items():
        rates = sorted(v[0] for v in values)
        print("  {:>9}  {:>4}  {:>7}  {:>5}  {:>5.1f}  {:>6.1f}   {}".format(
            t or "0", {-1: "-", 0: "off", 1: "on"}[spin], w, b, rates[-1], rates[len(rates) // 2],
            "  ".join("{:.1f} ({:.1f}, {:.1f})".format(*v) for v in values)))
    return 0


# (ORT threads, spin-wait -1 default / 0 off / 1 on, decode workers, batch)
SWEEP_FULL = [(1, -1, 1, 1), (2, -1, 0, 1)] + [(2, spin, w, b) for spin in (1, 0) for w in (1, 2) for b in (1, 4)]
SWEEP_SMALL = [(0, -1, 1, 1), (0, -1, 1, 2), (0, -1, 1, 4), (0, -1, 2, 1), (1, -1, 1, 1), (0, 1, 1, 1)]


if __name__ == "__main__":
    sys.exit(main())
