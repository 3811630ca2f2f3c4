"""edge/gpu/preprocess.cu compiles for the GPUs it must run on, and its loaders agree with it.

What can be checked here: the CUDA 13 nvcc on this machine compiles it for sm_75 (Turing, the
oldest desktop GPU CUDA 13 still targets) and sm_87 (Orin); NVRTC (the compiler behind CuPy's
RawModule and the cuda-python loader) does too. CUDA 13 has no sm_53, so the Jetson Nano's
Maxwell cannot be checked here: on the Nano, pycuda compiles the source at run time with JetPack
4.6's own CUDA 10.2, which is why the source sticks to C++14 without includes and to intrinsics
CUDA 10.2 has. Each test skips with the reason when its compiler is absent.
"""
import re
import subprocess

import pytest

from edge.gpu import kernel as gpu_kernel

ARCHES = ("sm_75", "sm_87")


@pytest.mark.parametrize("arch", ARCHES)
def test_nvcc_compiles_the_source_standalone(tmp_path, arch):
    nvcc = gpu_kernel.find_nvcc()
    if nvcc is None:
        pytest.skip("nvcc not found (PATH, /usr/local/cuda/bin): cannot compile-check preprocess.cu")
    target = str(tmp_path / "preprocess_{}.o".format(arch))
    proc = subprocess.Popen([nvcc, "-c", "-std=c++14", "-arch={}".format(arch), gpu_kernel.SOURCE_PATH,
                             "-o", target], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out.decode("utf-8", "replace")
    assert "warning" not in out.decode("utf-8", "replace").lower(), out.decode("utf-8", "replace")
    assert (tmp_path / "preprocess_{}.o".format(arch)).stat().st_size > 0


@pytest.mark.parametrize("arch", ARCHES)
def test_nvrtc_compiles_the_source_to_a_cubin(arch):
    try:
        nvrtc, _ = gpu_kernel.import_cuda_python()
    except ImportError as exc:
        pytest.skip("cuda-python's NVRTC is not installed ({}): cannot compile-check the CuPy/NVRTC path".format(exc))
    major, minor = int(arch[3]), int(arch[4])
    cubin = gpu_kernel.compile_nvrtc(nvrtc, gpu_kernel.source_text(), (major, minor))
    assert cubin[:4] == b"\x7fELF"


def _kernel_parameters(text, name):
    match = re.search(r'extern "C" __global__ void ' + name + r"\(([^)]*)\)", text)
    assert match, "no extern \"C\" __global__ kernel {} in preprocess.cu".format(name)
    return [" ".join(p.split()) for p in match.group(1).split(",")]


def test_the_loaders_signatures_match_the_kernels_parameters():
    text = gpu_kernel.source_text()
    for name, kinds in gpu_kernel.SIGNATURES.items():
        params = _kernel_parameters(text, name)
        assert len(params) == len(kinds), name
        for kind, param in zip(kinds, params):
            expected = {"P": "*", "i": "int ", "f": "float ", "d": "double "}[kind]
            assert expected in param and (kind == "P") == ("*" in param), "{}: {} as {!r}".format(name, param, kind)


def test_the_source_needs_no_headers_and_exports_its_constants():
    text = gpu_kernel.source_text()
    assert "#include" not in text          # NVRTC and pycuda get no system headers
    defines = gpu_kernel.parse_defines(text)
    assert defines["RE_ROI_THREADS"] % 32 == 0 and defines["RE_ROI_ROWS"] == 32
    assert defines["RE_PLAN_INTS"] >= 11 and defines["RE_TAB_INTS"] >= 6
    from edge.gpu.preprocess import INTERPOLATIONS, ROI_KINDS, ROI_MEASURES
    from models import bundle
    assert INTERPOLATIONS == {"nearest": defines["RE_INTERP_NEAREST"], "linear": defines["RE_INTERP_LINEAR"],
                              "area": defines["RE_INTERP_AREA"]}
    assert ROI_KINDS == {"none": defines["RE_ROI_NONE"], "fundus_disc": defines["RE_ROI_FUNDUS"],
                         "retina_band": defines["RE_ROI_BAND"], "centre": defines["RE_ROI_CENTRE"]}
    assert ROI_MEASURES == {"fundus_disc": defines["RE_MEASURE_BRIGHT"], "retina_band": defines["RE_MEASURE_GREY"]}
    # every ROI kind of the manifest vocabulary runs on the GPU; of the interpolations all but cubic
    assert set(ROI_KINDS) == set(bundle.ROI_KINDS)
    assert set(INTERPOLATIONS) == set(bundle.INTERPOLATIONS) - {"cubic"}


def test_without_a_kernel_compiler_the_error_is_one_line_naming_what_to_install():
    class Runtime(object):
        name = "pycuda"

    try:
        import pycuda.compiler  # noqa: F401
        pytest.skip("pycuda is installed here")
    except ImportError:
        pass
    with pytest.raises(gpu_kernel.KernelError) as info:
        gpu_kernel.load_kernels(Runtime())
    message = str(info.value)
    assert "\n" not in message and "pycuda" in message and "cupy" in message.lower()
