"""The TensorRT fakes offer nothing the real module of their version lacks.

10.x fakes are checked against ``tensorrt-stubs`` (type stubs of the 10.13
Python API, PyPI); the 8.2, 8.6 and 11 fakes against the names read from
NVIDIA's bindings sources per release (tests/data/trt_api_names.json). What a
fake adds for tests (``trt.fake``, underscored helpers) is not part of the check.
"""
import json
import os
import re

import pytest

from conftest import TESTS_DIR
from trtfakes import make_tensorrt

NAMES_FILE = os.path.join(TESTS_DIR, "data", "trt_api_names.json")
# fake version -> release whose names it is checked against
RELEASE_OF = {"8.2.1.8": "8.2", "8.6.1": "8.6", "11.0.0": "11.1"}
FAKE_ONLY = {"fake"}


def fake_surface(module):
    """{class name: public names it offers (own and inherited)}, plus "<module>" for module-level names."""
    surface = {"<module>": set()}
    for name, obj in vars(module).items():
        if name.startswith("_") and name != "__version__" or name in FAKE_ONLY:
            continue
        if not isinstance(obj, type):
            surface["<module>"].add(name)
            continue
        names = set()
        for klass in obj.__mro__:
            if klass.__module__ == "builtins":
                continue
            names.update(n for n in vars(klass) if not n.startswith("_"))
        surface[name] = names
    return surface


def resolve(classes, name, seen=()):
    if name not in classes or name in seen:
        return set()
    names = set(classes[name]["names"])
    for base in classes[name]["bases"]:
        names |= resolve(classes, base, seen + (name,))
    return names


def missing_from(real_classes, surface):
    missing = []
    for cls, names in sorted(surface.items()):
        if cls not in real_classes:
            missing.append(cls)
            continue
        real = resolve(real_classes, cls)
        missing.extend("{}.{}".format(cls, n) for n in sorted(names - real))
    return missing


@pytest.mark.parametrize("version", sorted(RELEASE_OF))
def test_fake_offers_only_what_nvidias_bindings_of_that_release_define(version):
    with open(NAMES_FILE) as f:
        real = json.load(f)["releases"][RELEASE_OF[version]]
    assert missing_from(real, fake_surface(make_tensorrt(version))) == []


_CLASS = re.compile(r"^class (\w+)(?:\(([^)]*)\))?:")
_MEMBER = re.compile(r"^    (?:def |class )?(\w+)\s*[(:=]")


def _stub_classes(pyi_path):
    """{class: {"names", "bases"}} from a .pyi, line by line (the generated stubs are not all valid Python:
    pybind11-stubgen writes signatures with a default before a non-default argument)."""
    classes, current = {}, None
    with open(pyi_path) as f:
        for line in f:
            top = _CLASS.match(line)
            if top:
                bases = [b.strip().split(".")[-1] for b in (top.group(2) or "").split(",") if b.strip()]
                current = classes.setdefault(top.group(1), {"names": set(), "bases": bases})
                continue
            if line[:1] not in ("", " ", "\n", "#", '"'):
                current = None  # a module-level statement ends the class
            member = _MEMBER.match(line)
            if current is not None and member:
                current["names"].add(member.group(1))
    return classes


@pytest.fixture(scope="module")
def stubs():
    try:
        import importlib.util
        spec = importlib.util.find_spec("tensorrt_stubs")
    except ImportError:
        spec = None
    if spec is None:
        pytest.skip("tensorrt-stubs is not installed here (Python >= 3.10; requirements/train.txt pins it)")
    site = os.path.dirname(os.path.dirname(spec.origin))
    classes = _stub_classes(os.path.join(site, "tensorrt_bindings", "tensorrt.pyi"))
    names = set()
    with open(os.path.join(site, "tensorrt", "__init__.pyi")) as f:
        for line in f:
            found = re.match(r"^from [\w.]+ import (\w+)$|^(\w+)\s*[:=]", line)
            if found:
                names.add(found.group(1) or found.group(2))
    classes["<module>"] = {"names": names, "bases": []}
    return classes


@pytest.mark.parametrize("version", ["10.0.1", "10.12.0"])
def test_10x_fake_offers_only_what_tensorrt_stubs_define(stubs, version):
    assert missing_from(stubs, fake_surface(make_tensorrt(version))) == []


def test_the_check_catches_an_attribute_the_release_lacks(stubs):
    """A fake 10.x engine offering the binding API (removed in 10) must fail the check."""
    trt = make_tensorrt("10.0.1")
    trt.ICudaEngine.num_bindings = property(lambda self: 2)
    assert "ICudaEngine.num_bindings" in missing_from(stubs, fake_surface(trt))
    with open(NAMES_FILE) as f:
        real_11 = json.load(f)["releases"]["11.1"]
    trt11 = make_tensorrt("11.0.0")
    trt11.BuilderFlag.FP16 = 0
    assert "BuilderFlag.FP16" in missing_from(real_11, fake_surface(trt11))
