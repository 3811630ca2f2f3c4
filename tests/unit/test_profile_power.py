"""Power meters on fake sysfs trees that mirror the Nano (IIO) and Orin (hwmon) INA3221 layouts."""
import pytest

from edge.profiling.power import (NanoIio, OrinHwmon, PowerUnavailable, is_not_connected, open_power_meter,
                                  total_of)
from edge.profiling.sysfs import SysRoot, natural_key
from fake_boards import (AGX_DEVICES, NANO_RAILS, ORIN_RAILS, agx_orin_tree, nano_input_power_file, nano_tree,
                         orin_nano_tree, write)


def test_nano_rails_come_from_rail_name_files_and_in_power_mw(tmp_path):
    nano_tree(tmp_path)
    meter = NanoIio(SysRoot(str(tmp_path)))
    reading = meter.read()
    assert list(reading.rails_mw) == ["POM_5V_IN", "POM_5V_GPU", "POM_5V_CPU"]
    assert [reading.rails_mw[r] for r, _, _, _ in NANO_RAILS] == [2633.0, 79.0, 473.0]


def test_nano_total_is_pom_5v_in_never_summed_with_gpu_and_cpu(tmp_path):
    nano_tree(tmp_path)
    meter = NanoIio(SysRoot(str(tmp_path)))
    reading = meter.read()
    assert reading.total_mw == 2633.0  # not 2633 + 79 + 473
    assert reading.total_mw != sum(reading.rails_mw.values())
    assert "POM_5V_IN" in meter.total_rule and "POM_5V_IN" in meter.describe()


def test_nano_reads_the_file_each_time(tmp_path):
    nano_tree(tmp_path)
    meter = NanoIio(SysRoot(str(tmp_path)))
    with open(nano_input_power_file(tmp_path), "w") as f:
        f.write("4100\n")
    assert meter.read().total_mw == 4100.0


def test_nano_without_in_power_derives_it_from_voltage_and_current(tmp_path):
    device = nano_tree(tmp_path)
    import os
    os.remove(os.path.join(device, "in_power0_input"))
    reading = NanoIio(SysRoot(str(tmp_path))).read()
    assert reading.total_mw == pytest.approx(5064 * 520 / 1000.0)


def test_nano_iio_device_number_is_searched(tmp_path):
    nano_tree(tmp_path)
    import os
    src = tmp_path / "sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0"
    os.rename(str(src), str(src.parent / "iio:device1"))
    assert NanoIio(SysRoot(str(tmp_path))).read().total_mw == 2633.0


def test_orin_power_is_millivolts_times_milliamps(tmp_path):
    orin_nano_tree(tmp_path)
    meter = OrinHwmon(SysRoot(str(tmp_path)))
    reading = meter.read()
    assert list(reading.rails_mw) == [r for r, _, _ in ORIN_RAILS]
    for rail, mv, ma in ORIN_RAILS:
        assert reading.rails_mw[rail] == pytest.approx(mv * ma / 1000.0)
    assert reading.total_mw == pytest.approx(5072 * 1104 / 1000.0)  # VDD_IN alone
    assert "VDD_IN" in meter.total_rule


def test_orin_skips_the_sum_of_shunts_channel(tmp_path):
    orin_nano_tree(tmp_path)
    # give in7 a current file too, so only the channel/label rule can keep it out
    write(tmp_path, "/sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmon3/curr7_input", "999")
    meter = OrinHwmon(SysRoot(str(tmp_path)))
    assert "sum of shunt voltages" not in meter.read().rails_mw
    assert any("sum of shunt" in s for s in meter.skipped)


@pytest.mark.parametrize("hwmon", ["hwmon0", "hwmon1", "hwmon7", "hwmon12"])
def test_orin_hwmon_number_varies_and_is_found(tmp_path, hwmon):
    orin_nano_tree(tmp_path, "/sys/bus/i2c/drivers/ina3221/1-0040/hwmon/" + hwmon)
    assert OrinHwmon(SysRoot(str(tmp_path))).read().total_mw == pytest.approx(5072 * 1104 / 1000.0)


def test_agx_orin_skips_nc_channels_and_sums_the_rails_when_there_is_no_input_rail(tmp_path):
    agx_orin_tree(tmp_path)
    meter = OrinHwmon(SysRoot(str(tmp_path)))
    reading = meter.read()
    assert list(reading.rails_mw) == ["VDD_GPU_SOC", "VDD_CPU_CV", "VIN_SYS_5V0", "VDDQ_VDD2_1V8AO"]
    expected = sum(mv * ma / 1000.0 for _, rails in AGX_DEVICES for label, mv, ma in rails if label != "NC")
    assert reading.total_mw == pytest.approx(expected)
    assert "sum of the rails" in meter.total_rule
    assert sum("not connected" in s for s in meter.skipped) == 2


