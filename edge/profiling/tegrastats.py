"""``tegrastats`` as a power meter of last resort on a Jetson (when the INA3221 files cannot be read).

Its power fields, by generation (sample lines kept in tests/unit/test_profile_tegrastats.py):
- JetPack 4 (Nano): ``POM_5V_IN 933/933 POM_5V_GPU 0/0 POM_5V_CPU 84/84``:
  instantaneous/average mW, no unit (rbonghi/jetson_stats ``tests/tegrastats``).
- JetPack 5/6 (Orin): ``VDD_IN 5704mW/5704mW VDD_CPU_GPU_CV 1234mW/1234mW``;
  some releases print only ``VDD_IN 5765mW``; JetPack 7 adds a third value
  (``5139mW/5139mW/5139mW``) (jetson_stats ``jtop/tests/test_06_tegra_parse.py``).
The first number is the instantaneous reading; the others are running
averages and maxima since tegrastats started, which we do not use. Fields
that are not power (``RAM 330/3964MB``, ``SWAP 0/1982MB``, ``APE 25``,
``cpu@52.9C/52.9C``, ``GR3D_FREQ 12%@[1300]``) must not be taken for rails.
``tegrastats --interval MS`` prints one line every MS milliseconds.
"""
import re
import subprocess
import threading
import time
from collections import OrderedDict, deque

from edge.profiling.power import Meter, PowerReading, PowerUnavailable, is_not_connected, total_of
from edge.profiling.sysfs import which

# NAME 123mW[/456mW[/789mW]]  (JetPack 5+), or NAME 123/456 with no unit at all (JetPack 4);
# a number followed by a letter ("3964MB", "252kB") or "%"/"@" is some other field
_POWER_MW = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_]*) (\d+(?:\.\d+)?)mW(?:/\d+(?:\.\d+)?mW)*(?=\s|$)")
_POWER_BARE = re.compile(r"(?:^|\s)([A-Za-z][A-Za-z0-9_]*) (\d+)/(\d+)(?=\s|$)")


def parse_power_mw(line):
    """Rail name -> instantaneous mW from one tegrastats line (empty when it has no power fields)."""
    rails = []
    for pattern in (_POWER_MW, _POWER_BARE):
        for m in pattern.finditer(line):
            rails.append((m.start(), m.group(1), float(m.group(2))))
    # AGX Orin prints unused INA3221 channels as "NC 0mW/0mW": not rails
    return OrderedDict((name, mw) for _, name, mw in sorted(rails) if not is_not_connected(name))


class TegrastatsMeter(Meter):
    """Runs ``tegrastats --interval MS`` and keeps the newest line's rails, stamped when it arrived."""
    name = "tegrastats"
    scope = "the rails tegrastats prints (POM_5V_IN / VDD_IN is the module's input)"

    def __init__(self, interval_s=0.1, command="tegrastats", clock=time.monotonic, wait_s=3.0):
        super(TegrastatsMeter, self).__init__()
        path = which(command)
        if path is None:
            raise PowerUnavailable("tegrastats: not found on PATH (it comes with L4T on a Jetson)")
        self.interval_ms = max(100, int(round(interval_s * 1000)))
        self.min_interval_s = self.interval_ms / 1000.0
        self.clock = clock
        self.latest = deque(maxlen=1)
        self.errors = []
        try:
            self.proc = subprocess.Popen([path, "--interval", str(self.interval_ms)], stdout=subprocess.PIPE,
                                         stderr=subprocess.STDOUT)
        except (IOError, OSError) as exc:
            raise PowerUnavailable("tegrastats: cannot run {}: {}".format(path, exc))
        self.thread = threading.Thread(target=self._read_lines, name="tegrastats", daemon=True)
        self.thread.start()
        self._wait_first_line(max(wait_s, 3 * self.min_interval_s))

    def _read_lines(self):
        for raw in iter(self.proc.stdout.readline, b""):
            line = raw.decode("utf-8", "replace").strip()
            rails = parse_power_mw(line)
            if rails:
                self.latest.append((self.clock(), rails))
            elif line:
                self.errors.append(line)

    def _wait_first_line(self, wait_s):
        deadline = self.clock() + wait_s
        while not self.latest and self.clock() < deadline and self.proc.poll() is None:
            time.sleep(0.02)
        if not self.latest and self.proc.poll() is not None:
            self.thread.join(timeout=1)  # it exited: let the reader take its last lines
        if not self.latest:
            said = self.errors[-1] if self.errors else "nothing"
            self.close()
            raise PowerUnavailable("tegrastats printed no power rails within {:g} s (it said: {})".format(
                wait_s, said[:200]))
        rails = self.latest[-1][1]
        self.rails = [(name, None) for name in rails]
        self.total_rule = total_of(rails)[1]

    def read(self):
        if not self.latest:
            return PowerReading(None, OrderedDict())
        t, rails = self.latest[-1]
        total_mw, self.total_rule = total_of(rails, [r[0] for r in self.rails])
        return PowerReading(total_mw, rails, t=t)

    def describe(self):
        return "tegrastats --interval {} ({}), total = {}".format(
            self.interval_ms, ", ".join(r[0] for r in self.rails), self.total_rule)

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.thread.join(timeout=2)
        self.proc.stdout.close()
