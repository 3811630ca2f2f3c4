"""Fake Jetson sysfs trees and commands for the profiler tests (there is no Jetson here).

Each tree mirrors a real board's layout; where the layout comes from is said
beside it. The values are illustrative (chosen so that a wrong sum or a
skipped channel taken in would change the answer), not recordings.
"""
import os
import stat


def write(root, path, text):
    """Write ``text`` at the board path ``path`` under ``root``; returns the local file."""
    local = os.path.join(str(root), path.lstrip("/"))
    folder = os.path.dirname(local)
    if not os.path.isdir(folder):
        os.makedirs(folder)
    with open(local, "w") as f:
        f.write(text + "\n")
    return local


# Jetson Nano, L4T r32 (JetPack 4.6): the downstream ina3221x IIO driver.
# Layout: shared/docs/DESIGN.md; rbonghi/jetson_stats jtop/core/power.py (rail_name_N,
# in_power/in_current/in_voltage{N}_input, warn/crit_current_limit_N); jetson_stats
# issue #131 reads .../ina3221x/6-0040/iio:device0/in_voltage0_input on a Nano.
NANO_IIO = "/sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0"
NANO_RAILS = (("POM_5V_IN", 5064, 520, 2633), ("POM_5V_GPU", 4984, 16, 79), ("POM_5V_CPU", 4984, 95, 473))


def nano_tree(root, power_mw=None):
    write(root, NANO_IIO + "/name", "ina3221x")
    write(root, NANO_IIO + "/running_mode", "1")
    for n, (rail, mv, ma, mw) in enumerate(NANO_RAILS):
        write(root, "{}/rail_name_{}".format(NANO_IIO, n), rail)
        write(root, "{}/in_voltage{}_input".format(NANO_IIO, n), str(mv))
        write(root, "{}/in_current{}_input".format(NANO_IIO, n), str(ma))
        write(root, "{}/in_power{}_input".format(NANO_IIO, n), str(power_mw if power_mw and n == 0 else mw))
        write(root, "{}/warn_current_limit_{}".format(NANO_IIO, n), "32760 ma")
        write(root, "{}/crit_current_limit_{}".format(NANO_IIO, n), "32760 ma")
    return os.path.join(str(root), NANO_IIO.lstrip("/"))


def nano_input_power_file(root):
    return os.path.join(str(root), NANO_IIO.lstrip("/"), "in_power0_input")


# Jetson Orin Nano, JetPack 6: the upstream ina3221 hwmon driver; N in hwmonN varies by boot.
# Layout: Linux Documentation/hwmon/ina3221.rst (in[123]_label, in[123]_input mV,
# curr[123]_input mA, in[456]_input shunt uV, in7_input/in7_label sum of shunt
# voltages, curr4_input sum of currents); labels VDD_IN, VDD_CPU_GPU_CV, VDD_SOC
# from shared/docs/DESIGN.md and NVIDIA's Orin Nano power guide.
ORIN_HWMON = "/sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3"
ORIN_RAILS = (("VDD_IN", 5072, 1104), ("VDD_CPU_GPU_CV", 5064, 248), ("VDD_SOC", 5064, 296))


def orin_nano_tree(root, hwmon=ORIN_HWMON):
    write(root, hwmon + "/name", "ina3221")
    for n, (rail, mv, ma) in enumerate(ORIN_RAILS, start=1):
        write(root, "{}/in{}_label".format(hwmon, n), rail)
        write(root, "{}/in{}_input".format(hwmon, n), str(mv))
        write(root, "{}/curr{}_input".format(hwmon, n), str(ma))
        write(root, "{}/shunt{}_resistor".format(hwmon, n), "5000")
        write(root, "{}/in{}_input".format(hwmon, n + 3), str(ma * 5))  # shunt voltage, uV
    write(root, hwmon + "/in7_label", "sum of shunt voltages")
    write(root, hwmon + "/in7_input", "8240")
    write(root, hwmon + "/curr4_input", "1648")
    return os.path.join(str(root), hwmon.lstrip("/"))


