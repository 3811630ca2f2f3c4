"""Checks run on each decoded frame before the network: ``check(frame, bundle) -> Result or None``.

A Result returned is the frame's verdict (e.g. ``skipped``: another modality
than the bundle's; ``ungradable``: not a gradable fundus photograph) and the
network is not run for it. ``default_checks`` is what ``retina-edge run``
applies; the modality and quality checks join it with the screening-station
issue.
"""


def default_checks(bundle):
    """The checks for ``bundle``, in the order they run."""
    return []
