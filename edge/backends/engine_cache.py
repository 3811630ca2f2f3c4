"""TensorRT engines, timing caches and calibration caches on disk, under ``edge.home`` paths.

An engine is not portable across TensorRT versions or GPUs, and is only the
engine it claims to be for one model variant, precision, shape and workspace.
So each engine ``engines/<model>-<sha8>-<precision>-b<batch>.engine`` has a key
file beside it (``.json``) holding every field that made it; an engine is
loaded only when its key equals the key asked for, its bytes match the sha256
in the key file, and TensorRT deserializes it. Otherwise it is rebuilt, with
a line saying why (a TensorRT upgrade is the usual reason: torch2trt #46,
#371, #537).

Engines are written atomically (a temporary file, then ``os.replace``), never
next to the read-only bundle. A cache folder that cannot be written is one
warning, and the run goes on with the engine in memory: jetson-inference users
lose minutes at every start to a silent unwritable cache (#1031, #1644).
"""
import glob
import hashlib
import json
import os
import re
import time
from collections import OrderedDict

from edge import home

# Every field that makes an engine non-portable, in the order the key file lists them.
KEY_FIELDS = ("model_sha256", "variant", "tensorrt", "gpu", "compute_capability", "precision", "input_shape",
              "max_batch", "workspace_bytes", "calibration_sha256")


def engine_key(**fields):
    """The key as an ordered dict of exactly KEY_FIELDS (JSON-able values)."""
    missing = [f for f in KEY_FIELDS if f not in fields]
    extra = sorted(set(fields) - set(KEY_FIELDS))
    if missing or extra:
        raise ValueError("engine key: missing {} / unknown {}".format(missing, extra))
    key = OrderedDict((f, fields[f]) for f in KEY_FIELDS)
    return json.loads(json.dumps(key), object_pairs_hook=OrderedDict)  # tuples -> lists, as read back


def key_digest(key):
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode("utf-8")).hexdigest()


def slug(text):
    return re.sub(r"[^A-Za-z0-9._-]+", "-", str(text)).strip("-.") or "model"


def sha256_bytes(data):
    return hashlib.sha256(data).hexdigest()


