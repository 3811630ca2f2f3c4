"""ONNX Runtime backend: the reference runtime on the workstation and where no TensorRT exists.

``--precision int8`` runs the bundle's INT8 Q/DQ variant and ``fp16`` its
FP16 variant, so both can be checked on any machine; ``best`` runs fp32 here
(on a CPU the variants are for checking, not for speed: see the README).

The INT8 variant is evaluated as written: DequantizeLinear(QuantizeLinear(x))
in float, which is what TensorRT's explicit quantization computes. ONNX
Runtime's own fused int8 CPU kernels are switched off for it
(``session.disable_quant_qdq``): on x86 CPUs without VNNI they multiply
uint8 x int8 pairs with 16-bit saturation: with the symmetric int8
activations TensorRT needs, a fully quantized version of the shipped
student agreed with fp32 on 53 % of val images that way against 98 % as
written (benchmarks/variants_cpu.py runs both ways).
"""
import numpy as np
import onnxruntime as ort

from edge.backends import BackendError
from edge.preprocess import HostPreprocessor
from models.bundle import BundleError

# In order of preference; only those this onnxruntime build has are used.
PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")
_NUMPY_TYPES = {"tensor(float)": np.float32, "tensor(float16)": np.float16}


def session_options(precision="fp32", threads=0, fused_int8=False):
    """ONNX Runtime session options for a bundle model of ``precision`` (see the module docstring)."""
    options = ort.SessionOptions()
    if threads:
        options.intra_op_num_threads = int(threads)
    if precision == "int8" and not fused_int8:
        options.add_session_config_entry("session.disable_quant_qdq", "1")
    # intra-op threads block between parallel sections instead of spin-waiting: the pipeline's decode
    # thread shares the cores; spinning cost 13 ms of CPU per image and halved images/s on 2 cores
    # (benchmarks/station_throughput.py --sweep)
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return options


def available():
    return True, "onnxruntime {} imports".format(ort.__version__)


class OrtBackend(object):
    name = "onnxruntime"

    def __init__(self, bundle, precision="fp32", threads=0, providers=None, batch=1, log=None, **_ignored):
        # cache_dir and workspace_mb concern engine builders; ONNX Runtime has nothing to cache
        self.bundle = bundle
        self.precision = "fp32" if precision == "best" else precision
        self.max_batch = max(1, int(batch))
        try:
            self.model_path = bundle.model_path(self.precision)
        except BundleError as exc:
            raise BackendError(str(exc))
        options = session_options(self.precision, threads)
        available_providers = ort.get_available_providers()
        chosen = [p for p in (providers or PREFERRED_PROVIDERS) if p in available_providers] or [
            "CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(self.model_path, sess_options=options, providers=chosen)
        except Exception as exc:  # ONNX Runtime raises its own exception types per version
            raise BackendError("{}: ONNX Runtime cannot load the model: {}".format(self.model_path, exc))
        self.providers = self.session.get_providers()
        self._check_io(bundle)

    def _check_io(self, bundle):
        self.input_name = bundle.input_name
        self.output_names = bundle.output_names
        inputs = dict((i.name, i.type) for i in self.session.get_inputs())
        if self.input_name not in inputs:
            raise BackendError("{}: manifest input {!r} is not in the model's inputs {}".format(
                self.model_path, self.input_name, sorted(inputs)))
        self.input_dtype = _NUMPY_TYPES.get(inputs[self.input_name], np.float32)
        outputs = dict((o.name, o.shape) for o in self.session.get_outputs())
        for name in self.output_names:
            if name not in outputs:
                raise BackendError("{}: manifest output {!r} is not in the model's outputs {}".format(
                    self.model_path, name, sorted(outputs)))
        width = outputs[self.output_names[0]][-1]
        if isinstance(width, int) and width != len(bundle.labels):
            raise BackendError("{}: model gives {} outputs but the manifest has {} labels".format(
                self.model_path, width, len(bundle.labels)))

    def make_preprocessor(self):
        return HostPreprocessor(self.bundle.preprocess, dtype=self.input_dtype)

    def infer(self, batch):
        """NCHW batch (host array) -> first output (logits) as a float32 array."""
        feed = {self.input_name: np.ascontiguousarray(batch, self.input_dtype)}
        return np.asarray(self.session.run(self.output_names, feed)[0], dtype=np.float32)

    def last_times_ms(self):
        return {}

    def describe(self):
        return "onnxruntime {} ({}, {})".format(ort.__version__, ", ".join(self.providers), self.precision)

    def close(self):
        self.session = None
