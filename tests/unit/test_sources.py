"""training/sources.py: the file-name rules of the fundus4 README, on its real file names."""
import os

import pytest

from training.sources import FUNDUS_SOURCE_KINDS, SOURCE_KINDS, source_kind

DATA = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "..", "shared",
                    "data", "fundus4")

pytestmark = pytest.mark.torch  # training/ is the workstation's (its data module is imported)


@pytest.mark.parametrize("name, kind", [("2144_left.jpg", "patient"), ("10251_RIGHT.jpeg", "patient"),
                                        ("_191_9356535.jpg", "augmented"), ("cataract_012.png", "single"),
                                        ("Glaucoma_073.png", "single"), ("2144_left_copy.jpg", "single")])
def test_kinds_follow_the_data_readme(name, kind):
    assert source_kind(os.path.join("/d", "glaucoma", name)) == kind


@pytest.mark.parametrize("name, kind", [("CNV-1016042-1.jpeg", "oct2017"), ("scan.dcm", "dicom"),
                                        ("CNV-77-vol3.dcm#frame=2", "dicom"), ("bscan.png", "single")])
def test_oct_kinds(name, kind):
    assert kind in SOURCE_KINDS
    assert source_kind(os.path.join("/d", "CNV", name)) == kind


@pytest.mark.skipif(not os.path.isdir(DATA), reason="../shared/data/fundus4 is not here")
def test_every_kind_occurs_in_the_data_and_patients_are_only_in_some_classes():
    seen = {}
    for label in sorted(os.listdir(DATA)):
        folder = os.path.join(DATA, label)
        if os.path.isdir(folder):
            for name in os.listdir(folder):
                seen.setdefault(source_kind(name), set()).add(label)
    assert set(seen) == set(FUNDUS_SOURCE_KINDS)
    assert seen["augmented"] <= {"cataract", "glaucoma"}  # the README: augmented copies in those two only
