"""Which source dataset an image of fundus4 comes from, read from its file name (the data README's rules).

The classes of fundus4 come from different source datasets, so a figure that mixes them can hide a
shortcut (the README's trap: diabetic retinopathy and normal are 400x400 patient photographs, most
cataract and glaucoma images 256x256 augmented copies). Every figure is therefore also broken down by
``source_kind``:

    patient     NNNN_left / NNNN_right (ODIR-style: one patient, both eyes)
    augmented   _N_XXXXXXX (augmented copies of one source image N)
    single      anything else (cataract_N.png, Glaucoma_N.png, ...)

OCT data adds two kinds, so exported B-scans and DICOM volumes are reported apart:

    oct2017     CLASS-PATIENT-N B-scans (OCT2017 names)
    dicom       frames of DICOM files (``file.dcm`` or ``file.dcm#frame=N``)
"""
import os

from training.data import _AUGMENTED, _PATIENT, is_dicom, oct2017_patient

FUNDUS_SOURCE_KINDS = ("patient", "augmented", "single")
SOURCE_KINDS = FUNDUS_SOURCE_KINDS + ("oct2017", "dicom")


def source_kind(path):
    if is_dicom(path):
        return "dicom"
    stem = os.path.splitext(os.path.basename(path))[0]
    if _PATIENT.match(stem):
        return "patient"
    if _AUGMENTED.match(stem):
        return "augmented"
    if oct2017_patient(path):
        return "oct2017"
    return "single"
