"""edge/ and models/ import on the running interpreter (3.6 on the device) without torch, timm or training/.

The imports run in a fresh subprocess so that what other tests imported cannot hide a leak.
"""
import json
import os
import subprocess
import sys

from conftest import REPO_ROOT

SCRIPT = r"""
import json, os, sys, importlib
root = sys.argv[1]
sys.path.insert(0, root)
names = []
for package in ("edge", "models"):
    base = os.path.join(root, package)
    for dirpath, dirnames, files in os.walk(base):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith((".", "__")))
        for f in sorted(files):
            if not f.endswith(".py") or f == "__main__.py":
                continue  # __main__ runs the CLI; its import is covered by edge.cli
            rel = os.path.relpath(os.path.join(dirpath, f), root)[:-3].replace(os.sep, ".")
            names.append(rel[:-len(".__init__")] if rel.endswith(".__init__") else rel)
for name in names:
    importlib.import_module(name)
leaked = sorted(m for m in ("torch", "timm", "training", "torchvision", "onnx") if m in sys.modules)
print(json.dumps({"imported": names, "leaked": leaked}))
"""


def test_edge_and_models_import_without_torch_timm_or_training(subprocess_env):
    proc = subprocess.Popen([sys.executable, "-c", SCRIPT, REPO_ROOT], cwd=REPO_ROOT, env=subprocess_env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err.decode("utf-8", "replace")
    report = json.loads(out.decode().strip().splitlines()[-1])
    assert report["leaked"] == [], "edge/models pulled in {}".format(report["leaked"])
    imported = set(report["imported"])
    for name in ("edge", "edge.cli", "edge.cliutil", "edge.commands", "edge.commands.run", "edge.preprocess",
                 "edge.io.decode", "edge.io.uri", "edge.io.sources", "edge.io.outputs", "edge.pipeline",
                 "edge.records", "edge.home", "edge.ledger", "edge.profiling.profiler", "edge.postprocess",
                 "edge.backends", "edge.backends.ort", "models", "models.bundle"):
        assert name in imported
    # every .py file under edge/ and models/ was covered
    on_disk = 0
    for package in ("edge", "models"):
        for dirpath, _, files in os.walk(os.path.join(REPO_ROOT, package)):
            if "__pycache__" not in dirpath:
                on_disk += sum(f.endswith(".py") and f != "__main__.py" for f in files)
    assert len(imported) == on_disk


def test_edge_and_models_need_nothing_newer_than_python_3_6():
    """A static gate beside the import test: vermin finds syntax and library use newer than 3.6
    (f-strings would import on 3.6; dataclasses, walrus, importlib.metadata... would not)."""
    pytest = __import__("pytest")
    try:
        import vermin  # noqa: F401  (installed with the test extra on the workstation, not in .venv36)
    except ImportError:
        pytest.skip("vermin is not installed in this interpreter (the Python 3 suite runs it)")
    proc = subprocess.Popen([sys.executable, "-c", "import sys, vermin; sys.exit(vermin.main())", "--no-tips", "--violations", "-t=3.6-",
                             "--eval-annotations", "edge", "models"], cwd=REPO_ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out.decode("utf-8", "replace")
