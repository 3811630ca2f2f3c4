"""tegrastats lines of both generations, and the tegrastats meter as a real subprocess of a stand-in script."""
import os

import pytest

from edge.profiling.power import PowerUnavailable, total_of
from edge.profiling.tegrastats import TegrastatsMeter, parse_power_mw
from fake_boards import script

# Jetson Nano, JetPack 4, as a user: rbonghi/jetson_stats tests/tegrastats ("Nano"), the
# $RANDOM CPU/GPU loads of that emulator filled in with numbers.
NANO = ("RAM 330/3964MB (lfb 758x4MB) SWAP 0/1982MB (cached 0MB) CPU [12%@102,5%@102,9%@102,3%@102] "
        "EMC_FREQ 0% GR3D_FREQ 0% PLL@20.5C CPU@23C PMIC@100C GPU@22.5C AO@27C thermal@22.5C "
        "POM_5V_IN 933/933 POM_5V_GPU 0/0 POM_5V_CPU 84/84")
# Jetson Nano, JetPack 4, with sudo (more fields: IRAM, clocks, APE): same source, "Nano (SUDO)".
NANO_SUDO = ("RAM 331/3964MB (lfb 758x4MB) SWAP 0/1982MB (cached 0MB) IRAM 0/252kB(lfb 252kB) "
             "CPU [31%@1479,28%@1479,22%@1479,25%@1479] EMC_FREQ 3%@204 GR3D_FREQ 41%@76 APE 25 PLL@20.5C "
             "CPU@23.5C PMIC@100C GPU@22.5C AO@27.5C thermal@23C POM_5V_IN 3421/2718 POM_5V_GPU 1196/640 "
             "POM_5V_CPU 906/105")
# Jetson Orin Nano, JetPack 6 (shared/docs/DESIGN.md and the brief give the power fields; the
# rest of the line as an Orin Nano prints it, from a published Orin Nano setup guide's example).
ORIN_NANO = ("RAM 2840/7620MB (lfb 512x4MB) SWAP 0/4096MB (cached 0MB) CPU [25%@1420,off,off,20%@1420,"
             "22%@1420,18%@1420] GR3D_FREQ 76% PVA0_FREQ 115 VIC_FREQ 115 APE 174 MTS fg 0% bg 0% AO@42.5C "
             "GPU@40C PMIC@50C AUX@41C CPU@42.5C thermal@41.7C VDD_IN 5704mW/5704mW "
             "VDD_CPU_GPU_CV 1234mW/1234mW VDD_SOC 1500mW/1500mW")
# Some JetPack 5/6 releases print one value per rail (same Orin Nano setup guide).
ORIN_NANO_SINGLE = ("RAM 2840/7620MB (lfb 512x4MB) SWAP 0/4096MB CPU [25%@1420,off,off,20%@1420,22%@1420,18%@1420] "
                    "GR3D_FREQ 76% PVA0_FREQ 115 VIC_FREQ 115 APE 174 MTS fg 0% bg 0% AO@42.5C GPU@40C PMIC@50C "
                    "AUX@41C CPU@42.5C thermal@41.7C VDD_IN 5765mW VDD_CPU_GPU_CV 1548mW VDD_SOC 1497mW")
# Jetson AGX Orin, JetPack 5, with sudo: jetson_stats tests/tegrastats ("Orin (SUDO)"); NC channels.
AGX_ORIN = ("01-03-2023 16:07:54 RAM 2257/30536MB (lfb 5392x4MB) SWAP 0/15268MB (cached 0MB) CPU [3%@729,"
            "1%@729,0%@729,2%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729,0%@729] EMC_FREQ 0%@204 "
            "GR3D_FREQ 0%@0 GR3D2_FREQ 0%@0 NVJPG1 729 VIC_FREQ 115 APE 233 CV0@-256C CPU@41.437C Tboard@29C "
            "SOC2@39.062C Tdiode@30.75C SOC0@39.031C CV1@-256C GPU@-256C tj@41.656C SOC1@38.937C CV2@-256C "
            "VDD_GPU_SOC 2390mW/2390mW VDD_CPU_CV 796mW/796mW VIN_SYS_5V0 3522mW/3522mW NC 0mW/0mW "
            "VDDQ_VDD2_1V8AO 301mW/301mW NC 0mW/0mW")
