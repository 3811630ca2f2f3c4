"""deploy/lib/l4t.sh: the shell scripts' one reader of a Jetson's L4T release, run by real bash.

The nv_tegra_release lines are L4T's own first lines (JetPack 4.6.1 = r32.7.1, JetPack 6.1 = r36.4.0),
the same ones tests/unit/test_device_info.py gives the Python reader.
"""
import os
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
LIB = os.path.join(ROOT, "deploy", "lib", "l4t.sh")
NANO = "# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64, DATE: Sat Feb 19 17:05:08 UTC 2022\n"
NANO_LATER = "# R32 (release), REVISION: 7.4, GCID: 33514132, BOARD: t210ref, EABI: aarch64, DATE: Fri Jun  9 04:25:08 UTC 2023\n"
ORIN = "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: Fri Sep 13 04:36:44 UTC 2024\n"
XAVIER_JP5 = "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug  1 19:57:35 UTC 2023\n"

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")


def bash(snippet, env=None):
    proc = subprocess.Popen(["bash", "-c", ". \"$0\"; " + snippet, LIB], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, cwd=ROOT, env=env)
    out, err = proc.communicate(timeout=30)
    return proc.returncode, out.decode().strip(), err.decode()


def release_file(tmp_path, text):
    path = tmp_path / "nv_tegra_release"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize("text, release, image", [(NANO, "r32.7.1", "r32.7.1"), (NANO_LATER, "r32.7.4", "r32.7.1"),
                                                   (ORIN, "r36.4.0", "r36.4.0")])
def test_release_and_the_image_for_it(tmp_path, text, release, image):
    path = release_file(tmp_path, text + "# KERNEL_VARIANT: oot\n")
    assert bash('l4t_release "{}"'.format(path)) == (0, release, "")
    assert bash("l4t_image_release {}".format(release)) == (0, image, "")


def test_a_series_we_build_no_image_for_and_a_machine_that_is_not_a_jetson(tmp_path):
    assert bash("l4t_image_release r35.4.1")[0] == 1  # JetPack 5: no image
    rc, out, _ = bash('l4t_release "{}"'.format(release_file(tmp_path, XAVIER_JP5)))
    assert (rc, out) == (0, "r35.4.1")
    assert bash('l4t_release "{}"'.format(tmp_path / "missing"))[:2] == (1, "")
    assert bash('l4t_release "{}"'.format(release_file(tmp_path, "Debian GNU/Linux 12\n")))[:2] == (1, "")


def test_the_environment_points_the_reader_elsewhere(tmp_path):
    env = dict(os.environ, RETINA_EDGE_NV_TEGRA_RELEASE=release_file(tmp_path, ORIN))
    assert bash("l4t_release", env=env)[:2] == (0, "r36.4.0")


def test_image_name_carries_the_project_version_from_setup_py():
    with open(os.path.join(ROOT, "setup.py")) as f:
        version = [line.split('"')[1] for line in f if line.strip().startswith("version=")][0]
    assert bash("project_version .")[:2] == (0, version)
    assert bash("image_name $(project_version .) r32.7.1")[:2] == (0, "retina-edge:{}-l4t-r32.7.1".format(version))
