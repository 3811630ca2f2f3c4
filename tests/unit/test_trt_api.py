"""edge/backends/trt_api.py and trt_precision.py against fakes of TensorRT 8.2, 8.6, 10 and 11.

Which calls are made for which version: network creation flags, the
workspace API, precision flags vs strongly typed builds, the I/O adapter and
its execute call. No GPU or TensorRT is needed: see tests/unit/trtfakes.
"""
import pytest

from edge.backends import BackendError
from edge.backends.trt_api import TrtApi, fast_fp16, fast_int8, parse_version
from edge.backends.trt_precision import plan_build, variant_agreement
from trtfakes import make_tensorrt

NANO, ORIN, PASCAL_1080 = (5, 3), (8, 7), (6, 1)


@pytest.mark.parametrize("text, expected", [
    ("8.2.1.8", (8, 2, 1, 8)), ("10.0.1", (10, 0, 1)), ("10.12.0", (10, 12, 0)), ("11.0.0", (11, 0, 0)),
    ("8.6.1.post1", (8, 6, 1)), ("10.0.0b6", (10, 0, 0)), (" 8.5.2.2\n", (8, 5, 2, 2)),
])
def test_versions_parse_to_integers(text, expected):
    assert parse_version(text) == expected


def test_versions_compare_as_numbers_not_strings():
    assert parse_version("10.0.1") > parse_version("8.6.1")  # as strings, "10.0.1" < "8.6.1"
    assert parse_version("10.12.0") > parse_version("10.2.0")
    with pytest.raises(ValueError):
        parse_version("unknown")


def api(version, **kwargs):
    return TrtApi(make_tensorrt(version, **kwargs))


@pytest.mark.parametrize("version, flags", [
    ("8.2.1.8", 1 << 0),   # 1 << EXPLICIT_BATCH: implicit batch is 8.x's default
    ("8.6.1", 1 << 0),
    ("10.0.1", 0),         # create_network(0): explicit batch only
    ("10.12.0", 0),
    ("11.0.0", 1 << 0),    # 1 << STRONGLY_TYPED (value 0 in 11; ignored, always strongly typed)
])
def test_network_creation_flags(version, flags):
    a = api(version)
    a.create_network(a.create_builder())
    assert a.trt.fake.called("create_network") == [flags]


@pytest.mark.parametrize("version, call, default_bytes", [
    ("8.2.1.8", "max_workspace_size", 256 << 20),  # < 8.4: default 0 is unusable, so one is set
    ("8.6.1", "set_memory_pool_limit", None),      # TensorRT's default (device memory) is kept
    ("10.0.1", "set_memory_pool_limit", None),
    ("11.0.0", "set_memory_pool_limit", None),
])
def test_workspace_api_per_version(version, call, default_bytes):
    a = api(version)
    config = a.create_builder().create_builder_config()
    a.set_workspace(config, 512 << 20)
    recorded = a.trt.fake.called(call)
    assert recorded and (recorded[0] == 512 << 20 or recorded[0] == ("WORKSPACE", 512 << 20))
    assert a.default_workspace_bytes(NANO) == default_bytes
    if call == "max_workspace_size":
        assert a.default_workspace_bytes(ORIN) == 1 << 30


def test_precision_flags_exist_up_to_10_and_not_in_11():
    for version in ("8.2.1.8", "10.12.0"):
        a = api(version)
        assert a.weakly_typed and not a.strongly_typed
        config = a.create_builder().create_builder_config()
        a.set_precision_flags(config, ("INT8", "FP16"))
        assert a.trt.fake.called("set_flag") == ["INT8", "FP16"]
    a = api("11.0.0")
    assert a.strongly_typed and not a.implicit_int8
    with pytest.raises(BackendError, match="strongly typed"):
        a.set_precision_flags(a.create_builder().create_builder_config(), ("FP16",))
    a.set_precision_flags(a.create_builder().create_builder_config(), ())  # nothing asked: nothing done


def test_implicit_int8_only_before_10():
    assert api("8.2.1.8").implicit_int8 and api("8.6.1").implicit_int8
    assert not api("10.0.1").implicit_int8  # the calibrator class exists (deprecated in 10.1): Q/DQ is used
    assert not api("11.0.0").implicit_int8
    with pytest.raises(BackendError, match="Q/DQ"):
        a = api("10.0.1")
        a.attach_calibrator(a.create_builder().create_builder_config(), object())


def test_progress_monitor_where_the_module_has_one():
    assert [api(v).has_progress_monitor for v in ("8.2.1.8", "8.6.1", "10.0.1", "11.0.0")] == [
        False, False, True, True]


def test_gpu_speed_from_the_builder_where_tensorrt_answers_else_the_table():
    a = api("8.2.1.8", platform_fast=(True, False))
    assert a.gpu_fast(ORIN, a.create_builder()) == (True, False)  # the builder's word wins
    a11 = api("11.0.0")
    assert not hasattr(a11.create_builder(), "platform_has_fast_fp16")
    assert a11.gpu_fast(NANO, a11.create_builder()) == (True, False)
    assert (fast_fp16(NANO), fast_int8(NANO)) == (True, False)
    assert (fast_fp16(ORIN), fast_int8(ORIN)) == (True, True)
    assert (fast_fp16(PASCAL_1080), fast_int8(PASCAL_1080)) == (False, True)
    assert (fast_fp16((6, 2)), fast_int8((6, 2))) == (True, False)  # Jetson TX2


