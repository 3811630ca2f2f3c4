"""retina-edge selftest here (no TensorRT, no GPU): it runs, passes what it can, and fails what is broken."""
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from conftest import REPO_ROOT
from edge.selftest import FAIL, PASS, SKIP, Check, SelfTest, summary


def selftest(args, env, cwd):
    proc = subprocess.Popen([sys.executable, "-m", "edge", "selftest"] + args, cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=600)
    return proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def test_selftest_here_passes_bundle_samples_and_onnxruntime(tmp_path, subprocess_env):
    report_path = str(tmp_path / "selftest.json")
    code, out, err = selftest(["--json", report_path], subprocess_env, str(tmp_path))
    assert code == 0, out + err
    assert "Traceback" not in err
    for key in ("l4t", "jetpack", "tensorrt", "cuda", "cudnn", "pycuda", "nvpmodel"):
        assert "  {:<18} ".format(key) in out
    with open(report_path) as f:
        report = json.load(f)
    assert report["ok"] is True
    statuses = dict((c["name"], c["status"]) for c in report["checks"])
    assert statuses["bundle"] == statuses["sample images"] == statuses["onnxruntime"] == PASS
    assert statuses["tensorrt"] == SKIP  # no TensorRT here: skipped with the reason, never passed
    tensorrt = [c for c in report["checks"] if c["name"] == "tensorrt"][0]
    assert "tensorrt" in tensorrt["detail"].lower()
    assert all(s in (PASS, SKIP) for s in statuses.values())
    assert report["platform"]["l4t"] is None  # not a Jetson, and it says so rather than guessing
    assert out.strip().splitlines()[-2].startswith("selftest passed")


def test_a_tampered_bundle_fails_with_exit_1(tmp_path, tiny_bundle, subprocess_env):
    with open(tiny_bundle.onnx_path, "ab") as f:
        f.write(b"\0")
    code, out, err = selftest(["--model", tiny_bundle.root], subprocess_env, str(tmp_path))
    assert code == 1
    assert "FAIL bundle" in out and "sha256 mismatch" in out
    assert "selftest FAILED" in out


def test_missing_samples_fail_and_later_checks_skip_with_a_reason(tmp_path, tiny_bundle):
    lines = []
    results = SelfTest(tiny_bundle.root, str(tmp_path / "nowhere"), log=lines.append).run()
    by_name = dict((r.name, r) for r in results)
    assert by_name["bundle"].status == PASS
    assert by_name["sample images"].status == FAIL and "no sample folder" in by_name["sample images"].detail
    assert by_name["onnxruntime"].status == SKIP and "needs" in by_name["onnxruntime"].detail
    assert len(lines) == len(results)


def test_a_crashing_check_is_a_fail_naming_it(tmp_path, tiny_bundle, fundus_dir):
    def check_boom(t):
        raise RuntimeError("device lost")
    samples = str(tmp_path / "s")
    os.makedirs(samples)
    shutil.copy(os.path.join(fundus_dir, "normal", "3417_left.jpg"), samples)
    results = SelfTest(tiny_bundle.root, samples).run([check_boom])
    assert results == [Check("boom", FAIL, "crashed: RuntimeError: device lost", {})]
    assert summary(results) == (False, "selftest FAILED: 0 passed, 1 failed (boom), 0 skipped")


def test_default_samples_are_the_repositorys_unless_the_environment_names_others(monkeypatch, tmp_path):
    from edge import home
    monkeypatch.delenv("RETINA_EDGE_SAMPLES", raising=False)
    assert home.samples_dir() == os.path.join(REPO_ROOT, "samples", "fundus")
    assert os.path.isdir(home.samples_dir())
    monkeypatch.setenv("RETINA_EDGE_SAMPLES", str(tmp_path))  # as the containers set it
    assert home.samples_dir() == str(tmp_path)


class _EngineLike(object):
    """Stands in for a TensorRT engine (none can run here): ONNX Runtime's fp32 network plus a set offset on the
    logits, so the check's comparison with fp32 can be driven both ways."""

    def __init__(self, bundle, offset, precision):
        from edge.backends import create_backend
        self.inner = create_backend("onnxruntime", bundle)
        self.offset, self.precision, self.input_dtype = np.asarray(offset, np.float32), precision, np.float32

    def infer(self, x):
        return self.inner.infer(x) + self.offset

    def describe(self):
        return "engine-like"

    def close(self):
        self.inner.close()


@pytest.mark.parametrize("offset, status", [
    ([0.0, 0.0, 0.0, 0.0], PASS),     # the same network: agreement 100 %, |dprob| 0
    ([0.0, 0.0, 30.0, 0.0], FAIL),    # pushes every image to glaucoma: labels change
])
def test_the_tensorrt_check_compares_each_engine_with_onnxruntime(monkeypatch, tiny_bundle, fundus_dir, offset,
                                                                  status):
    import edge.backends as backends
    real = backends.create_backend

    def create(name, bundle, precision="fp32", **options):
        if name == "tensorrt":
            return _EngineLike(bundle, offset, precision)
        return real(name, bundle, precision=precision, **options)
    monkeypatch.setattr(backends, "availability", lambda name: (True, "fake"))
    monkeypatch.setattr(backends, "create_backend", create)
    t = SelfTest(tiny_bundle.root, os.path.join(REPO_ROOT, "samples", "fundus"), {"precisions": ["fp32", "fp16"]})
    results = t.run()
    trt = [r for r in results if r.name == "tensorrt"][0]
    assert trt.name == "tensorrt" and trt.status == status, trt
    assert sorted(trt.data) == ["fp16", "fp32"]
    if status == PASS:
        assert trt.data["fp32"]["top1_agreement"] == 1.0 and trt.data["fp32"]["max_abs_prob_diff"] < 1e-6
    else:
        assert "top-1 agreement" in trt.detail and trt.data["fp16"]["top1_agreement"] < 1.0


def test_the_cuda_kernel_check_through_the_host_emulation(tmp_path_factory, tiny_bundle):
    """No GPU here: the same preprocess.cu, compiled for the CPU (tests/gpu_hostemu), stands in for one."""
    from gpu_hostemu.emulator import HostRuntime, session_kernels
    from edge.selftest import check_cuda_kernel, check_onnxruntime, check_samples, check_bundle
    kernels = session_kernels(tmp_path_factory)
    t = SelfTest(tiny_bundle.root, os.path.join(REPO_ROOT, "samples", "fundus"))
    t.run([check_bundle, check_samples, check_onnxruntime])
    result = check_cuda_kernel(t, runtime=HostRuntime(), kernels=kernels)
    assert result.status == PASS, result
    assert result.data["max_abs_input_diff"] == 0.0 and result.data["top1_agreement"] == 1.0
    assert result.data["images"] == 12


def test_the_cuda_kernel_check_skips_here_with_the_reason(tiny_bundle):
    from edge.selftest import check_cuda_kernel, check_onnxruntime, check_samples, check_bundle
    t = SelfTest(tiny_bundle.root, os.path.join(REPO_ROOT, "samples", "fundus"))
    t.run([check_bundle, check_samples, check_onnxruntime])
    result = check_cuda_kernel(t)
    assert result.status == SKIP and result.detail
