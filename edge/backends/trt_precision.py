"""Which engine to build for a requested precision: the ONNX variant, the builder flags, calibration.

It asks the TrtApi what this TensorRT offers (``weakly_typed``: precision
flags exist, up to 10; ``implicit_int8``: a calibrator can be used, before 10)
and the GPU what it runs fast (from its compute capability); it knows no
version numbers itself.

    fp32   model.onnx, no flags
    fp16   <= 10: model.onnx + FP16 flag; 11: the bundle's FP16-typed variant
    int8   the bundle's INT8 Q/DQ variant (+ INT8, and FP16 where fast, flags <= 10);
           else, before TensorRT 10, model.onnx calibrated by IInt8EntropyCalibrator2
           over --calibration DIR (or a calibration cache made earlier);
           on a GPU without fast INT8 (the Nano) FP16 instead, unless forced
    best   the fastest that keeps accuracy: INT8 Q/DQ where the GPU has fast INT8
           and the bundle has the variant (agreeing with fp32 on >= 99 % of val images,
           where recorded), else FP16 where the GPU has fast FP16, else fp32
"""
from edge.backends import BackendError
from edge.backends.trt_api import fast_fp16, fast_int8

QUANTIZE_HINT = "make one on the workstation with `retina-train quantize`"


class BuildPlan(object):
    """What to build: ``precision`` (built), ``variant`` (the bundle's ONNX), ``flags``, ``calibrate``, ``notes``."""

    def __init__(self, requested, precision, variant, flags=(), calibrate=False, notes=()):
        self.requested = requested
        self.precision = precision
        self.variant = variant
        self.flags = tuple(flags)
        self.calibrate = calibrate
        self.notes = list(notes)

    def __repr__(self):
        return "BuildPlan({}: {} from the {} model, flags={}, calibrate={})".format(
            self.requested, self.precision, self.variant, list(self.flags), self.calibrate)


def sm(cc):
    return "sm_{}{}".format(cc[0], cc[1])


# `best` takes the bundle's INT8 variant only where its recorded top-1 agreement with fp32 (on the val split,
# by `retina-train quantize`) reaches the target the variants are made to: below it INT8 is not "keeping accuracy".
BEST_MIN_INT8_AGREEMENT = 0.99


def plan_build(api, requested, compute_capability, variants, calibration_ready=False, force_int8=False,
               agreement=None):
    """BuildPlan for ``requested`` (fp32/fp16/int8/best) on a GPU of ``compute_capability``.

    ``variants``: the precisions the bundle carries ("fp32", "int8", "fp16");
    ``calibration_ready``: images (--calibration DIR) or a calibration cache exist;
    ``agreement``: precision -> the variant's recorded top-1 agreement with fp32, where the bundle has one.
    Raises BackendError, in one line, where the request cannot be built.
    """
    cc = tuple(compute_capability)
    planner = _PLANNERS.get(requested)
    if planner is None:
        raise BackendError("unknown precision {!r}; choose one of {}".format(requested, ", ".join(sorted(_PLANNERS))))
    variants = set(variants)
    doubt = None
    int8_agreement = (agreement or {}).get("int8")
    if requested == "best" and "int8" in variants and int8_agreement is not None and \
            int8_agreement < BEST_MIN_INT8_AGREEMENT:
        variants.discard("int8")
        doubt = ("best: not the INT8 variant, whose top-1 agreement with fp32 is {:.1%} (below {:.0%}); "
                 "--precision int8 builds it anyway".format(int8_agreement, BEST_MIN_INT8_AGREEMENT))
    plan = planner(api, cc, variants, calibration_ready, force_int8)
    if doubt:
        plan.notes.insert(0, doubt)
    return plan


def variant_agreement(variants):
    """precision -> top-1 agreement with fp32 recorded in the bundle's variant entries (``Bundle.variants``)."""
    out = {}
    for precision, entry in (variants or {}).items():
        value = (entry.get("agreement") or {}).get("top1_agreement")
        if isinstance(value, (int, float)):
            out[precision] = float(value)
    return out


def _fp32(api, cc, variants, calibration_ready, force_int8, requested="fp32"):
    return BuildPlan(requested, "fp32", "fp32")


def _fp16(api, cc, variants, calibration_ready, force_int8, requested="fp16"):
    notes = []
    if not fast_fp16(cc):
        notes.append("this GPU ({}) has no fast FP16: TensorRT will pick FP32 kernels where they are faster".format(
            sm(cc)))
    if api.weakly_typed:
        return BuildPlan(requested, "fp16", "fp32", flags=("FP16",), notes=notes)
    if "fp16" not in variants:
        raise BackendError("TensorRT {} builds FP16 only from an FP16-typed ONNX (strongly typed networks) and "
                           "this bundle has none; {}".format(api.version_text, QUANTIZE_HINT))
    return BuildPlan(requested, "fp16", "fp16", notes=notes)


def _int8(api, cc, variants, calibration_ready, force_int8, requested="int8"):
    if not fast_int8(cc) and not force_int8:
        plan = _fp16(api, cc, variants, calibration_ready, force_int8, requested)
        plan.notes.insert(0, "INT8 asked for, but this GPU ({}) has no fast INT8 (INT8 runs slower than FP16 "
                             "there): building FP16; --force-int8 builds INT8 anyway".format(sm(cc)))
        return plan
    if "int8" in variants:
        return BuildPlan(requested, "int8", "int8", flags=_qdq_flags(api, cc))
    if api.implicit_int8 and calibration_ready:
        flags = ("INT8", "FP16") if fast_fp16(cc) else ("INT8",)
        return BuildPlan(requested, "int8", "fp32", flags=flags, calibrate=True,
                         notes=["implicit INT8: TensorRT's entropy calibrator sets the scales"])
    how = "" if not api.implicit_int8 else (" or give --calibration DIR (a folder of representative images) for "
                                            "TensorRT {}'s calibrator".format(api.version_text))
    raise BackendError("INT8 needs the bundle's INT8 Q/DQ variant, which this bundle lacks ({}){}".format(
        QUANTIZE_HINT, how))


def _best(api, cc, variants, calibration_ready, force_int8):
    if "int8" in variants and fast_int8(cc):
        return BuildPlan("best", "int8", "int8", flags=_qdq_flags(api, cc),
                         notes=["best: the bundle's INT8 Q/DQ variant (this GPU, {}, has fast INT8)".format(sm(cc))])
    if fast_fp16(cc) and (api.weakly_typed or "fp16" in variants):
        plan = _fp16(api, cc, variants, calibration_ready, force_int8, "best")
        plan.notes.append("best: FP16 ({} has fast FP16{})".format(
            sm(cc), "" if "int8" not in variants else ", no fast INT8"))
        return plan
    reason = "no fast FP16 on {}".format(sm(cc)) if not fast_fp16(cc) else (
        "TensorRT {} needs an FP16-typed ONNX and this bundle has none".format(api.version_text))
    return BuildPlan("best", "fp32", "fp32", notes=["best: fp32 ({})".format(reason)])


def _qdq_flags(api, cc):
    """Up to 10 a Q/DQ network builds with the INT8 flag (plus FP16 for the layers left in float); none in 11."""
    if not api.weakly_typed:
        return ()
    return ("INT8", "FP16") if fast_fp16(cc) else ("INT8",)


_PLANNERS = {"fp32": _fp32, "fp16": _fp16, "int8": _int8, "best": _best}
