"""Reading /sys, /proc and /etc under a root that tests (and dry runs) can move.

Every board reader takes a ``SysRoot``; the real one is ``/``. Tests build a
tree that mirrors a real board's layout under ``tmp_path`` and pass it in, or
set ``RETINA_EDGE_SYSFS_ROOT`` for a subprocess, as jetson-stats does with
its ``JTOP_TESTING`` fake sysfs (rbonghi/jetson_stats ``jtop/core/power.py``).
Nothing here patches the real /sys. A report made with another root says so.
"""
import glob
import os
import re
import subprocess

ENV = "RETINA_EDGE_SYSFS_ROOT"


class SysRoot(object):
    """Absolute board paths (``/sys/...``) resolved under ``root``."""

    def __init__(self, root=None):
        self.root = os.path.abspath(root or os.environ.get(ENV) or "/")

    @property
    def is_real(self):
        return self.root == "/"

    def path(self, absolute):
        """The file that stands for the board path ``absolute`` (e.g. "/sys/class/thermal")."""
        return os.path.join(self.root, absolute.lstrip("/"))

    def board_path(self, local):
        """The board path a local file stands for (for messages and reports)."""
        return "/" + os.path.relpath(local, self.root) if not self.is_real else local

    def glob(self, pattern):
        """Sorted local paths matching the board path pattern (numeric parts sorted as numbers)."""
        return sorted(glob.glob(self.path(pattern)), key=natural_key)

    def exists(self, absolute):
        return os.path.exists(self.path(absolute))

    def describe(self):
        return "/" if self.is_real else "{} (a copy or fake of a board's files, not this machine's)".format(self.root)


def natural_key(text):
    """"thermal_zone10" after "thermal_zone9": digit runs compare as numbers."""
    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", text)]


def read_text(path):
    """The stripped contents of a small sysfs file, or None when it cannot be read."""
    try:
        with open(path) as f:
            return f.read().strip()
    except (IOError, OSError, UnicodeDecodeError):
        return None


def read_int(path):
    """An integer sysfs value (the first word: "32760 ma" reads 32760), or None."""
    text = read_text(path)
    if not text:
        return None
    try:
        return int(text.split()[0])
    except ValueError:
        return None


def run_command(argv, timeout_s=5.0):
    """(exit code, output text) of a short command; (None, reason) when it cannot run.

    Python 3.6: no ``capture_output=`` or ``text=``.
    """
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    except (IOError, OSError) as exc:
        return None, "{}: {}".format(argv[0], exc.strerror or exc)
    try:
        out, _ = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        return None, "{} did not answer within {:.0f} s".format(" ".join(argv), timeout_s)
    return proc.returncode, out.decode("utf-8", "replace").strip()


def which(name):
    """The command's path on PATH, or None (shutil.which, kept here so tests can use PATH)."""
    import shutil
    return shutil.which(name)
