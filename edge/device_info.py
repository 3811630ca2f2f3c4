"""What the device is: L4T release, JetPack, board, and the versions of what retina-edge runs on.

Read from files and commands, never guessed: an unknown value is reported as
``None`` with the reason, so a selftest report shows what could not be found.
The filesystem root is a parameter so tests can point it at a fake tree that
mirrors a Jetson's (``etc/nv_tegra_release``, ``proc/device-tree/model``,
``usr/local/cuda/version.txt`` or ``version.json``, ``usr/include/**/cudnn_version*.h``).

Standard library only at import; Python 3.6.
"""
import glob
import importlib
import json
import os
import re
import subprocess

# L4T release -> JetPack, exact releases only. Sources: NVIDIA's JetPack archive
# (developer.nvidia.com/embedded/jetpack-archive) as tabulated by jetson-stats
# (rbonghi/jetson_stats, jtop/core/jetson_variables.py, NVIDIA_JETPACK).
JETPACK_FOR_L4T = {
    "32.6.1": "4.6", "32.7.1": "4.6.1", "32.7.2": "4.6.2", "32.7.3": "4.6.3", "32.7.4": "4.6.4",
    "32.7.5": "4.6.5", "32.7.6": "4.6.6",
    "35.1.0": "5.0.2", "35.2.1": "5.1", "35.3.1": "5.1.1", "35.4.1": "5.1.2", "35.5.0": "5.1.3",
    "35.6.0": "5.1.4",
    "36.2.0": "6.0 DP", "36.3.0": "6.0", "36.4.0": "6.1", "36.4.3": "6.2",
}
# what to say of a release the table has not heard of: the major only (35.1 was 5.0.2, 35.2.1 was 5.1)
_JETPACK_MAJOR = {"32": "4.x", "35": "5.x", "36": "6.x"}

_L4T_LINE = re.compile(r"R(\d+)\s*\(release\),\s*REVISION:\s*(\d+(?:\.\d+)*)")


def _read(root, rel):
    try:
        with open(os.path.join(root, rel), "rb") as f:
            return f.read().decode("utf-8", "replace").strip("\x00\n ")
    except (IOError, OSError):
        return None


def l4t_release(root="/"):
    """'32.7.1' from ``/etc/nv_tegra_release`` ('# R32 (release), REVISION: 7.1, ...'), or None."""
    text = _read(root, "etc/nv_tegra_release")
    match = _L4T_LINE.search(text or "")
    if not match:
        return None
    revision = match.group(2).split(".")
    revision += ["0"] * (2 - len(revision))
    return ".".join([match.group(1)] + revision[:2])


def jetpack_for(l4t):
    """The JetPack release of an L4T release, '4.x (L4T 32.9.9 not in the table)' when unknown."""
    if not l4t:
        return None
    if l4t in JETPACK_FOR_L4T:
        return JETPACK_FOR_L4T[l4t]
    major = l4t.split(".")[0]
    if major in _JETPACK_MAJOR:
        return "{} (L4T {} not in this table)".format(_JETPACK_MAJOR[major], l4t)
    return None


def board_model(root="/"):
    return _read(root, "proc/device-tree/model")


def cuda_version(root="/"):
    """CUDA toolkit version from version.json (CUDA >= 11.1) or version.txt (10.x)."""
    text = _read(root, "usr/local/cuda/version.json")
    if text:
        try:
            return json.loads(text)["cuda"]["version"]
        except (ValueError, KeyError, TypeError):
            pass
    text = _read(root, "usr/local/cuda/version.txt")
    match = re.search(r"CUDA Version\s+([\d.]+)", text or "")
    return match.group(1) if match else None


def cudnn_version(root="/"):
    """cuDNN version from its header (JetPack puts it under /usr/include/aarch64-linux-gnu)."""
    patterns = ("usr/include/cudnn_version*.h", "usr/include/*/cudnn_version*.h", "usr/local/cuda/include/cudnn_version.h")
    for pattern in patterns:
        for path in sorted(glob.glob(os.path.join(root, pattern))):
            text = _read("/", path) or ""
            parts = [re.search(r"#define\s+CUDNN_{}\s+(\d+)".format(k), text) for k in ("MAJOR", "MINOR", "PATCHLEVEL")]
            if all(parts):
                return ".".join(m.group(1) for m in parts)
    return None


def module_version(name, attribute="__version__"):
    """The version of an importable module, or None when it is not installed (or fails to import).

    A folder without ``__init__`` imports as an empty namespace package (``tensorrt-stubs``
    leaves such a ``tensorrt`` folder behind): that is not an installed module.
    """
    try:
        module = importlib.import_module(name)
    except Exception:  # a broken install must not stop a selftest
        return None
    if getattr(module, "__file__", None) is None and not hasattr(module, attribute):
        return None
    return str(getattr(module, attribute, "unknown"))


def nvpmodel_mode():
    """'MAXN' (and its id) from ``nvpmodel -q``, or None where nvpmodel is absent."""
    try:
        out = subprocess.check_output(["nvpmodel", "-q"], stderr=subprocess.STDOUT, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    text = out.decode("utf-8", "replace")
    match = re.search(r"NV Power Mode:\s*(\S+)", text)
    return match.group(1) if match else text.strip() or None


def describe(root="/"):
    """Everything above as a JSON-able dict."""
    import platform
    l4t = l4t_release(root)
    return {
        "board": board_model(root),
        "l4t": l4t,
        "jetpack": jetpack_for(l4t),
        "python": platform.python_version(),
        "machine": platform.machine(),
        "cuda": cuda_version(root),
        "cudnn": cudnn_version(root),
        "tensorrt": module_version("tensorrt"),
        "pycuda": module_version("pycuda", "VERSION_TEXT"),
        "onnxruntime": module_version("onnxruntime"),
        "numpy": module_version("numpy"),
        "opencv": module_version("cv2"),
        "nvpmodel": nvpmodel_mode(),
    }
