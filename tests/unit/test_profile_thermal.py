"""Thermal zones, clock caps and throttling on fake trees; nvpmodel / jetson_clocks through stand-in commands."""
import os

import pytest

from edge.profiling import board
from edge.profiling.sysfs import SysRoot
from edge.profiling.thermal import ClockCaps, ThermalZones, assess_throttling
from fake_boards import clock_caps, nano_thermal, script, write


def test_zones_are_read_in_degrees_and_the_pmic_placeholder_is_left_out(tmp_path):
    nano_thermal(tmp_path)
    zones = ThermalZones(SysRoot(str(tmp_path)))
    temps = zones.read()
    assert list(temps) == ["AO-therm", "CPU-therm", "GPU-therm", "PLL-therm", "thermal-fan-est"]
    assert temps["CPU-therm"] == 41.5 and temps["AO-therm"] == 38.0
    assert zones.passive_trip_c("CPU-therm") == 97.0
    assert zones.trips()["CPU-therm"] == [{"type": "passive", "temp_c": 97.0}, {"type": "critical", "temp_c": 102.0}]


def test_offline_sensors_are_skipped_and_twins_told_apart(tmp_path):
    for n, (kind, mc) in enumerate([("CV0-therm", "-256000"), ("tj-thermal", "41468"), ("tj-thermal", "40000")]):
        write(tmp_path, "/sys/devices/virtual/thermal/thermal_zone{}/type".format(n), kind)
        write(tmp_path, "/sys/devices/virtual/thermal/thermal_zone{}/temp".format(n), mc)
    temps = ThermalZones(SysRoot(str(tmp_path))).read()
    assert temps == {"tj-thermal (thermal_zone1)": 41.468, "tj-thermal (thermal_zone2)": 40.0}


def test_no_zones_is_said(tmp_path):
    zones = ThermalZones(SysRoot(str(tmp_path)))
    assert not zones.available and "thermal_zone" in zones.reason


def test_a_zone_near_its_passive_trip_is_throttling(tmp_path):
    files = nano_thermal(tmp_path, cpu_mc=41500)
    zones = ThermalZones(SysRoot(str(tmp_path)))
    samples = [(0.0, zones.read())]
    with open(files["CPU-therm"], "w") as f:
        f.write("93500\n")
    samples.append((1.0, zones.read()))
    throttled, findings, method = assess_throttling(zones, samples, [])
    assert throttled is True and len(findings) == 1
    assert "CPU-therm reached 93.5 degC" in findings[0] and "97.0" in findings[0] and "passive" in method


def test_cool_zones_and_steady_caps_are_no_throttling(tmp_path):
    nano_thermal(tmp_path)
    clock_caps(tmp_path)
    root = SysRoot(str(tmp_path))
    zones, caps = ThermalZones(root), ClockCaps(root)
    throttled, findings, _ = assess_throttling(zones, [(0.0, zones.read())], [(0.0, caps.read()), (1.0, caps.read())])
    assert throttled is False and findings == []


def test_a_clock_cap_that_falls_during_the_run_is_throttling(tmp_path):
    cpu, _ = clock_caps(tmp_path, cpu_khz=1479000)
    caps = ClockCaps(SysRoot(str(tmp_path)))
    samples = [(0.0, caps.read())]
    with open(cpu, "w") as f:
        f.write("918000\n")
    samples.append((1.0, caps.read()))
    throttled, findings, _ = assess_throttling(None, [], samples)
    assert throttled is True and findings == ["cpu policy0 max clock fell from 1479 MHz to 918 MHz during the run"]


def test_nothing_to_check_is_none(tmp_path):
    root = SysRoot(str(tmp_path))
    assert assess_throttling(ThermalZones(root), [], [])[0] is None


def test_cpu_caps_fall_back_to_per_cpu_folders(tmp_path):
    write(tmp_path, "/sys/devices/system/cpu/cpu0/cpufreq/scaling_max_freq", "1510400")
    write(tmp_path, "/sys/devices/system/cpu/cpu1/cpufreq/scaling_max_freq", "1510400")
    assert ClockCaps(SysRoot(str(tmp_path))).read() == {"cpu cpu0": 1510400000, "cpu cpu1": 1510400000}


def on_path(folder):
    """``folder`` first on PATH, the system's commands (cat, sh) after it."""
    return folder + os.pathsep + os.environ.get("PATH", "")


