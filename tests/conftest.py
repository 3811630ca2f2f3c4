"""Shared fixtures. Python 3.6 safe: imports nothing from torch or training/.

Real images come from ../shared/data/fundus4 (relative to the repository root);
tests that need them skip with a reason when the folder is absent. Everything a
test writes goes under its tmp_path.
"""
import copy
import os
import shutil
import sys

import pytest

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

TESTS_DIR = os.path.join(REPO_ROOT, "tests")
TINY_ONNX = os.path.join(TESTS_DIR, "data", "tiny4.onnx")
LABELS = ["cataract", "diabetic_retinopathy", "glaucoma", "normal"]

# A few real fundus4 images, chosen for their kinds: 400x400 JPEG with a wide
# black border, 400x400 .jpeg, 266x400 PNG, 256x256 augmented copy.
NORMAL_BORDERED = os.path.join("normal", "3417_left.jpg")
DR_JPEG = os.path.join("diabetic_retinopathy", "10003_left.jpeg")
GLAUCOMA_PNG = os.path.join("glaucoma", "Glaucoma_001.png")
GLAUCOMA_AUGMENTED = os.path.join("glaucoma", "_9_9966988.jpg")
CATARACT_JPG = os.path.join("cataract", "0_left.jpg")

_VALID_MANIFEST = {
    "schema": "retina-edge/bundle",
    "schema_version": 1,
    "name": "tiny4-test",
    "task": "classification",
    "labels": LABELS,
    "model": {"opset": 13, "architecture": "tiny4"},
    "input": {"name": "input", "shape": [1, 3, 32, 32], "dtype": "float32", "layout": "NCHW",
              "dynamic_batch": True},
    "outputs": [{"name": "logits", "shape": ["N", 4], "kind": "logits"}],
    "preprocess": {
        "colour_order": "RGB",
        "roi": {"kind": "fundus_disc", "threshold": 10, "pad": "square"},
        "resize": {"size": [32, 32], "interpolation": "area"},
        "scale": 1.0 / 255.0,
        "mean": [0.485, 0.456, 0.406],
        "std": [0.229, 0.224, 0.225],
    },
    "postprocess": {"activation": "softmax", "temperature": 1.0},
    "provenance": {"commands": ["python tests/data/make_tiny_onnx.py"], "data": {"source": "none"},
                   "commit": "test"},
    "metrics": {},
}


class Collect(object):
    """An output that keeps every (frame, result) it is given, for a test to inspect."""

    def __init__(self):
        self.frames, self.results = [], []
        self.closed = False

    def write(self, frame, result):
        self.frames.append(frame)
        self.results.append(result)

    def close(self):
        self.closed = True


def pytest_collection_modifyitems(config, items):
    """Everything under tests/integration needs torch, whether or not the file says so."""
    integration = os.path.join(TESTS_DIR, "integration") + os.sep
    for item in items:
        if str(item.fspath).startswith(integration):
            item.add_marker(pytest.mark.torch)


@pytest.fixture
def repo_root():
    return REPO_ROOT


@pytest.fixture
def make_manifest():
    """A function returning a fresh, valid manifest dict (model.file/sha256 are filled by write_bundle)."""
    def make():
        return copy.deepcopy(_VALID_MANIFEST)
    return make


@pytest.fixture
def valid_manifest(make_manifest):
    return make_manifest()


@pytest.fixture(scope="session")
def fundus_dir():
    path = os.path.normpath(os.path.join(REPO_ROOT, "..", "shared", "data", "fundus4"))
    if not os.path.isdir(path):
        pytest.skip("real fundus images not found at {} (../shared/data/fundus4)".format(path))
    return path


@pytest.fixture(scope="session")
def tiny_onnx_path():
    if not os.path.isfile(TINY_ONNX):
        pytest.skip("{} missing; regenerate with tests/data/make_tiny_onnx.py".format(TINY_ONNX))
    return TINY_ONNX


@pytest.fixture
def tiny_bundle(tmp_path, tiny_onnx_path, make_manifest):
    """A real bundle in tmp_path around tests/data/tiny4.onnx (4 labels, 32x32 input)."""
    from models.bundle import write_bundle
    with open(tiny_onnx_path, "rb") as f:
        data = f.read()
    return write_bundle(str(tmp_path / "bundle"), data, make_manifest())


def write_bad_files(folder, real_jpeg):
    """Three unreadable '.jpg' files in ``folder``; returns their paths (empty, truncated, text)."""
    empty = os.path.join(folder, "empty.jpg")
    open(empty, "wb").close()
    with open(real_jpeg, "rb") as f:
        data = f.read()
    truncated = os.path.join(folder, "truncated.jpg")
    with open(truncated, "wb") as f:
        f.write(data[:len(data) // 2])
    text = os.path.join(folder, "notes.jpg")
    with open(text, "w") as f:
        f.write("this is a text file, not a JPEG\n")
    return [empty, truncated, text]


@pytest.fixture
def screen_folder(tmp_path, fundus_dir):
    """A folder of 3 real images (one in a subfolder) and 3 bad files; returns (folder, good, bad)."""
    folder = str(tmp_path / "screen")
    os.makedirs(os.path.join(folder, "sub"))
    good = []
    for rel, dest in ((NORMAL_BORDERED, "a_normal.jpg"), (DR_JPEG, "b_dr.jpeg"),
                      (GLAUCOMA_PNG, os.path.join("sub", "c_glaucoma.png"))):
        path = os.path.join(folder, dest)
        shutil.copyfile(os.path.join(fundus_dir, rel), path)
        good.append(path)
    bad = write_bad_files(folder, os.path.join(fundus_dir, NORMAL_BORDERED))
    return folder, sorted(good), sorted(bad)


@pytest.fixture
def subprocess_env(tmp_path):
    """Environment for running the CLIs as subprocesses: the repo importable, a private ledger home."""
    env = dict(os.environ)
    env["PYTHONPATH"] = REPO_ROOT + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["RETINA_EDGE_HOME"] = str(tmp_path / "retina-edge-home")
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    return env
