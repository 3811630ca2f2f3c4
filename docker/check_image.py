"""Run at the end of each Jetson image's build (Python 3.6 and 3.10): fail the build, one line per problem,
if a package the image needs is missing or a pip build shadows a JetPack one.

    python3 docker/check_image.py --l4t r32|r36

- cv2 must be JetPack's OpenCV (apt's libopencv-python, built with GStreamer for csi:// and rtsp://), and
  no pip OpenCV distribution (opencv-python, -headless, -contrib) may be installed: one would shadow it
  or be shadowed by it, depending on sys.path order, and the pip wheels have no GStreamer.
- on r32, onnxruntime must be the Jetson Zoo onnxruntime-gpu 1.11.0 (CUDA and TensorRT providers), not
  PyPI's CPU onnxruntime, which installs the same module.
- edge and models import, and the shipped bundle is where /opt/retina-edge/models/default points.
TensorRT and pycuda are not imported: on r32 TensorRT is mounted from the host only at run time, and
pycuda's import needs the GPU driver; `retina-edge selftest` checks both on the device.
"""
import argparse
import glob
import os
import sys

PIP_OPENCV = ("opencv_python", "opencv_python_headless", "opencv_contrib_python", "opencv_contrib_python_headless")


def distributions(prefix):
    """dist-info / egg-info folders on sys.path whose project name (normalised) is ``prefix``."""
    found = []
    for folder in sys.path:
        if not folder or not os.path.isdir(folder):
            continue
        for path in glob.glob(os.path.join(folder, "*.*-info")):
            name = os.path.basename(path).split("-")[0].lower().replace(".", "_")
            if name == prefix:
                found.append(path)
    return found


def check_opencv():
    problems = []
    for name in PIP_OPENCV:
        for path in distributions(name):
            problems.append("a pip OpenCV is installed ({}): it has no GStreamer and shadows or is shadowed by "
                            "JetPack's cv2; pip uninstall it and install the edge extra without it".format(path))
    try:
        import cv2
    except ImportError as exc:
        return problems + ["cv2 does not import ({}): apt-get install libopencv-python (JetPack's)".format(exc)]
    gstreamer = [line for line in cv2.getBuildInformation().splitlines() if line.strip().startswith("GStreamer:")]
    if not gstreamer or "YES" not in gstreamer[0]:
        problems.append("cv2 {} at {} is built without GStreamer ({}): csi:// and rtsp:// would not open".format(
            cv2.__version__, cv2.__file__, " ".join(gstreamer[0].split()) if gstreamer else "no GStreamer line"))
    return problems


def check_onnxruntime(l4t):
    try:
        import onnxruntime
    except ImportError as exc:
        return ["onnxruntime does not import ({})".format(exc)]
    if l4t != "r32":
        return []
    problems = []
    if distributions("onnxruntime"):
        problems.append("PyPI's CPU onnxruntime is installed (it provides the same module as onnxruntime-gpu): "
                        "pip uninstall onnxruntime")
    if onnxruntime.__version__ != "1.11.0" or not distributions("onnxruntime_gpu"):
        problems.append("onnxruntime {} is not the Jetson Zoo onnxruntime-gpu 1.11.0".format(onnxruntime.__version__))
    elif "CUDAExecutionProvider" not in onnxruntime.get_available_providers():
        problems.append("onnxruntime-gpu offers no CUDAExecutionProvider: {}".format(
            onnxruntime.get_available_providers()))
    return problems


def check_project():
    try:
        import edge.cli  # noqa: F401
        from models.bundle import default_bundle_dir
    except ImportError as exc:
        return ["retina-edge does not import ({})".format(exc)]
    problems = []
    if not os.path.isfile(os.path.join(default_bundle_dir(), "bundle.json")):
        problems.append("the shipped bundle is missing at {}".format(default_bundle_dir()))
    link = "/opt/retina-edge/models/default"
    if os.path.lexists(link) and os.path.realpath(link) != os.path.realpath(default_bundle_dir()):
        problems.append("{} points at {}, not the installed bundle".format(link, os.path.realpath(link)))
    return problems


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--l4t", choices=("r32", "r36"), required=True, help="the image's L4T series")
    args = parser.parse_args(argv)
    problems = check_opencv() + check_onnxruntime(args.l4t) + check_project()
    for line in problems:
        sys.stderr.write("check_image: {}\n".format(line))
    if problems:
        return 1
    import cv2
    import numpy
    import onnxruntime
    print("check_image: ok: python {}, numpy {}, cv2 {} (GStreamer) at {}, onnxruntime {} {}".format(
        sys.version.split()[0], numpy.__version__, cv2.__version__, os.path.dirname(cv2.__file__),
        onnxruntime.__version__, onnxruntime.get_available_providers()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
