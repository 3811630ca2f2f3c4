"""Power meters, one per kind of board, chosen through a registry; "not available" is an answer too.

A meter offers ``read() -> PowerReading`` (total and per-rail mW), ``describe()``,
``scope`` (what its total covers), ``total_rule`` (how the total is made),
``min_interval_s`` and ``close()``. ``open_power_meter`` tries the kinds in
order and says, for each one it passed over, why.

Facts, and where they come from:
- Jetson Nano (L4T r32, JetPack 4): INA3221 through the downstream ``ina3221x``
  IIO driver at ``/sys/bus/i2c/drivers/ina3221x/6-0040/iio:device0/``:
  ``rail_name_N`` names channel N, ``in_power{N}_input`` is mW,
  ``in_current{N}_input`` mA, ``in_voltage{N}_input`` mV. Rails POM_5V_IN
  (the module's input: the total), POM_5V_GPU, POM_5V_CPU (parts of it).
  (shared/docs/DESIGN.md; rbonghi/jetson_stats ``jtop/core/power.py``
  ``list_all_i2c_ports``; jetson_stats issue #131 cats ``in_voltage0_input``
  on a Nano at that path.)
- Jetson Orin (JetPack 5/6): the upstream ``ina3221`` hwmon driver at
  ``/sys/bus/i2c/drivers/ina3221/1-0040/hwmon/hwmonN/`` (N varies by boot):
  ``in{N}_label``, ``in{N}_input`` bus voltage mV, ``curr{N}_input`` mA, so
  power = mV x mA / 1000 mW. ``in[456]_input`` are shunt voltages, ``in7`` is
  the "sum of shunt voltages" channel and ``curr4`` the sum of currents: not
  rails. (Linux Documentation/hwmon/ina3221.rst.) Unused channels are
  labelled "NC" on Orin modules (jetson_stats skips them, citing NVIDIA's
  Orin power guide). Orin Nano labels: VDD_IN (total), VDD_CPU_GPU_CV, VDD_SOC.
- The total is POM_5V_IN or VDD_IN when present, else the sum of the rails
  (jetson_stats ``total_power``; e.g. AGX Orin has no input rail).
"""
import os
import re
import threading
from collections import OrderedDict, namedtuple

from edge.profiling.sysfs import SysRoot, read_int, read_text

# rails that measure the module's input, i.e. everything: never added to the other rails
TOTAL_RAILS = ("POM_5V_IN", "VDD_IN")

NANO_IIO_GLOB = "/sys/bus/i2c/drivers/ina3221x/*/iio:device*"
ORIN_HWMON_GLOB = "/sys/bus/i2c/drivers/ina3221/*/hwmon/hwmon*"
SUM_CHANNEL = 7  # hwmon in7: "sum of shunt voltages" (Documentation/hwmon/ina3221.rst)


class PowerReading(namedtuple("PowerReading", "total_mw rails_mw t temps_c")):
    """One reading: total and per-rail milliwatts; ``t`` when the meter knows when it measured
    (tegrastats lines), else None (the sampler's clock is used); ``temps_c`` from meters that
    also report temperatures (NVML)."""

    def __new__(cls, total_mw, rails_mw, t=None, temps_c=None):
        return super(PowerReading, cls).__new__(cls, total_mw, rails_mw, t, temps_c or {})


class PowerUnavailable(RuntimeError):
    """This kind of meter is not usable here; the message says why in one line."""


def total_of(rails_mw, names=None):
    """(total_mw, rule): the input rail when the board has one, never summed with the others; else the sum.

    ``names`` are the board's rails (fixed when the meter was opened), so a rail
    that fails to read makes the total None for that reading instead of
    silently switching to another rule.
    """
    names = list(rails_mw) if names is None else list(names)
    for name in TOTAL_RAILS:
        if name in names:
            return rails_mw.get(name), "{} (the module's input rail; the other rails are parts of it)".format(name)
    values = [rails_mw.get(n) for n in names]
    total = sum(values) if values and all(v is not None for v in values) else None
    return total, "sum of the rails (no input rail on this board, so a lower bound of the module's draw)"


def is_not_connected(label):
    """An Orin channel labelled NC ("not connected"), as a word: "NC", "NC_2"; not "VDD_SYNC"."""
    return "NC" in re.split(r"[^A-Za-z0-9]+", label.upper())


