"""training/metrics.py on small hand-checked cases (workstation side: skipped without torch)."""
import numpy as np
import pytest

pytest.importorskip("torch", reason="training/ is workstation-only: needs torch")

from training.metrics import classification_report, confusion_matrix, format_report  # noqa: E402

pytestmark = pytest.mark.torch

LABELS = ["cataract", "diabetic_retinopathy", "glaucoma", "normal"]


def test_confusion_matrix_rows_are_truth_columns_are_predictions():
    cm = confusion_matrix([0, 0, 1, 2, 2, 2], [0, 1, 1, 2, 2, 0], 4)
    assert cm.tolist() == [[1, 1, 0, 0], [0, 1, 0, 0], [1, 0, 2, 0], [0, 0, 0, 0]]


def test_report_by_hand():
    # truth:     0 0 1 1 2
    # predicted: 0 1 1 1 0
    report = classification_report(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0]), LABELS)
    assert report["n"] == 5
    assert report["accuracy"] == pytest.approx(3 / 5)
    per = report["per_class"]
    assert per["cataract"] == pytest.approx({"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2})
    assert per["diabetic_retinopathy"] == pytest.approx({"precision": 2 / 3, "recall": 1.0, "f1": 0.8,
                                                         "support": 2})
    assert per["glaucoma"] == pytest.approx({"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 1})
    assert per["normal"] == pytest.approx({"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0})
    # balanced accuracy averages recall over the classes that occur (normal has no support)
    assert report["balanced_accuracy"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    assert report["confusion_matrix"][0] == [1, 1, 0, 0]
    assert report["labels"] == LABELS


def test_balanced_accuracy_differs_from_accuracy_on_imbalanced_data():
    y_true = np.array([0] * 9 + [1])
    y_pred = np.zeros(10, dtype=int)
    report = classification_report(y_true, y_pred, LABELS[:2])
    assert report["accuracy"] == pytest.approx(0.9)
    assert report["balanced_accuracy"] == pytest.approx(0.5)


def test_empty_input_does_not_divide_by_zero():
    report = classification_report(np.array([], dtype=int), np.array([], dtype=int), LABELS)
    assert report["n"] == 0 and report["accuracy"] == 0.0 and report["balanced_accuracy"] == 0.0


def test_format_report_lists_every_class_and_the_matrix():
    report = classification_report(np.array([0, 1, 2, 3]), np.array([0, 1, 2, 2]), LABELS)
    text = format_report(report, title="test split")
    assert text.startswith("test split: n=4  accuracy=0.7500  balanced_accuracy=0.7500")
    for lab in LABELS:
        assert lab in text
    assert text.splitlines()[-1].split() == ["normal", "0", "0", "1", "0"]