def test_timing_cache_from_another_version_is_refused_and_replaced():
    a = api("10.0.1")
    config = a.create_builder().create_builder_config()
    assert a.use_timing_cache(config, b"") is True
    assert a.use_timing_cache(config, b"fake-timing 8.2.1.8:7") is False
    assert a.trt.fake.called("set_timing_cache") == [True, False, True]  # refused, then a new one
    assert a.timing_cache_bytes(config) == b"fake-timing 10.0.1:0"


def test_parse_failure_names_the_model_and_tensorrts_errors():
    a = api("8.2.1.8")
    network = a.create_builder().create_network(0)  # implicit batch: the 8.x ONNX parser refuses it
    with pytest.raises(BackendError) as info:
        a.parse_onnx(network, b"onnx bytes", "/bundles/x/model.onnx")
    assert "/bundles/x/model.onnx: TensorRT 8.2.1.8 cannot parse" in str(info.value)
    assert "explicit batch" in str(info.value)


# -- the build plan ------------------------------------------------------------------------------------
def plan(version, requested, cc, variants=("fp32",), **kw):
    return plan_build(api(version), requested, cc, variants, **kw)


def test_int8_on_the_nano_builds_fp16_and_says_so_unless_forced():
    p = plan("8.2.1.8", "int8", NANO, ("fp32", "int8"))
    assert (p.precision, p.variant, p.flags) == ("fp16", "fp32", ("FP16",))
    assert "no fast INT8" in p.notes[0] and "--force-int8" in p.notes[0]
    forced = plan("8.2.1.8", "int8", NANO, ("fp32", "int8"), force_int8=True)
    assert (forced.precision, forced.variant, forced.flags) == ("int8", "int8", ("INT8", "FP16"))


@pytest.mark.parametrize("version, flags", [("8.2.1.8", ("INT8", "FP16")), ("10.12.0", ("INT8", "FP16")),
                                            ("11.0.0", ())])
def test_int8_uses_the_qdq_variant_with_flags_only_where_weakly_typed(version, flags):
    p = plan(version, "int8", ORIN, ("fp32", "int8"))
    assert (p.precision, p.variant, p.flags, p.calibrate) == ("int8", "int8", flags, False)


def test_implicit_int8_calibrates_before_10_when_images_or_a_cache_exist():
    p = plan("8.2.1.8", "int8", ORIN, calibration_ready=True)
    assert (p.precision, p.variant, p.flags, p.calibrate) == ("int8", "fp32", ("INT8", "FP16"), True)
    with pytest.raises(BackendError, match="--calibration DIR"):
        plan("8.2.1.8", "int8", ORIN)
    with pytest.raises(BackendError) as info:
        plan("10.0.1", "int8", ORIN, calibration_ready=True)  # no implicit INT8 from 10 on
    assert "Q/DQ" in str(info.value) and "--calibration" not in str(info.value)


def test_fp16_is_a_flag_up_to_10_and_a_typed_variant_in_11():
    assert plan("10.0.1", "fp16", ORIN).flags == ("FP16",)
    p = plan("11.0.0", "fp16", ORIN, ("fp32", "fp16"))
    assert (p.precision, p.variant, p.flags) == ("fp16", "fp16", ())
    with pytest.raises(BackendError, match="FP16-typed ONNX"):
        plan("11.0.0", "fp16", ORIN)


@pytest.mark.parametrize("version, cc, variants, expected", [
    ("8.2.1.8", NANO, ("fp32", "int8"), ("fp16", "fp32")),      # Nano: FP16 is the ceiling
    ("8.6.1", ORIN, ("fp32", "int8"), ("int8", "int8")),        # Orin: the Q/DQ variant
    ("8.6.1", ORIN, ("fp32",), ("fp16", "fp32")),               # no variant: FP16, no calibration guess
    ("11.0.0", ORIN, ("fp32",), ("fp32", "fp32")),              # 11 without an FP16 variant: fp32
    ("11.0.0", ORIN, ("fp32", "fp16"), ("fp16", "fp16")),
    ("10.0.1", PASCAL_1080, ("fp32",), ("fp32", "fp32")),       # no fast FP16, no INT8 variant
])
def test_best_is_the_fastest_that_keeps_accuracy(version, cc, variants, expected):
    p = plan(version, "best", cc, variants)
    assert (p.precision, p.variant) == expected
    assert p.notes and p.notes[-1].startswith("best:")


def test_fp32_builds_the_fp32_model_without_flags_everywhere():
    for version in ("8.2.1.8", "10.0.1", "11.0.0"):
        p = plan(version, "fp32", NANO)
        assert (p.precision, p.variant, p.flags, p.calibrate) == ("fp32", "fp32", (), False)
    with pytest.raises(BackendError, match="unknown precision"):
        plan("10.0.1", "int4", NANO)


def test_best_leaves_out_an_int8_variant_that_does_not_keep_accuracy():
    p = plan("8.6.1", "best", ORIN, ("fp32", "int8"), agreement={"int8": 0.94})
    assert (p.precision, p.variant) == ("fp16", "fp32")
    assert "94.0%" in p.notes[0] and "--precision int8" in p.notes[0]
    kept = plan("8.6.1", "best", ORIN, ("fp32", "int8"), agreement={"int8": 0.997})
    assert (kept.precision, kept.variant) == ("int8", "int8")
    asked = plan("8.6.1", "int8", ORIN, ("fp32", "int8"), agreement={"int8": 0.94})
    assert (asked.precision, asked.variant) == ("int8", "int8")  # asked for by name: built


def test_variant_agreement_reads_the_bundles_records():
    variants = {"int8": {"agreement": {"top1_agreement": 0.9970501474926253}}, "fp16": {"file": "x"}}
    assert variant_agreement(variants) == {"int8": 0.9970501474926253}
    assert variant_agreement(None) == {}