class Meter(object):
    name = "meter"
    scope = ""
    min_interval_s = 0.0

    def __init__(self):
        self.rails = []  # (rail name, how to read it)
        self.total_rule = ""

    def read_rails(self):
        raise NotImplementedError

    def read(self):
        rails_mw = self.read_rails()
        total_mw, self.total_rule = total_of(rails_mw, [r[0] for r in self.rails])
        return PowerReading(total_mw, rails_mw)

    def check(self):
        """Read once; raise PowerUnavailable naming the files when nothing can be read."""
        reading = self.read()
        if reading.total_mw is None:
            raise PowerUnavailable("{}: found rails {} but could not read them (permissions?)".format(
                self.name, ", ".join(r[0] for r in self.rails)))
        return self

    def describe(self):
        return "{} ({}), total = {}".format(self.name, ", ".join(r[0] for r in self.rails), self.total_rule)

    def close(self):
        pass


class NanoIio(Meter):
    """Jetson Nano / TX1 / TX2 / Xavier (JetPack 4): ina3221x IIO devices."""
    name = "ina3221 (iio)"
    scope = "the module's input rail (POM_5V_IN) as the INA3221 on the carrier board measures it"

    def __init__(self, root):
        super(NanoIio, self).__init__()
        for device in root.glob(NANO_IIO_GLOB):
            for label_path in _by_channel(device, "rail_name_*"):
                label = read_text(label_path)
                n = _channel_of(label_path)
                if not label or n is None:
                    continue
                files = dict((k, os.path.join(device, "{}{}_input".format(k, n)))
                             for k in ("in_power", "in_current", "in_voltage"))
                self.rails.append((label, files))
        if not self.rails:
            raise PowerUnavailable("no INA3221 IIO rails (rail_name_N) under {}".format(NANO_IIO_GLOB))

    def read_rails(self):
        rails_mw = OrderedDict()
        for label, files in self.rails:
            mw = read_int(files["in_power"])
            if mw is None:  # older/other trees: derive it from voltage and current
                mv, ma = read_int(files["in_voltage"]), read_int(files["in_current"])
                mw = mv * ma / 1000.0 if mv is not None and ma is not None else None
            rails_mw[label] = float(mw) if mw is not None else None
        return rails_mw


class OrinHwmon(Meter):
    """Jetson Orin (JetPack 5/6): ina3221 hwmon devices; power = mV x mA / 1000."""
    name = "ina3221 (hwmon)"
    scope = "the module's input rail (VDD_IN) as the INA3221 on the carrier board measures it"

    def __init__(self, root):
        super(OrinHwmon, self).__init__()
        self.skipped = []
        for hwmon in root.glob(ORIN_HWMON_GLOB):
            for label_path in _by_channel(hwmon, "in*_label"):
                label, n = read_text(label_path), _channel_of(label_path)
                if not label or n is None:
                    continue
                volt = os.path.join(hwmon, "in{}_input".format(n))
                curr = os.path.join(hwmon, "curr{}_input".format(n))
                if n == SUM_CHANNEL or "sum of shunt" in label.lower():
                    self.skipped.append("{} (in{}: sum of shunt voltages, not a rail)".format(label, n))
                elif is_not_connected(label):
                    self.skipped.append("{} (in{}: not connected)".format(label, n))
                elif not (os.path.exists(volt) and os.path.exists(curr)):
                    self.skipped.append("{} (in{}: no in{}_input/curr{}_input pair)".format(label, n, n, n))
                else:
                    self.rails.append((label, (volt, curr)))
        if not self.rails:
            raise PowerUnavailable("no INA3221 hwmon rails (inN_label with currN_input) under {}".format(
                ORIN_HWMON_GLOB))

    def read_rails(self):
        rails_mw = OrderedDict()
        for label, (volt, curr) in self.rails:
            mv, ma = read_int(volt), read_int(curr)
            rails_mw[label] = mv * ma / 1000.0 if mv is not None and ma is not None else None
        return rails_mw


