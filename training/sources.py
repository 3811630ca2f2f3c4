"""Which source dataset an image of fundus4 comes from, read from its file name (the data README's rules).

The classes of fundus4 come from different source datasets, so a figure that mixes them can hide a
shortcut (the README's trap: diabetic retinopathy and normal are 400x400 patient photographs, most
cataract and glaucoma images 256x256 augmented copies). Every figure is therefore also broken down by
``source_kind``:

    patient     NNNN_left / NNNN_right (ODIR-style: one patient, both eyes)
    augmented   _N_XXXXXXX (augmented copies of one source image N)
    single      anything else (cataract_N.png, Glaucoma_N.png, ...)
"""
import os

from training.data import _AUGMENTED, _PATIENT

SOURCE_KINDS = ("patient", "augmented", "single")


def source_kind(path):
    stem = os.path.splitext(os.path.basename(path))[0]
    if _PATIENT.match(stem):
        return "patient"
    if _AUGMENTED.match(stem):
        return "augmented"
    return "single"