# Jetson AGX Orin, JetPack 7.2: a real line kept in jetson_stats jtop/tests/test_06_tegra_parse.py
# (three values per rail, temperatures with two values, GR3D with a per-GPC array).
AGX_ORIN_JP7 = ("07-25-2026 09:08:28 RAM 20642/62817MB (lfb 1x2MB) CPU [23%@2201,10%@2201,4%@2201,14%@2201,"
                "30%@2201,18%@2201,10%@2201,10%@2201,33%@2201,7%@2201,5%@2201,27%@2201] EMC_FREQ 3%@3199 "
                "GR3D_FREQ 12%@[1300,1300] NVENC0 off NVDEC0 off NVJPG0 off NVJPG1 off VIC off OFA off "
                "NVDLA0 off NVDLA1 off PVA0_FREQ off APE 174 cpu@52.968C/52.968C soc2@48.406C/48.406C "
                "soc0@49.531C/49.531C gpu@47.625C/47.625C VDD_GPU_SOC 5139mW/5139mW/5139mW "
                "VDD_CPU_CV 3268mW/3268mW/3268mW VIN_SYS_5V0 5500mW/5500mW/5500mW")


@pytest.mark.parametrize("line, expected", [
    (NANO, [("POM_5V_IN", 933.0), ("POM_5V_GPU", 0.0), ("POM_5V_CPU", 84.0)]),
    (NANO_SUDO, [("POM_5V_IN", 3421.0), ("POM_5V_GPU", 1196.0), ("POM_5V_CPU", 906.0)]),
    (ORIN_NANO, [("VDD_IN", 5704.0), ("VDD_CPU_GPU_CV", 1234.0), ("VDD_SOC", 1500.0)]),
    (ORIN_NANO_SINGLE, [("VDD_IN", 5765.0), ("VDD_CPU_GPU_CV", 1548.0), ("VDD_SOC", 1497.0)]),
    (AGX_ORIN, [("VDD_GPU_SOC", 2390.0), ("VDD_CPU_CV", 796.0), ("VIN_SYS_5V0", 3522.0),
                ("VDDQ_VDD2_1V8AO", 301.0)]),
    (AGX_ORIN_JP7, [("VDD_GPU_SOC", 5139.0), ("VDD_CPU_CV", 3268.0), ("VIN_SYS_5V0", 5500.0)]),
])
def test_power_fields_and_nothing_else(line, expected):
    """RAM/SWAP/IRAM (x/yMB), CPU [..], GR3D_FREQ, APE, temperatures and NC channels are not rails;
    the first number of a rail is its instantaneous power, in the order printed."""
    assert list(parse_power_mw(line).items()) == expected


def test_totals_of_both_generations():
    assert total_of(parse_power_mw(NANO_SUDO))[0] == 3421.0  # POM_5V_IN alone, never + GPU + CPU
    assert total_of(parse_power_mw(ORIN_NANO))[0] == 5704.0
    assert total_of(parse_power_mw(AGX_ORIN))[0] == 2390.0 + 796.0 + 3522.0 + 301.0  # no input rail


def test_a_line_without_power_fields():
    assert parse_power_mw("RAM 4722/7844MB (lfb 1x512kB) EMC_FREQ 2%@1866 GR3D_FREQ 10%@1300 APE 150") == {}


def tegrastats_bin(tmp_path, line, log_args=True):
    """A stand-in `tegrastats` that prints a recorded line every --interval ms, as the real one does."""
    body = ('[ "$1" = "--interval" ] || exit 3\n'
            + ('echo "$@" > "{}"\n'.format(tmp_path / "args") if log_args else "")
            + 'while true; do echo "{}"; sleep 0.05; done'.format(line))
    return script(tmp_path / "bin", "tegrastats", body)


def test_meter_runs_tegrastats_with_an_interval_and_reads_its_lines(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", tegrastats_bin(tmp_path, NANO) + os.pathsep + os.environ["PATH"])
    meter = TegrastatsMeter(interval_s=0.05)
    try:
        first = meter.read()
        assert first.total_mw == 933.0 and list(first.rails_mw) == ["POM_5V_IN", "POM_5V_GPU", "POM_5V_CPU"]
        assert first.t is not None
        assert (tmp_path / "args").read_text().split() == ["--interval", "100"]  # 100 ms at least
        assert "POM_5V_IN" in meter.describe()
    finally:
        meter.close()
    assert meter.proc.poll() is not None  # the subprocess is gone


def test_tegrastats_without_power_fields_is_not_available(tmp_path, monkeypatch):
    bin_dir = script(tmp_path / "bin", "tegrastats", 'echo "RAM 330/3964MB (lfb 758x4MB) CPU [1%@102]"')
    monkeypatch.setenv("PATH", bin_dir + os.pathsep + os.environ["PATH"])
    with pytest.raises(PowerUnavailable, match="no power rails.*RAM 330/3964MB"):
        TegrastatsMeter(interval_s=0.1, wait_s=0.5)


def test_no_tegrastats_on_path(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(PowerUnavailable, match="not found on PATH"):
        TegrastatsMeter()
