"""Group-wise stratified splits: no group (patient, source image) on two sides."""
import random
from collections import Counter, defaultdict

DEFAULT_FRACTIONS = {"train": 0.7, "val": 0.1, "test": 0.2}


class LeakError(AssertionError):
    """A group was found on more than one side of a split."""


def grouped_split(samples, fractions, seed=0):
    """Assign every sample a split name so that each group lands whole in one split.

    ``fractions`` maps split name -> fraction of images (they must sum to 1).
    Groups are placed largest first, in a seeded random order among equals,
    each into the split whose per-class counts fall furthest below target:
    the greedy rule behind scikit-learn's StratifiedGroupKFold.
    """
    names = list(fractions)
    total = float(sum(fractions.values()))
    if abs(total - 1.0) > 1e-6 or any(f < 0 for f in fractions.values()):
        raise ValueError("split fractions must be non-negative and sum to 1, got {}".format(fractions))
    labels = sorted({s.label for s in samples})
    by_group = defaultdict(list)
    for s in samples:
        by_group[s.group].append(s)
    class_total = Counter(s.label for s in samples)
    order = sorted(by_group)
    random.Random(seed).shuffle(order)
    order.sort(key=lambda g: -len(by_group[g]))  # stable: random among equal sizes

    counts = {n: Counter() for n in names}
    assigned = {}
    for g in order:
        members = Counter(s.label for s in by_group[g])

        def cost(name):
            # how far every split's class fractions would be from target after this placement
            err = 0.0
            for n in names:
                for lab in labels:
                    c = counts[n][lab] + (members[lab] if n == name else 0)
                    err += (c / float(class_total[lab]) - fractions[n]) ** 2
            return err
        best = min(names, key=lambda n: (cost(n), -fractions[n]))
        assigned[g] = best
        counts[best].update(members)
    result = [s._replace(split=assigned[s.group]) for s in samples]
    check_no_leak(result)
    return result


def check_no_leak(samples):
    """Raise LeakError if any group has samples in more than one split.

    Whatever groups a CSV gave, the frames of one DICOM file, the files of one DICOM PatientID and the
    B-scans of one OCT2017 patient must also stay on one side (``training.data.bound_keys``).
    """
    from training.data import bound_keys
    sides = defaultdict(set)
    for s in samples:
        sides[s.group].add(s.split)
        for key in bound_keys(s.path):
            sides[key].add(s.split)
    leaks = {g: sorted(v) for g, v in sides.items() if len(v) > 1}
    if leaks:
        example = sorted(leaks.items())[:5]
        raise LeakError("{} group(s) appear in more than one split, e.g. {}".format(len(leaks), example))


def summarize(samples):
    """split -> Counter(label) for printing."""
    table = defaultdict(Counter)
    for s in samples:
        table[s.split][s.label] += 1
    return table