# `nvpmodel -q` on a Nano: rbonghi/jetson_stats tests/nvpmodel (show_query) prints a warning,
# "NV Power Mode: <name>", then the id.
NVPMODEL_Q = "NVPM WARN: fan mode is not set!\nNV Power Mode: MAXN\n0"
# `jetson_clocks --show` layout: jetson_stats tests/jetson_clocks (show_tx2 / fake_show).
CLOCKS_SHOW = """SOC family:tegra210  Machine:NVIDIA Jetson Nano Developer Kit
Online CPUs: 0-3
cpu0: Online=1 Governor=schedutil MinFreq={cpu_min} MaxFreq=1479000 CurrentFreq=1479000 IdleStates: WFI=1 c7=1
cpu1: Online=1 Governor=schedutil MinFreq={cpu_min} MaxFreq=1479000 CurrentFreq=1479000 IdleStates: WFI=1 c7=1
cpu2: Online=0 Governor=schedutil MinFreq=102000 MaxFreq=1479000 CurrentFreq=102000 IdleStates: WFI=1 c7=1
GPU MinFreq={gpu_min} MaxFreq=921600000 CurrentFreq=921600000
EMC MinFreq=204000000 MaxFreq=1600000000 CurrentFreq=1600000000 FreqOverride=1
Fan: speed=255
NV Power Mode: MAXN"""


def test_nvpmodel_mode_is_recorded(tmp_path, monkeypatch):
    body = "cat <<'X'\n{}\nX".format(NVPMODEL_Q)
    monkeypatch.setenv("PATH", on_path(script(tmp_path / "bin", "nvpmodel", body)))
    assert board.nvpmodel() == {"available": True, "mode": "MAXN", "id": 0}


def test_nvpmodel_absent_or_failing(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    assert "not on PATH" in board.nvpmodel()["reason"]
    failing = "echo 'NVPM ERROR: failed to read PARAM'; exit 1"
    monkeypatch.setenv("PATH", on_path(script(tmp_path / "bin", "nvpmodel", failing)))
    info = board.nvpmodel()
    assert not info["available"] and "NVPM ERROR" in info["reason"] and "exit 1" in info["reason"]


def test_jetson_clocks_active_when_clocks_are_pinned():
    pinned = board.parse_jetson_clocks(CLOCKS_SHOW.format(cpu_min=1479000, gpu_min=921600000))
    assert pinned["active"] is True and pinned["engines"]["GPU"]["max"] == 921600000
    assert pinned["engines"]["cpu2"]["online"] is False  # an offline CPU does not count
    scaling = board.parse_jetson_clocks(CLOCKS_SHOW.format(cpu_min=102000, gpu_min=76800000))
    assert scaling["active"] is False


def test_jetson_clocks_through_the_command(tmp_path, monkeypatch):
    text = CLOCKS_SHOW.format(cpu_min=102000, gpu_min=76800000)
    monkeypatch.setenv("PATH", on_path(script(tmp_path / "bin", "jetson_clocks", "cat <<'X'\n{}\nX".format(text))))
    info = board.jetson_clocks()
    assert info["available"] and info["active"] is False
    monkeypatch.setenv("PATH", on_path(script(tmp_path / "bin2", "jetson_clocks", "echo 'Please run as root'; exit 1")))
    info = board.jetson_clocks()
    assert not info["available"] and "Please run as root" in info["reason"] and "sudo" in info["reason"]


def test_machine_reads_the_board_model_and_l4t_release(tmp_path):
    write(tmp_path, "/proc/device-tree/model", "NVIDIA Jetson Nano Developer Kit\x00")
    write(tmp_path, "/etc/nv_tegra_release", "# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, "
                                             "EABI: aarch64, DATE: Sat Feb 19 17:05:08 UTC 2022")
    write(tmp_path, "/proc/cpuinfo", "processor\t: 0\nmodel name\t: ARMv8 Processor rev 1 (v8l)\n")
    info = board.machine(SysRoot(str(tmp_path)))
    assert info["board"] == "NVIDIA Jetson Nano Developer Kit"
    assert info["l4t_release"] == "R32.7.1"
    assert info["cpu_model"] == "ARMv8 Processor rev 1 (v8l)"
    assert str(tmp_path) in info["sysfs_root"]
