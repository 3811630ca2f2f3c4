"""Energy integration over known power series, the idle baseline, and the sampler thread on a fake Nano tree."""
import time

import pytest

from edge.profiling.power import NanoIio
from edge.profiling.sampler import Sampler, energy_mj, energy_summary, mean_power_mw, power_at, samples_in
from edge.profiling.sysfs import SysRoot
from fake_boards import nano_input_power_file, nano_thermal, nano_tree, clock_caps
from edge.profiling.thermal import ClockCaps, ThermalZones

# 1 W, 2 W, 2 W, 1 W at t = 0, 1, 2, 3 s
RAMP = [(0.0, 1000.0), (1.0, 2000.0), (2.0, 2000.0), (3.0, 1000.0)]


def test_trapezoid_over_the_whole_series():
    # 1.5 J + 2 J + 1.5 J
    assert energy_mj(RAMP, 0.0, 3.0) == pytest.approx(5000.0)


def test_window_edges_are_interpolated_between_samples():
    # p(0.5) = 1500 mW, p(2.5) = 1500 mW: 0.5 s x 1750 + 1 s x 2000 + 0.5 s x 1750 = 3750 mJ
    assert power_at(RAMP, 0.5) == pytest.approx(1500.0)
    assert energy_mj(RAMP, 0.5, 2.5) == pytest.approx(3750.0)
    assert mean_power_mw(RAMP, 0.5, 2.5) == pytest.approx(1875.0)


def test_power_is_held_flat_outside_the_samples():
    # 1 s before the first sample at 1000 mW, then the 5000 mJ, then 2 s at 1000 mW
    assert energy_mj(RAMP, -1.0, 5.0) == pytest.approx(1000.0 + 5000.0 + 2000.0)


def test_a_window_inside_one_interval():
    assert energy_mj(RAMP, 0.25, 0.75) == pytest.approx(0.5 * 1500.0)


def test_constant_power_gives_power_times_time():
    flat = [(t * 0.05, 4200.0) for t in range(201)]  # 10 s at 4.2 W
    assert energy_mj(flat, 1.0, 9.0) == pytest.approx(4200.0 * 8.0)


def test_empty_or_backwards_windows():
    assert energy_mj([], 0.0, 1.0) == 0.0
    assert energy_mj(RAMP, 2.0, 1.0) == 0.0
    assert samples_in(RAMP, 0.5, 2.0) == 2


def test_energy_per_image_gross_and_net_of_the_idle_baseline():
    # idle: 2 s at 1000 mW; run: 4 s at 3000 mW over 40 images
    series = [(t / 10.0, 1000.0) for t in range(0, 21)] + [(2.0 + t / 10.0, 3000.0) for t in range(1, 41)]
    out = energy_summary(series, window=(2.1, 6.0), images=39, idle=(0.0, 2.0))
    assert out["available"] and out["images"] == 39
    assert out["energy_mj"] == pytest.approx(3000.0 * 3.9)
    assert out["energy_per_image_mj"] == pytest.approx(3000.0 * 3.9 / 39)
    assert out["idle_power_mw"] == pytest.approx(1000.0)
    assert out["net_energy_per_image_mj"] == pytest.approx((3000.0 - 1000.0) * 3.9 / 39)


def test_without_a_baseline_there_is_no_net_figure():
    out = energy_summary(RAMP, window=(0.0, 3.0), images=10)
    assert out["energy_per_image_mj"] == pytest.approx(500.0)
    assert out["net_energy_per_image_mj"] is None and "idle" in out["idle_reason"]


def test_too_few_samples_in_the_window_is_said():
    out = energy_summary(RAMP, window=(0.1, 0.2), images=3)
    assert not out["available"] and "0 power sample(s)" in out["reason"]


def test_sampler_thread_reads_the_nano_meter_with_monotonic_timestamps(tmp_path):
    nano_tree(tmp_path)
    nano_thermal(tmp_path)
    clock_caps(tmp_path)
    root = SysRoot(str(tmp_path))
    sampler = Sampler(NanoIio(root), ThermalZones(root), ClockCaps(root), interval_s=0.01,
                      thermal_interval_s=0.05).start()
    time.sleep(0.15)
    with open(nano_input_power_file(tmp_path), "w") as f:
        f.write("5000\n")
    time.sleep(0.15)
    sampler.stop()
    times = [t for t, _, _ in sampler.power]
    assert len(times) >= 5 and times == sorted(times) and len(set(times)) == len(times)
    totals = [mw for _, mw, _ in sampler.power]
    assert totals[0] == 2633.0 and totals[-1] == 5000.0
    assert set(sampler.power[0][2]) == {"POM_5V_IN", "POM_5V_GPU", "POM_5V_CPU"}
    assert len(sampler.thermal) >= 2 and sampler.thermal[0][1]["CPU-therm"] == 41.5
    assert sampler.clocks[0][1] == {"cpu policy0": 1479000000, "devfreq 57000000.gpu": 921600000}
    assert sampler.read_errors == 0


def test_a_failing_read_is_counted_not_fatal_and_never_changes_the_total_rule(tmp_path):
    nano_tree(tmp_path)
    meter = NanoIio(SysRoot(str(tmp_path)))
    sampler = Sampler(meter, interval_s=0.01)
    import os
    for kind in ("in_power", "in_voltage", "in_current"):
        os.remove(os.path.join(str(tmp_path), "sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0",
                               "{}0_input".format(kind)))
    sampler.sample_power()  # POM_5V_IN unreadable: no total (never GPU + CPU instead), one error counted
    assert sampler.read_errors == 1 and sampler.power == []
    with open(nano_input_power_file(tmp_path), "w") as f:
        f.write("1234\n")
    sampler.sample_power()
    assert sampler.read_errors == 1 and sampler.power[-1][1] == 1234.0