# Jetson AGX Orin: two INA3221s, no input rail, unused channels labelled NC.
# Labels as in the AGX Orin tegrastats line kept by jetson_stats (tests/tegrastats:
# "VDD_GPU_SOC ... VDD_CPU_CV ... VIN_SYS_5V0 ... NC ... VDDQ_VDD2_1V8AO ... NC").
AGX_DEVICES = (
    ("/sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon1",
     (("VDD_GPU_SOC", 19840, 120), ("VDD_CPU_CV", 19840, 40), ("VIN_SYS_5V0", 4984, 710))),
    ("/sys/bus/i2c/drivers/ina3221/1-0041/hwmon/hwmon2",
     (("NC", 5000, 400), ("VDDQ_VDD2_1V8AO", 4992, 60), ("NC", 5000, 400))),
)


def agx_orin_tree(root):
    for hwmon, rails in AGX_DEVICES:
        write(root, hwmon + "/name", "ina3221")
        for n, (rail, mv, ma) in enumerate(rails, start=1):
            write(root, "{}/in{}_label".format(hwmon, n), rail)
            write(root, "{}/in{}_input".format(hwmon, n), str(mv))
            write(root, "{}/curr{}_input".format(hwmon, n), str(ma))
        write(root, hwmon + "/in7_label", "sum of shunt voltages")
        write(root, hwmon + "/in7_input", "4000")


# Thermal zones, Linux thermal sysfs (Documentation/driver-api/thermal/sysfs-api.rst):
# thermal_zoneN/{type,temp} in millidegrees, trip_point_K_{temp,type}. Zone names as on a
# Nano (AO-therm, CPU-therm, GPU-therm, PLL-therm, PMIC-Die fixed at 100 C, thermal-fan-est;
# jetson_stats jtop/core/temperature.py, tegrastats "PLL@20.5C CPU@23C PMIC@100C GPU@22.5C AO@27C").
# Trip temperatures are illustrative.
def nano_thermal(root, cpu_mc=41500, passive_mc=97000):
    zones = (("AO-therm", 38000, ()), ("CPU-therm", cpu_mc, (("passive", passive_mc), ("critical", 102000))),
             ("GPU-therm", 39500, (("passive", passive_mc), ("critical", 102000))), ("PLL-therm", 37000, ()),
             ("PMIC-Die", 100000, (("passive", 100000),)), ("thermal-fan-est", 39000, (("active", 51000),)))
    files = {}
    for n, (kind, mc, trips) in enumerate(zones):
        base = "/sys/devices/virtual/thermal/thermal_zone{}".format(n)
        write(root, base + "/type", kind)
        files[kind] = write(root, base + "/temp", str(mc))
        for k, (trip_type, trip_mc) in enumerate(trips):
            write(root, "{}/trip_point_{}_type".format(base, k), trip_type)
            write(root, "{}/trip_point_{}_temp".format(base, k), str(trip_mc))
    return files


# Clock caps: cpufreq policyN/scaling_max_freq (kHz), devfreq max_freq (Hz); the Nano's GPU
# is the devfreq device 57000000.gpu (jetson_stats issue #360; jtop/core/gpu.py).
def clock_caps(root, cpu_khz=1479000, gpu_hz=921600000):
    cpu = write(root, "/sys/devices/system/cpu/cpufreq/policy0/scaling_max_freq", str(cpu_khz))
    gpu = write(root, "/sys/class/devfreq/57000000.gpu/max_freq", str(gpu_hz))
    return cpu, gpu


def script(folder, name, body):
    """An executable shell script ``folder/name`` (a stand-in for an L4T command); returns its folder."""
    folder = str(folder)
    if not os.path.isdir(folder):
        os.makedirs(folder)
    path = os.path.join(folder, name)
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + body + "\n")
    os.chmod(path, os.stat(path).st_mode | stat.S_IEXEC | stat.S_IXGRP | stat.S_IXOTH)
    return folder
