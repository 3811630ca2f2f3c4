"""edge/profiling/profiler.py: percentile math, fixed stage names, frame accounting (fake clock, no timing asserts)."""
import math

import pytest

from edge.profiling.profiler import STAGES, Profiler, StageTimes, percentile


class FakeClock(object):
    """Returns the next value of ``times`` (seconds) on each call."""

    def __init__(self, times):
        self.times = list(times)

    def __call__(self):
        return self.times.pop(0)


@pytest.mark.parametrize("values, q, expected", [
    ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 50, 5.5),
    ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 90, 9.1),
    ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 99, 9.91),
    ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 0, 1.0),
    ([1, 2, 3, 4, 5, 6, 7, 8, 9, 10], 100, 10.0),
    ([10, 1, 7, 3], 50, 5.0),        # unsorted input: sorted first -> 1 3 7 10
    ([10, 1, 7, 3], 25, 2.5),
    ([4.0], 99, 4.0),
    ([2, 2, 2], 90, 2.0),
])
def test_percentile_is_linear_interpolation(values, q, expected):
    assert percentile(values, q) == pytest.approx(expected)


def test_percentile_of_nothing_is_nan_and_input_is_not_modified():
    assert math.isnan(percentile([], 50))
    values = [3, 1, 2]
    percentile(values, 50)
    assert values == [3, 1, 2]


def test_only_known_stages_can_be_timed():
    times = StageTimes()
    for name in STAGES:
        times.stage(name)
    with pytest.raises(ValueError, match="unknown stage 'inference'"):
        times.stage("inference")
    with pytest.raises(ValueError, match="unknown stage 'preprocess'"):
        Profiler().add_frame({"preprocess": 1.0})


def test_stage_times_add_up_per_frame_with_a_fake_clock():
    times = StageTimes(clock=FakeClock([0.0, 0.010, 0.020, 0.025, 1.0, 1.5]))
    with times.stage("decode"):
        pass
    with times.stage("decode"):  # a stage timed twice for one frame adds up
        pass
    assert times.times_ms == pytest.approx({"decode": 15.0})
    with pytest.raises(KeyError):
        with times.stage("network"):
            raise KeyError("boom")
    assert times.times_ms["network"] == pytest.approx(500.0)  # a stage that raises is still recorded


def test_frames_summary_and_throughput_with_a_fake_clock():
    # start at 0.0; frames arrive at 0.1 and 0.2 s
    prof = Profiler(clock=FakeClock([0.0, 0.1, 0.2]))
    prof.start()
    prof.add_frame({"pre-process": 10.0, "network": 30.0, "total": 50.0})
    prof.add_frame({"pre-process": 20.0, "network": 10.0, "total": 100.0})
    assert prof.frames == 2
    assert prof.samples_ms["pre-process"] == pytest.approx([10.0, 20.0])
    assert prof.samples_ms["total"] == pytest.approx([50.0, 100.0])
    assert prof.images_per_s() == pytest.approx(2 / 0.2)
    summary = prof.summary()
    assert list(summary) == ["pre-process", "network", "total"]  # only stages that were timed, in order
    assert summary["network"] == pytest.approx({"n": 2, "mean_ms": 20.0, "p50_ms": 20.0, "p90_ms": 28.0,
                                                "p99_ms": 29.8})
    report = prof.report().splitlines()
    assert report[0].split()[0] == "stage"
    assert [line.split()[0] for line in report[1:]] == ["pre-process", "network", "total"]


def test_warm_up_frames_are_left_out_and_move_the_window():
    # start 0.0; two warm-up frames at 5.0 and 6.0 (slow first runs), then frames at 6.5 and 7.0
    prof = Profiler(clock=FakeClock([0.0, 5.0, 6.0, 6.5, 7.0]), warmup=2)
    prof.start()
    for ms in (4000.0, 900.0, 10.0, 12.0):
        prof.add_frame({"network": ms})
    assert prof.frames == 2
    assert prof.samples_ms["network"] == pytest.approx([10.0, 12.0])
    assert prof.images_per_s() == pytest.approx(2 / 1.0)  # window opens at the last warm-up frame


def test_no_frames_means_zero_images_per_second():
    assert Profiler().images_per_s() == 0.0
    assert Profiler().summary() == {}
    prof = Profiler(warmup=3)
    prof.add_frame({"network": 1.0})
    assert prof.frames == 0 and prof.images_per_s() == 0.0


def test_a_bounded_profiler_keeps_a_sample_but_exact_counts_and_means():
    """A run of days must not keep every frame's times: past max_samples a uniform sample is kept."""
    prof = Profiler(clock=FakeClock([float(i) for i in range(10001)]), max_samples=100)
    prof.start()
    for i in range(10000):
        prof.add_frame({"network": float(i), "total": 5.0})
    assert len(prof.samples_ms["network"]) == len(prof.samples_ms["total"]) == 100
    summary = prof.summary()
    assert summary["network"]["n"] == 10000 and summary["network"]["mean_ms"] == pytest.approx(4999.5)
    assert summary["total"] == pytest.approx({"n": 10000, "mean_ms": 5.0, "p50_ms": 5.0, "p90_ms": 5.0,
                                              "p99_ms": 5.0})
    # a sample of all frames, not the first (or last) hundred
    assert 3500.0 < summary["network"]["p50_ms"] < 6500.0
    assert summary["network"]["p90_ms"] > 7500.0 and min(prof.samples_ms["network"]) < 1000.0
