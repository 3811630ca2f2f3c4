"""training.inputs.make_spec and the model card read the bundle's preprocessing vocabulary (workstation side)."""
import pytest

torch = pytest.importorskip("torch", reason="training/ is workstation-only: needs torch")

from models.bundle import BundleError, PreprocessError, validate_manifest  # noqa: E402
from training import modelcard  # noqa: E402
from training.inputs import make_spec  # noqa: E402

pytestmark = pytest.mark.torch


def test_default_spec_is_todays_fundus_rule():
    assert make_spec(224, (0.5,) * 3, (0.5,) * 3) == {
        "colour_order": "RGB", "roi": {"kind": "fundus_disc", "threshold": 10, "pad": "square"},
        "resize": {"size": [224, 224], "interpolation": "area"}, "scale": 1.0 / 255.0,
        "mean": [0.5] * 3, "std": [0.5] * 3}
    assert make_spec(64, (0,) * 3, (1,) * 3, threshold=15)["roi"]["threshold"] == 15


def test_oct_spec_fills_the_kinds_defaults_and_takes_a_grey_channel():
    spec = make_spec(128, [0.2], [0.3], roi={"kind": "retina_band", "margin": 0.2}, colour_order="GREY")
    assert spec["roi"] == {"kind": "retina_band", "threshold": 20, "margin": 0.2, "pad": "square"}
    assert spec["colour_order"] == "GREY" and spec["mean"] == [0.2]
    assert make_spec(96, (0,) * 3, (1,) * 3, roi={"kind": "centre"})["roi"]["fraction"] == 1.0


@pytest.mark.parametrize("kwargs, field", [
    (dict(roi={"kind": "retina_band", "fraction": 0.5}), "preprocess.roi.fraction"),
    (dict(roi={"kind": "disc"}), "preprocess.roi.kind"),
    (dict(colour_order="GREY"), "preprocess.mean"),              # three means for one channel
    (dict(colour_order="RGBA"), "preprocess.colour_order"),
    (dict(interpolation="lanczos"), "preprocess.resize.interpolation"),
])
def test_a_rule_outside_the_vocabulary_fails_before_training(kwargs, field):
    with pytest.raises(PreprocessError) as info:
        make_spec(64, (0.5,) * 3, (0.5,) * 3, **kwargs)
    assert info.value.field == field


def test_the_model_card_states_an_oct_rule_in_words(valid_manifest):
    valid_manifest["model"].update(file="model.onnx", sha256="0" * 64)
    valid_manifest["input"]["shape"][1] = 1
    valid_manifest["preprocess"] = make_spec(32, [0.2], [0.3], roi={"kind": "retina_band", "threshold": 25},
                                             colour_order="GREY", interpolation="linear")
    validate_manifest(valid_manifest)
    card = modelcard.render(valid_manifest)
    line = [x for x in card.splitlines() if x.startswith("Preprocessing:")][0]
    assert "retina-band crop (rows whose mean grey value exceeds 25, widened by 0.1" in line
    assert "one grey channel" in line and "(linear)" in line and "mean [0.2]" in line
    valid_manifest["preprocess"]["colour_order"] = "RGB"
    with pytest.raises(BundleError, match="input.shape"):
        validate_manifest(valid_manifest)