class EngineCache(object):
    """Reads and writes under ``home.engine_dir(cache_dir)`` and ``home.timing_cache_dir(cache_dir)``."""

    def __init__(self, cache_dir=None, log=None):
        self.engine_dir = home.engine_dir(cache_dir)
        self.timing_dir = home.timing_cache_dir(cache_dir)
        self.calibration_dir = home.calibration_dir(cache_dir)
        self.log = log or (lambda line: None)
        self._warned = set()

    # -- engines -------------------------------------------------------------------------------------
    def engine_path(self, model_name, key):
        name = "{}-{}-{}-b{}.engine".format(slug(model_name), key["model_sha256"][:8], key["precision"],
                                           key["max_batch"])
        return os.path.join(self.engine_dir, name)

    def load(self, path, key, deserialize):
        """The engine at ``path`` if its key file says ``key`` and TensorRT reads it; else None, saying why."""
        key_path = path + ".json"
        if not os.path.isfile(key_path) or not os.path.isfile(path):
            return None
        try:
            with open(key_path, "r") as f:
                record = json.load(f, object_pairs_hook=OrderedDict)
            stored = record["key"]
        except (OSError, ValueError, KeyError, TypeError) as exc:
            self.log("cached engine {}: its key file cannot be read ({}); rebuilding".format(path, exc))
            return None
        if stored != key:
            self.log("cached engine {} was built for another {}; rebuilding".format(path, _differences(stored, key)))
            return None
        try:
            with open(path, "rb") as f:
                plan = f.read()
        except OSError as exc:
            self.log("cached engine {} cannot be read ({}); rebuilding".format(path, exc))
            return None
        if sha256_bytes(plan) != record.get("engine_sha256"):
            self.log("cached engine {} is damaged (its sha256 differs from its key file); rebuilding".format(path))
            return None
        try:
            engine = deserialize(plan)
        except Exception as exc:  # TensorRT raises its own types, or returns None
            engine, why = None, "{}: {}".format(type(exc).__name__, " ".join(str(exc).split()))
        else:
            why = "TensorRT returned no engine"
        if engine is None:
            self.log("cached engine {} cannot be deserialized ({}); rebuilding".format(path, why))
            return None
        return engine

    def store(self, path, key, plan, info=None):
        """Write the engine, then its key file, atomically; return ``path``, or None after one warning."""
        record = OrderedDict([("key", key), ("engine_sha256", sha256_bytes(plan)), ("engine_bytes", len(plan)),
                              ("written_at", time.strftime("%Y-%m-%dT%H:%M:%S%z"))])
        record.update(info or {})
        text = json.dumps(record, indent=2) + "\n"
        if self.write_atomic(path, plan, "engine") and self.write_atomic(path + ".json", text.encode("utf-8"),
                                                                          "engine"):
            return path
        return None

    # -- timing and calibration caches ----------------------------------------------------------------
    def timing_cache_path(self, tensorrt_version, gpu_name, compute_capability):
        """One timing cache per TensorRT version (and GPU: timings are not portable either)."""
        name = "tensorrt-{}-{}-sm{}{}.cache".format(slug(tensorrt_version), slug(gpu_name), *compute_capability)
        return os.path.join(self.timing_dir, name)

    def calibration_cache_path(self, model_sha256, images_dir=None):
        """The calibration cache for this model: for ``images_dir`` (keyed by its listing), else the newest one.

        Returns None when there is no images folder and no cache yet.
        """
        prefix = os.path.join(self.calibration_dir, "{}-".format(model_sha256[:16]))
        if images_dir:
            return prefix + folder_digest(images_dir)[:16] + ".cache"
        found = sorted(glob.glob(prefix + "*.cache"), key=os.path.getmtime)
        return found[-1] if found else None

    def read_bytes(self, path):
        try:
            with open(path, "rb") as f:
                return f.read()
        except (OSError, TypeError):
            return None

    def write_atomic(self, path, data, what):
        folder = os.path.dirname(path)
        tmp = "{}.tmp-{}".format(path, os.getpid())
        try:
            if not os.path.isdir(folder):
                os.makedirs(folder)
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
            return True
        except OSError as exc:
            _remove_quietly(tmp)
            self.warn_unwritable(folder, what, exc)
            return False

    def warn_unwritable(self, folder, what, exc):
        """One warning per cache (engines, timing and calibration caches share a root): the first failure."""
        if self._warned:
            return
        self._warned.add(folder)
        self.log("warning: the {} cache {} is not writable ({}); going on with what is in memory, but the next "
                 "start will build again: give --cache-dir a writable folder or set $RETINA_EDGE_HOME".format(
                     what, folder, getattr(exc, "strerror", None) or exc))


def folder_digest(folder):
    """sha256 over the image files of ``folder`` (relative paths and sizes): which images calibrated."""
    from edge.io.decode import IMAGE_SUFFIXES
    digest = hashlib.sha256()
    for rel, size in _image_listing(folder, IMAGE_SUFFIXES):
        digest.update("{}\0{}\n".format(rel, size).encode("utf-8"))
    return digest.hexdigest()


def _image_listing(folder, suffixes):
    out = []
    for dirpath, dirnames, files in os.walk(folder):
        dirnames.sort()
        for name in sorted(files):
            if name.lower().endswith(tuple(suffixes)):
                path = os.path.join(dirpath, name)
                out.append((os.path.relpath(path, folder).replace(os.sep, "/"), os.path.getsize(path)))
    return out


def _differences(stored, wanted):
    fields = [f for f in KEY_FIELDS if stored.get(f) != wanted.get(f)]
    fields += sorted(f for f in set(stored) - set(KEY_FIELDS))
    return ", ".join("{} ({} -> {})".format(f, _short(stored.get(f)), _short(wanted.get(f))) for f in fields)


def _short(value):
    text = json.dumps(value)
    return text[1:13] + "..." if isinstance(value, str) and len(value) == 64 else text


def _remove_quietly(path):
    try:
        os.remove(path)
    except OSError:
        pass
