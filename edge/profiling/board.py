"""What machine a profile ran on: model, L4T release, nvpmodel mode, jetson_clocks state, versions.

Facts, and where they come from:
- ``nvpmodel -q`` prints ``NV Power Mode: MAXN`` then the mode id on its own
  line (rbonghi/jetson_stats ``tests/nvpmodel`` emulator, ``jtop/core/nvpmodel.py``
  ``NV_POWER_MODE_RE``).
- ``jetson_clocks --show`` prints ``cpuN: Online=1 Governor=... MinFreq=...
  MaxFreq=... CurrentFreq=...``, ``GPU MinFreq=... MaxFreq=... CurrentFreq=...``,
  ``EMC MinFreq=... MaxFreq=... CurrentFreq=...`` and needs root. jetson_clocks
  pins clocks at their maximum, so it is active when every online CPU and the
  GPU have MinFreq == MaxFreq and the EMC runs at MaxFreq (the rule of
  jetson_stats ``jtop/core/jetson_clocks.py`` ``jetson_clocks_alive``).
- The Jetson model is in ``/proc/device-tree/model``; the L4T release in
  ``/etc/nv_tegra_release`` (``# R32 (release), REVISION: 7.1, ...``).
"""
import os
import platform
import re
import sys
from collections import OrderedDict

from edge.profiling.sysfs import read_text, run_command, which

_NV_POWER_MODE = re.compile(r"NV Power Mode:\s*(\S+)")
_CLOCK_LINE = re.compile(r"^(cpu\d+|GPU|EMC):?\s.*?MinFreq=(\d+)\s+MaxFreq=(\d+)\s+CurrentFreq=(\d+)")
_ONLINE = re.compile(r"Online=(\d)")


def nvpmodel(command="nvpmodel"):
    """{"mode": name, "id": int} or {"available": False, "reason": ...}."""
    if which(command) is None:
        return {"available": False, "reason": "nvpmodel not on PATH (it comes with L4T on a Jetson)"}
    code, out = run_command([command, "-q"])
    lines = [l.strip() for l in (out or "").splitlines()]
    for i, line in enumerate(lines):
        m = _NV_POWER_MODE.search(line)
        if m and code == 0:
            following = lines[i + 1] if i + 1 < len(lines) else ""
            return {"available": True, "mode": m.group(1), "id": int(following) if following.isdigit() else None}
    return {"available": False, "reason": "nvpmodel -q: {}".format(_first_line(out, code))}


def parse_jetson_clocks(text):
    """{"active": bool, "engines": {name: {min_hz/khz...}}} from ``jetson_clocks --show`` output."""
    engines = OrderedDict()
    for line in text.splitlines():
        m = _CLOCK_LINE.match(line.strip())
        if not m:
            continue
        online = _ONLINE.search(line)
        engines[m.group(1)] = {"min": int(m.group(2)), "max": int(m.group(3)), "current": int(m.group(4)),
                               "online": online is None or online.group(1) == "1"}
    if not engines:
        return {"active": None, "engines": engines}
    pinned = []
    for name, e in engines.items():
        if not e["online"]:
            continue
        pinned.append(e["current"] == e["max"] if name == "EMC" else e["min"] == e["max"])
    return {"active": all(pinned), "engines": engines}


def jetson_clocks(command="jetson_clocks"):
    """{"active": bool, ...} from ``jetson_clocks --show``, or {"available": False, "reason": ...}."""
    if which(command) is None:
        return {"available": False, "reason": "jetson_clocks not on PATH (it comes with L4T on a Jetson)"}
    code, out = run_command([command, "--show"], timeout_s=10.0)
    parsed = parse_jetson_clocks(out or "") if code == 0 else {"active": None}
    if parsed["active"] is None:
        return {"available": False, "reason": "jetson_clocks --show: {} (it needs root: sudo)".format(
            _first_line(out, code))}
    parsed["available"] = True
    return parsed


def _first_line(out, code):
    line = (out or "").strip().splitlines()[0] if (out or "").strip() else "no output"
    return "{} (exit {})".format(line, code) if code not in (None, 0) else line


def machine(root):
    """The machine in a few fields; Jetson ones read under ``root`` (a SysRoot)."""
    info = OrderedDict()
    info["hostname"] = platform.node()
    info["platform"] = platform.platform()
    info["machine"] = platform.machine()
    info["cpu_count"] = os.cpu_count()
    info["cpu_model"] = _cpu_model(root)
    model = read_text(root.path("/proc/device-tree/model"))
    info["board"] = model.rstrip("\x00") if model else None
    info["l4t_release"] = _l4t_release(root)
    info["sysfs_root"] = root.describe()
    return info


def _cpu_model(root):
    text = read_text(root.path("/proc/cpuinfo")) or ""
    for line in text.splitlines():
        key = line.split(":", 1)[0].strip().lower()
        if key in ("model name", "hardware", "cpu model") and ":" in line:
            return line.split(":", 1)[1].strip()
    return platform.processor() or None


def _l4t_release(root):
    """"R32.7.1" from "# R32 (release), REVISION: 7.1, GCID: ..."; None off a Jetson."""
    text = read_text(root.path("/etc/nv_tegra_release"))
    m = re.search(r"R(\d+)\s*\(release\),\s*REVISION:\s*([\d.]+)", text or "")
    return "R{}.{}".format(m.group(1), m.group(2)) if m else None


def versions():
    """Versions of what the run used, taken from modules already imported (nothing new is imported)."""
    out = OrderedDict([("python", platform.python_version())])
    for name, module in (("numpy", "numpy"), ("opencv", "cv2"), ("onnxruntime", "onnxruntime"),
                         ("tensorrt", "tensorrt"), ("pycuda", "pycuda"),
                         ("matplotlib", "matplotlib")):
        mod = sys.modules.get(module)
        if mod is not None:
            out[name] = str(getattr(mod, "__version__", None) or getattr(mod, "VERSION_TEXT", None) or "unknown")
    out["retina_edge_commit"] = _git_commit()
    return out


def _git_commit():
    """The commit of the checkout retina-edge runs from, when it is one (None for an installed package)."""
    here = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if not os.path.isdir(os.path.join(here, ".git")) and not os.path.isfile(os.path.join(here, ".git")):
        return None
    if which("git") is None:
        return None
    code, out = run_command(["git", "-C", here, "rev-parse", "--short", "HEAD"])
    return out if code == 0 else None