def test_not_connected_is_a_word_not_a_substring():
    assert is_not_connected("NC") and is_not_connected("nc") and is_not_connected("NC_2")
    assert not is_not_connected("VDD_SYNC") and not is_not_connected("VDD_IN")


def test_total_rule_prefers_an_input_rail_then_sums():
    assert total_of({"VDD_IN": 5000.0, "VDD_SOC": 1500.0})[0] == 5000.0
    assert total_of({"POM_5V_GPU": 10.0, "POM_5V_IN": 900.0, "POM_5V_CPU": 80.0})[0] == 900.0
    assert total_of({"A": 10.0, "B": 5.0})[0] == 15.0
    assert total_of({"A": None})[0] is None
    assert total_of({"POM_5V_GPU": 10.0, "POM_5V_CPU": 80.0}, ["POM_5V_IN", "POM_5V_GPU", "POM_5V_CPU"])[0] is None
    assert total_of({"A": 10.0}, ["A", "B"])[0] is None  # a missing rail never shrinks the sum


def test_auto_prefers_sysfs_and_reports_why_others_were_passed_over(tmp_path):
    orin_nano_tree(tmp_path)
    meter, tried = open_power_meter("auto", str(tmp_path))
    assert meter.name == "ina3221 (hwmon)"
    assert len(tried) == 1 and "ina3221x" in tried[0]  # the Nano layout was looked for first


def test_nothing_here_is_not_available_with_a_reason_per_meter(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    meter, tried = open_power_meter("auto", str(tmp_path))
    assert meter is None
    text = "\n".join(tried)
    assert "ina3221x" in text and "hwmon" in text and "tegrastats: not found on PATH" in text
    assert "NVML" in text


def test_none_and_unknown_kinds(tmp_path):
    meter, tried = open_power_meter("none", str(tmp_path))
    assert meter is None and "--power-meter none" in tried[0]
    with pytest.raises(ValueError):
        open_power_meter("multimeter", str(tmp_path))


def test_ina3221_kind_covers_both_layouts(tmp_path):
    nano_tree(tmp_path)
    meter, _ = open_power_meter("ina3221", str(tmp_path))
    assert meter.name == "ina3221 (iio)"


def test_rails_that_cannot_be_read_make_the_meter_unavailable(tmp_path):
    import os
    device = nano_tree(tmp_path)
    for n in range(3):
        for kind in ("in_power", "in_voltage", "in_current"):
            with open(os.path.join(device, "{}{}_input".format(kind, n)), "w") as f:
                f.write("not a number\n")
    with pytest.raises(PowerUnavailable, match="could not read them"):
        NanoIio(SysRoot(str(tmp_path))).check()


def test_sysfs_root_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RETINA_EDGE_SYSFS_ROOT", str(tmp_path))
    root = SysRoot()
    assert not root.is_real and str(tmp_path) in root.describe()
    assert root.path("/sys/class") == str(tmp_path / "sys" / "class")
    monkeypatch.delenv("RETINA_EDGE_SYSFS_ROOT")
    assert SysRoot().is_real


def test_natural_order():
    names = ["thermal_zone10", "thermal_zone9", "thermal_zone1"]
    assert sorted(names, key=natural_key) == ["thermal_zone1", "thermal_zone9", "thermal_zone10"]


def test_nvml_without_a_driver_is_not_available(monkeypatch):
    """With nvidia-ml-py installed and no NVIDIA driver (this machine), NVML says so in one line."""
    pynvml = pytest.importorskip("pynvml", reason="nvidia-ml-py is not installed in this interpreter")
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError:
        pass
    else:
        pynvml.nvmlShutdown()
        pytest.skip("an NVIDIA driver is present; see the gpu test")
    meter, tried = open_power_meter("nvml")
    assert meter is None and tried[0].startswith("NVML: ")


@pytest.mark.gpu
def test_nvml_reads_a_desktop_gpu():
    pynvml = pytest.importorskip("pynvml", reason="nvidia-ml-py is not installed (pip install nvidia-ml-py)")
    try:
        pynvml.nvmlInit()
        pynvml.nvmlShutdown()
    except pynvml.NVMLError as exc:
        pytest.skip("no NVIDIA GPU or driver here: {}".format(exc))
    meter, tried = open_power_meter("nvml")
    try:
        reading = meter.read()
        assert reading.total_mw > 0 and "gpu" in reading.temps_c
        assert "GPU board" in meter.scope
    finally:
        meter.close()
