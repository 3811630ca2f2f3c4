"""The engine cache: keys, rebuild on mismatch or bad bytes, atomic writes, timing and calibration caches.

Engines are made by the fake TensorRT builder (tests/unit/trtfakes), written
and read through the real cache code on a real filesystem under tmp_path.
"""
import json
import os

import numpy as np
import pytest

from edge.backends.engine_cache import KEY_FIELDS, EngineCache, engine_key, folder_digest, key_digest
from trtfakes.helpers import NANO, ORIN, Lines, fakes, make_backend

KEY = dict(model_sha256="a" * 64, variant="fp32", tensorrt="8.2.1.8", gpu="NVIDIA Tegra X1",
           compute_capability=[5, 3], precision="fp16", input_shape=[1, 3, 224, 224], max_batch=1,
           workspace_bytes=256 << 20, calibration_sha256=None)
OTHER = dict(model_sha256="b" * 64, variant="int8", tensorrt="8.2.3.0", gpu="Orin", compute_capability=[8, 7],
             precision="int8", input_shape=[4, 3, 224, 224], max_batch=4, workspace_bytes=1 << 30,
             calibration_sha256="c" * 64)


def test_every_field_changes_the_key():
    assert set(KEY) == set(KEY_FIELDS)
    base = key_digest(engine_key(**KEY))
    for field in KEY_FIELDS:
        changed = dict(KEY)
        changed[field] = OTHER[field]
        assert key_digest(engine_key(**changed)) != base, field


def test_a_key_has_exactly_the_fields():
    with pytest.raises(ValueError, match="missing"):
        engine_key(**dict((k, v) for k, v in KEY.items() if k != "gpu"))
    with pytest.raises(ValueError, match="unknown"):
        engine_key(colour="blue", **KEY)


def test_engines_are_cached_under_the_home_not_beside_the_bundle(tiny_bundle, tmp_path, monkeypatch):
    monkeypatch.setenv("RETINA_EDGE_HOME", str(tmp_path / "home"))
    backend, trt, cuda, log = make_backend(tiny_bundle, cache_dir="", precision="fp16")
    backend.close()
    path = backend.engine_info.path
    assert path.startswith(str(tmp_path / "home" / "engines") + os.sep)
    assert not [f for f in os.listdir(tiny_bundle.root) if f.endswith((".engine", ".json.tmp"))]
    with open(path + ".json") as f:
        record = json.load(f)
    assert record["key"] == backend.engine_info.key and record["engine_bytes"] == os.path.getsize(path)
    assert not [f for f in os.listdir(os.path.dirname(path)) if ".tmp-" in f]  # atomic: no leftovers


def test_a_matching_engine_is_loaded_not_built(tiny_bundle, tmp_path):
    first, trt, _, _ = make_backend(tiny_bundle, tmp_path, precision="fp16")
    first.close()
    assert trt.fake.called("build_serialized_network")
    second, trt2, _, log = make_backend(tiny_bundle, tmp_path, precision="fp16")
    assert second.engine_info.origin == "cache" and not trt2.fake.called("build_serialized_network")
    assert "engine loaded from {}".format(first.engine_info.path) in second.describe()
    second.close()


@pytest.mark.parametrize("change, field", [
    (dict(version="8.2.3.0"), "tensorrt"),                  # a JetPack upgrade: torch2trt #46, #371, #537
    (dict(gpu=("NVIDIA Tegra X1 (other)", (5, 3))), "gpu"),
    (dict(workspace_mb=64), "workspace_bytes"),
])
def test_a_key_mismatch_rebuilds_with_a_message(tiny_bundle, tmp_path, change, field):
    first, _, _, _ = make_backend(tiny_bundle, tmp_path, precision="fp16")
    first.close()
    options = dict(precision="fp16")
    options.update(change)
    second, trt, _, log = make_backend(tiny_bundle, tmp_path, **options)
    assert trt.fake.called("build_serialized_network") and second.engine_info.origin == "built"
    (line,) = log.having("was built for another")
    assert field in line and line.endswith("rebuilding")
    assert second.engine_info.path == first.engine_info.path  # the stale engine is replaced, not piled up
    second.close()


def test_an_engine_whose_key_file_was_altered_is_never_loaded(tiny_bundle, tmp_path):
    first, _, _, _ = make_backend(tiny_bundle, tmp_path, precision="fp16")
    first.close()
    key_path = first.engine_info.path + ".json"
    with open(key_path) as f:
        record = json.load(f)
    record["key"]["precision"] = "int8"
    with open(key_path, "w") as f:
        json.dump(record, f)
    second, trt, _, log = make_backend(tiny_bundle, tmp_path, precision="fp16")
    assert log.having("was built for another precision")
    assert len(trt.fake.called("deserialize_cuda_engine")) == 1  # only the engine just rebuilt was read
    second.close()


