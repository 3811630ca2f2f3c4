"""edge/device_info.py against fake trees that mirror a Jetson Nano (JetPack 4.6.1) and an Orin (JetPack 6).

The file contents are those the boards ship: the first line of /etc/nv_tegra_release
(as printed by `head -1 /etc/nv_tegra_release` in jetson-stats' and NVIDIA forum reports),
CUDA 10.2's version.txt, CUDA 12's version.json, cuDNN 8's header under
/usr/include/aarch64-linux-gnu/ (JetPack's layout).
"""
import os

import pytest

from edge import device_info

NANO_RELEASE = ("# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64, "
                "DATE: Sat Feb 19 17:05:08 UTC 2022\n# KERNEL_VARIANT: oot\n")
ORIN_RELEASE = ("# R36 (release), REVISION: 3.0, GCID: 36923193, BOARD: generic, EABI: aarch64, "
                "DATE: Fri Jul 19 23:24:25 UTC 2024\n")
CUDNN_H = "#define CUDNN_MAJOR 8\n#define CUDNN_MINOR 2\n#define CUDNN_PATCHLEVEL 1\n"


def write(root, rel, text):
    path = os.path.join(str(root), rel)
    if not os.path.isdir(os.path.dirname(path)):
        os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        f.write(text)


def test_a_nano_on_jetpack_4_6_1(tmp_path):
    write(tmp_path, "etc/nv_tegra_release", NANO_RELEASE)
    write(tmp_path, "proc/device-tree/model", "NVIDIA Jetson Nano Developer Kit\x00")
    write(tmp_path, "usr/local/cuda/version.txt", "CUDA Version 10.2.300\n")
    write(tmp_path, "usr/include/aarch64-linux-gnu/cudnn_version_v8.h", CUDNN_H)
    info = device_info.describe(str(tmp_path))
    assert (info["l4t"], info["jetpack"]) == ("32.7.1", "4.6.1")
    assert info["board"] == "NVIDIA Jetson Nano Developer Kit"
    assert (info["cuda"], info["cudnn"]) == ("10.2.300", "8.2.1")


def test_an_orin_on_jetpack_6(tmp_path):
    write(tmp_path, "etc/nv_tegra_release", ORIN_RELEASE)
    write(tmp_path, "usr/local/cuda/version.json", '{"cuda": {"name": "CUDA SDK", "version": "12.2.140"}}')
    info = device_info.describe(str(tmp_path))
    assert (info["l4t"], info["jetpack"], info["cuda"]) == ("36.3.0", "6.0", "12.2.140")


@pytest.mark.parametrize("line, l4t, jetpack", [
    ("# R36 (release), REVISION: 4.3, GCID: 1", "36.4.3", "6.2"),
    ("# R35 (release), REVISION: 4.1, GCID: 1", "35.4.1", "5.1.2"),
    ("# R32 (release), REVISION: 6.1, GCID: 1", "32.6.1", "4.6"),
    ("# R35 (release), REVISION: 9.9, GCID: 1", "35.9.9", "5.x (L4T 35.9.9 not in this table)"),
    ("# R36 (release), REVISION: 5, GCID: 1", "36.5.0", "6.x (L4T 36.5.0 not in this table)"),
])
def test_l4t_releases_map_to_jetpack_without_guessing_minors(tmp_path, line, l4t, jetpack):
    write(tmp_path, "etc/nv_tegra_release", line + "\n")
    assert device_info.l4t_release(str(tmp_path)) == l4t
    assert device_info.jetpack_for(l4t) == jetpack


def test_not_a_jetson_reports_nothing_rather_than_a_guess(tmp_path):
    info = device_info.describe(str(tmp_path))
    for key in ("l4t", "jetpack", "board", "cuda", "cudnn"):
        assert info[key] is None, key
    assert info["python"] and info["numpy"] and info["onnxruntime"]
    assert device_info.module_version("no_such_module_here") is None
