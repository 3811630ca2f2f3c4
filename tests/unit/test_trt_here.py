"""On this machine (no TensorRT, no GPU) the TensorRT paths fail in one clear line, and the CUDA runtime says why.

Real subprocess runs of ``python -m edge``; the real cuda-python bindings
where they are installed (they come with the workstation's torch); a real
/proc/meminfo and files shaped like it.
"""
import importlib.util
import os
import subprocess
import sys

import pytest

from edge.backends import BackendError, availability, choose_backend, create_backend
from edge.backends.tensorrt import available
from edge.backends.trt_build import check_build_memory, memory_available_bytes
from edge.gpu.cuda import GpuError, load_runtime, probe


def run_edge(args, env, cwd):
    proc = subprocess.Popen([sys.executable, "-m", "edge"] + args, cwd=cwd, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=300)
    return proc.returncode, out.decode("utf-8", "replace"), err.decode("utf-8", "replace")


def real_tensorrt_here():
    try:
        import tensorrt
    except ImportError:
        return False
    return hasattr(tensorrt, "Builder")


pytestmark = pytest.mark.skipif(real_tensorrt_here(), reason="TensorRT is installed: these check its absence")


def one_line(text):
    return text.strip() and "\n" not in text.strip() and "Traceback" not in text


def test_available_says_why_not_in_one_line():
    ok, reason = available()
    assert not ok and one_line(reason)
    assert "tensorrt" in reason.lower() and "pip install tensorrt" in reason
    assert availability("tensorrt") == (ok, reason)
    name, why = choose_backend("auto")
    assert name == "onnxruntime" and "tensorrt not usable: " + reason in why


def test_create_backend_tensorrt_is_one_clear_backend_error(tiny_bundle):
    with pytest.raises(BackendError) as info:
        create_backend("tensorrt", tiny_bundle, precision="fp16")
    assert str(info.value).startswith("backend 'tensorrt' cannot run here: ") and one_line(str(info.value))


def test_run_with_backend_tensorrt_exits_2_with_one_line(tmp_path, tiny_bundle, subprocess_env, repo_root):
    code, out, err = run_edge(["run", os.path.join(repo_root, "samples", "fundus"), "--model", tiny_bundle.root,
                               "--backend", "tensorrt"], subprocess_env, str(tmp_path))
    assert code == 2 and one_line(err), err
    assert err.startswith("retina-edge run: error: backend 'tensorrt' cannot run here: ")
    assert not os.path.exists(subprocess_env["RETINA_EDGE_HOME"])  # nothing started, no ledger made


def test_build_exits_2_with_one_line(tmp_path, tiny_bundle, subprocess_env):
    code, out, err = run_edge(["build", "--model", tiny_bundle.root, "--precision", "fp16"], subprocess_env,
                              str(tmp_path))
    assert code == 2 and one_line(err), err
    assert err.startswith("retina-edge build: error: TensorRT cannot run here: ")
    code, out, err = run_edge(["build", "--backend", "onnxruntime"], subprocess_env, str(tmp_path))
    assert code == 2 and "ONNX Runtime needs no engine" in err and one_line(err)
    code, out, err = run_edge(["build", "--model", str(tmp_path / "nowhere")], subprocess_env, str(tmp_path))
    assert code == 2 and "not a bundle folder" in err and one_line(err)


def test_build_help_has_worked_examples(tmp_path, subprocess_env):
    code, out, err = run_edge(["build", "--help"], subprocess_env, str(tmp_path))
    assert code == 0
    for text in ("examples:", "--calibration", "--force-int8", "--workspace", "--batch", "--cache-dir"):
        assert text in out, text


def test_the_cuda_runtime_says_what_is_missing_or_that_there_is_no_gpu():
    ok, reason = probe()
    assert not ok and one_line(reason)
    with pytest.raises(GpuError) as info:
        load_runtime()
    message = str(info.value)
    assert one_line(message)
    has_cuda_python = importlib.util.find_spec("cuda") is not None
    if has_cuda_python:
        assert reason.startswith("no CUDA GPU (cuda-python: cudaGetDeviceCount failed: ")
        assert "cudaGetDeviceCount failed" in message
    else:
        assert "install pycuda" in reason and "pycuda==2022.1" in message and "cuda-python" in message
    with pytest.raises(GpuError, match="unknown CUDA runtime"):
        load_runtime(prefer="opencl")


def test_the_cuda_python_adapter_calls_only_functions_the_bindings_have():
    """Every cudart function edge/gpu/cuda_cudart.py calls exists in the installed cuda-python."""
    import re
    from edge.gpu.cuda_cudart import CudartRuntime
    try:
        cudart = CudartRuntime.import_modules()
    except ImportError:
        pytest.skip("cuda-python is not installed in this interpreter")
    source = open(sys.modules["edge.gpu.cuda_cudart"].__file__).read()
    called = set(re.findall(r'"(cuda[A-Z]\w+)"', source))
    assert {"cudaMalloc", "cudaMemcpyAsync", "cudaEventElapsedTime", "cudaMallocHost"} <= called
    assert sorted(f for f in called if not hasattr(cudart, f)) == []
    for member in ("cudaMemcpyHostToDevice", "cudaMemcpyDeviceToHost"):
        assert hasattr(cudart.cudaMemcpyKind, member)


def test_build_memory_warning_from_meminfo(tmp_path):
    def meminfo(available_kb, swap_kb):
        path = tmp_path / "meminfo-{}-{}".format(available_kb, swap_kb)
        path.write_text(u"MemTotal:        4059484 kB\nMemFree:          200000 kB\n"
                        u"MemAvailable:   {:>9} kB\nSwapTotal:       2029736 kB\nSwapFree:       {:>9} kB\n"
                        .format(available_kb, swap_kb))
        return str(path)
    lines = []
    low = check_build_memory(lines.append, meminfo(1200000, 0))  # a Nano with a desktop and no swap
    assert low == 1200000 * 1024 and len(lines) == 1
    assert "add swap" in lines[0] and "deploy/README.md" in lines[0]
    assert check_build_memory(lines.append, meminfo(2000000, 2029736)) == (2000000 + 2029736) * 1024
    assert len(lines) == 1  # enough with swap: no second warning
    assert memory_available_bytes(str(tmp_path / "missing")) is None
    assert memory_available_bytes() > 0  # this machine's own /proc/meminfo


def test_versions_for_selftest_say_what_is_missing():
    from edge.backends.tensorrt import versions
    found = versions()
    assert found["tensorrt"] is None and one_line(found["tensorrt_error"])
    assert found["gpu"] is None and one_line(found["gpu_error"])
    assert (found["cudnn"] is None) == ("cudnn_error" in found)


def test_cudnn_version_numbers_decode_per_generation():
    from edge.gpu.cuda import cudnn_version_text
    assert cudnn_version_text(8201) == "8.2.1"     # JetPack 4.6: cuDNN 8.2.1
    assert cudnn_version_text(7605) == "7.6.5"
    assert cudnn_version_text(90100) == "9.1.0"    # cuDNN 9: major * 10000
