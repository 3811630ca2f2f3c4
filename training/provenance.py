"""Where a run came from: the command lines that made it, the commit, the data it saw and its licence.

Written into every run folder (config.json, checkpoint.pt) and read by the model card. No torch.
"""
import json
import os
import shlex
import subprocess
import sys
from collections import Counter

from training import data as datalib

DATA_CAVEAT = ("fundus4: the public 'Eye Diseases Classification' compilation (IDRiD, ODIR and other "
               "public fundus sets); redistribution terms not verified: development and evaluation only")
SYNTHETIC_CAVEAT = ("SYNTHETIC OCT B-scans made by `retina-train synth-oct` (no patient data): a test of the "
                    "OCT path, not a clinical model")
OCT_CAVEAT = "OCT B-scans supplied by the user: licence as stated by their source (OCT2017: CC BY 4.0)"
SPLIT_RULES = {
    "fundus": "group-wise stratified: a patient's images (both eyes, any class) and all augmented copies of one "
              "source image stay on one side; checked in code",
    "oct": "group-wise stratified: the B-scans of one patient (OCT2017 CLASS-PATIENT-N names, DICOM PatientID, "
           "else Study/Series UID; any class) and every frame of a DICOM volume stay on one side; checked in code",
}


def command_line():
    """The command that is running, as a user would retype it."""
    prog = os.path.basename(sys.argv[0])
    if prog in ("__main__.py", "cli.py"):
        prog = "python -m training"
    return " ".join([prog] + [shlex.quote(a) for a in sys.argv[1:]])


def record_split_command(split_csv):
    """Write ``<split>.csv.json`` beside a split so runs trained on it can record how it was made."""
    with open(split_csv + ".json", "w") as f:
        json.dump({"command": command_line()}, f)
        f.write("\n")


def with_split_command(commands, data):
    """``commands`` with the command that wrote the split CSV ``data`` first, where it was recorded."""
    sidecar = str(data) + ".json"
    if not os.path.isfile(sidecar):
        return list(commands)
    with open(sidecar) as f:
        split_command = json.load(f).get("command")
    return ([split_command] if split_command and split_command not in commands else []) + list(commands)


def git_commit():
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        commit = subprocess.check_output(["git", "rev-parse", "HEAD"], cwd=here,
                                         stderr=subprocess.DEVNULL).decode().strip()
        dirty = subprocess.check_output(["git", "status", "--porcelain", "--untracked-files=no"],
                                        cwd=here, stderr=subprocess.DEVNULL).decode().strip()
        return commit + ("-dirty" if dirty else "")
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def data_provenance(source, samples, modality="fundus"):
    """What the model was trained and measured on, without machine-specific absolute paths."""
    counts = Counter(s.split or "all" for s in samples)
    image_root = os.path.commonpath([os.path.abspath(datalib.split_frame(s.path)[0]) for s in samples])
    return {"source": source, "image_root": os.path.relpath(image_root), "images": len(samples),
            "modality": modality, "split_counts": dict(sorted(counts.items())),
            "split_sha256": datalib.split_sha256(samples),
            "split_rule": SPLIT_RULES[modality], "licence": data_licence(samples, modality)}


def data_licence(samples, modality):
    """The licence line: synthetic data says so (synth-oct leaves SYNTHETIC.txt at the root of the set)."""
    for s in samples[:1]:
        folder = os.path.dirname(os.path.abspath(datalib.split_frame(s.path)[0]))
        for up in (folder, os.path.dirname(folder), os.path.dirname(os.path.dirname(folder))):
            if os.path.isfile(os.path.join(up, "SYNTHETIC.txt")):
                return SYNTHETIC_CAVEAT
    return DATA_CAVEAT if modality == "fundus" else OCT_CAVEAT