class Nvml(Meter):
    """Desktop NVIDIA GPUs through NVML (nvidia-ml-py): the GPU board's own power sensor."""
    name = "nvml"
    scope = "the GPU board only (not the CPU or the rest of the machine)"

    def __init__(self, root=None, index=None):
        super(Nvml, self).__init__()
        try:
            import pynvml
        except ImportError:
            raise PowerUnavailable("NVML: pip install nvidia-ml-py (for desktop NVIDIA GPUs)")
        self.nvml = pynvml
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as exc:
            raise PowerUnavailable("NVML: {} (no NVIDIA driver here?)".format(exc))
        self.lock = threading.Lock()
        try:
            self.index = _visible_gpu_index() if index is None else index
            self.handle = pynvml.nvmlDeviceGetHandleByIndex(self.index)
            gpu = pynvml.nvmlDeviceGetName(self.handle)
            self.gpu = gpu.decode() if isinstance(gpu, bytes) else gpu
            self.rails = [("GPU{} {}".format(self.index, self.gpu), None)]
            pynvml.nvmlDeviceGetPowerUsage(self.handle)
        except pynvml.NVMLError as exc:
            pynvml.nvmlShutdown()
            raise PowerUnavailable("NVML: {}".format(exc))
        self.reasons_seen = set()

    def read(self):
        n = self.nvml
        with self.lock:
            mw = float(n.nvmlDeviceGetPowerUsage(self.handle))
            temp_c = n.nvmlDeviceGetTemperature(self.handle, n.NVML_TEMPERATURE_GPU)
            self._note_reasons()
        self.total_rule = "the GPU's power sensor (NVML; on many GPUs a 1 s running average)"
        return PowerReading(mw, OrderedDict([(self.rails[0][0], mw)]), temps_c={"gpu": float(temp_c)})

    def _note_reasons(self):
        """Clock slowdown reasons NVML reports (thermal, power cap, hardware slowdown)."""
        n = self.nvml
        get = getattr(n, "nvmlDeviceGetCurrentClocksEventReasons", None) or getattr(
            n, "nvmlDeviceGetCurrentClocksThrottleReasons", None)
        if get is None:
            return
        try:
            mask = get(self.handle)
        except n.NVMLError:
            return
        for attr, text in _NVML_REASONS:
            bit = getattr(n, attr, None)
            if bit is not None and mask & bit:
                self.reasons_seen.add(text)

    def close(self):
        try:
            self.nvml.nvmlShutdown()
        except self.nvml.NVMLError:
            pass


_NVML_REASONS = (
    ("nvmlClocksThrottleReasonSwPowerCap", "power cap (software)"),
    ("nvmlClocksThrottleReasonHwSlowdown", "hardware slowdown"),
    ("nvmlClocksThrottleReasonSwThermalSlowdown", "thermal slowdown (software)"),
    ("nvmlClocksThrottleReasonHwThermalSlowdown", "thermal slowdown (hardware)"),
    ("nvmlClocksThrottleReasonHwPowerBrakeSlowdown", "power brake (hardware)"),
)


def _visible_gpu_index():
    """NVML counts every GPU; CUDA_VISIBLE_DEVICES=2 means the backend runs on NVML's GPU 2."""
    first = os.environ.get("CUDA_VISIBLE_DEVICES", "").split(",")[0].strip()
    return int(first) if first.isdigit() else 0


def _open_tegrastats(root, interval_s):
    from edge.profiling.tegrastats import TegrastatsMeter
    return TegrastatsMeter(interval_s=interval_s)


# kind -> opener(root, interval_s); ``auto`` tries them in this order (sysfs first: no subprocess, finer steps)
METERS = OrderedDict([
    ("ina3221-iio", lambda root, interval_s: NanoIio(root).check()),
    ("ina3221-hwmon", lambda root, interval_s: OrinHwmon(root).check()),
    ("tegrastats", _open_tegrastats),
    ("nvml", lambda root, interval_s: Nvml(root).check()),
])
# what --power-meter accepts
CHOICES = ("auto", "ina3221", "tegrastats", "nvml", "none")


def open_power_meter(kind="auto", root=None, interval_s=0.05):
    """(meter or None, reasons): the first usable meter of ``kind``; reasons say why the others were not."""
    root = root if isinstance(root, SysRoot) else SysRoot(root)
    if kind == "none":
        return None, ["power measurement turned off (--power-meter none)"]
    names = [k for k in METERS if kind == "auto" or k == kind or k.startswith(kind + "-")]
    if not names:
        raise ValueError("unknown power meter {!r}; choose one of {}".format(kind, ", ".join(CHOICES)))
    reasons = []
    for name in names:
        try:
            return METERS[name](root, interval_s), reasons
        except PowerUnavailable as exc:
            reasons.append(str(exc))
    return None, reasons


def _by_channel(folder, pattern):
    """Files of ``folder`` matching ``pattern``, in channel order."""
    import glob
    paths = glob.glob(os.path.join(folder, pattern))
    return sorted(paths, key=lambda p: (_channel_of(p) is None, _channel_of(p) or 0, p))


def _channel_of(path):
    """The channel number in "rail_name_2" or "in3_label"; None for other names."""
    m = re.match(r"^(?:rail_name_(\d+)|in(\d+)_label)$", os.path.basename(path))
    return int(m.group(1) or m.group(2)) if m else None
