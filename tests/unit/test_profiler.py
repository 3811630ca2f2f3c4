"""edge/profiler.py: percentile math, fixed stage names, frame accounting (fake clock, no timing asserts)."""
import math

import pytest

from edge.profiler import STAGES, Profiler, percentile


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
    prof = Profiler()
    for name in STAGES[:-1]:
        prof.stage(name)
    with pytest.raises(ValueError, match="unknown stage 'inference'"):
        prof.stage("inference")
    with pytest.raises(ValueError):
        prof.stage("total")  # total is measured per frame, not as a stage


def test_stages_frames_and_summary_with_a_fake_clock():
    # frame 1: begin 0.0, pre-process 0.0->0.010, network 0.010->0.040, end 0.050
    # frame 2: begin 0.100, pre-process 0.100->0.120, network 0.120->0.130, end 0.200
    clock = FakeClock([0.0, 0.0, 0.010, 0.010, 0.040, 0.050,
                       0.100, 0.100, 0.120, 0.120, 0.130, 0.200])
    prof = Profiler(clock=clock)
    for _ in range(2):
        prof.begin_frame()
        with prof.stage("pre-process"):
            pass
        with prof.stage("network"):
            pass
        prof.end_frame()
    assert prof.frames == 2
    assert prof.samples_ms["pre-process"] == pytest.approx([10.0, 20.0])
    assert prof.samples_ms["network"] == pytest.approx([30.0, 10.0])
    assert prof.samples_ms["total"] == pytest.approx([50.0, 100.0])
    assert prof.images_per_s() == pytest.approx(2 / 0.2)
    summary = prof.summary()
    assert list(summary) == ["pre-process", "network", "total"]  # only stages that were timed, in order
    assert summary["network"] == pytest.approx({"n": 2, "mean_ms": 20.0, "p50_ms": 20.0, "p90_ms": 28.0,
                                                "p99_ms": 29.8})
    report = prof.report().splitlines()
    assert report[0].split()[0] == "stage"
    assert [line.split()[0] for line in report[1:]] == ["pre-process", "network", "total"]


def test_a_stage_that_raises_is_still_recorded():
    prof = Profiler(clock=FakeClock([1.0, 1.5]))
    with pytest.raises(KeyError):
        with prof.stage("network"):
            raise KeyError("boom")
    assert prof.samples_ms["network"] == pytest.approx([500.0])


def test_no_frames_means_zero_images_per_second():
    assert Profiler().images_per_s() == 0.0
    assert Profiler().summary() == {}