def test_damaged_or_undeserializable_engines_are_rebuilt(tiny_bundle, tmp_path):
    first, _, _, _ = make_backend(tiny_bundle, tmp_path, precision="fp16")
    first.close()
    path = first.engine_info.path
    with open(path, "r+b") as f:
        f.truncate(10)  # a half-written file, e.g. power lost during a copy
    second, trt, _, log = make_backend(tiny_bundle, tmp_path, precision="fp16")
    assert log.having("is damaged") and second.engine_info.origin == "built"
    second.close()
    # bytes that match the key file but that TensorRT cannot read (the usual symptom of a TensorRT upgrade)
    garbage = b"not an engine"
    with open(path, "wb") as f:
        f.write(garbage)
    with open(path + ".json") as f:
        record = json.load(f)
    import hashlib
    record["engine_sha256"] = hashlib.sha256(garbage).hexdigest()
    with open(path + ".json", "w") as f:
        json.dump(record, f)
    third, trt, cuda, log = make_backend(tiny_bundle, tmp_path, precision="fp16")
    (line,) = log.having("cannot be deserialized")
    assert "TensorRT returned no engine" in line and third.engine_info.origin == "built"
    x = np.full((1, 3, 32, 32), 0.5, np.float32)
    assert np.allclose(third.infer(x)[0], [0.5, 2.0, 3.5, 5.0])  # the rebuilt engine runs
    third.close()


def test_a_deserializer_that_raises_is_a_rebuild_too(tmp_path):
    cache = EngineCache(str(tmp_path), Lines())
    key = engine_key(**KEY)
    path = cache.engine_path("m", key)
    assert cache.store(path, key, b"plan") == path

    def explode(data):
        raise RuntimeError("Serialization assertion\nfailed")
    assert cache.load(path, key, explode) is None
    (line,) = cache.log.having("cannot be deserialized")
    assert "RuntimeError: Serialization assertion failed" in line
    assert cache.load(path, key, lambda data: ("engine", data)) == ("engine", b"plan")


def test_an_unwritable_cache_is_one_warning_and_the_run_goes_on(tiny_bundle, tmp_path):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text(u"a file where the cache folder should be")  # fails for root too, unlike chmod
    backend, trt, cuda, log = make_backend(tiny_bundle, blocker, precision="fp16")
    (warning,) = log.having("warning:")
    assert "not writable" in warning and "--cache-dir" in warning and str(blocker) in warning
    assert backend.engine_info.path is None and "not cached" in backend.describe()
    x = np.zeros((1, 3, 32, 32), np.float32)
    assert backend.infer(x).shape == (1, 4)
    backend.close()


def test_the_timing_cache_persists_per_tensorrt_version_and_gpu(tiny_bundle, tmp_path):
    first, _, _, _ = make_backend(tiny_bundle, tmp_path, precision="fp16")
    first.close()
    timing = os.listdir(str(tmp_path / "timing"))
    assert timing == ["tensorrt-8.2.1.8-NVIDIA-Tegra-X1-sm53.cache"]
    second, trt, _, _ = make_backend(tiny_bundle, tmp_path, precision="fp32")  # another engine, same cache
    second.close()
    assert trt.fake.called("set_timing_cache") == [True]
    with open(str(tmp_path / "timing" / timing[0]), "rb") as f:
        assert f.read() == b"fake-timing 8.2.1.8:2"  # both builds' timings kept
    third, _, _, _ = make_backend(tiny_bundle, tmp_path, version="10.0.1", gpu=ORIN, precision="fp16")
    third.close()
    assert len(os.listdir(str(tmp_path / "timing"))) == 2


def test_calibration_caches_are_keyed_by_model_and_images(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    (images / "a.jpg").write_bytes(b"x" * 10)
    cache = EngineCache(str(tmp_path / "cache"))
    by_folder = cache.calibration_cache_path("d" * 64, str(images))
    assert os.path.basename(by_folder) == "{}-{}.cache".format("d" * 16, folder_digest(str(images))[:16])
    assert cache.calibration_cache_path("d" * 64) is None  # no folder given, none made yet
    assert cache.write_atomic(by_folder, b"scales", "calibration")
    assert cache.calibration_cache_path("d" * 64) == by_folder
    before = folder_digest(str(images))
    (images / "b.png").write_bytes(b"y")
    (images / "notes.txt").write_bytes(b"not an image")
    assert folder_digest(str(images)) != before


def test_fakes_share_the_gpu_between_trt_and_cuda():
    trt, cuda = fakes("10.0.1", NANO)
    assert trt.fake.memory is cuda.memory
