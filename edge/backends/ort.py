"""ONNX Runtime backend: the reference runtime on the workstation and where no TensorRT exists."""
import numpy as np
import onnxruntime as ort

from edge.backends import BackendError

# In order of preference; only those this onnxruntime build has are used.
PREFERRED_PROVIDERS = ("CUDAExecutionProvider", "CPUExecutionProvider")


class OrtBackend(object):
    name = "onnxruntime"

    def __init__(self, bundle, threads=0, providers=None):
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = int(threads)
        available = ort.get_available_providers()
        chosen = [p for p in (providers or PREFERRED_PROVIDERS) if p in available] or ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(bundle.onnx_path, sess_options=options, providers=chosen)
        except Exception as exc:  # ONNX Runtime raises its own exception types per version
            raise BackendError("{}: ONNX Runtime cannot load the model: {}".format(bundle.onnx_path, exc))
        self.providers = self.session.get_providers()
        self.input_name = bundle.input_name
        self.output_names = bundle.output_names
        names = [i.name for i in self.session.get_inputs()]
        if self.input_name not in names:
            raise BackendError("{}: manifest input {!r} is not in the model's inputs {}".format(
                bundle.onnx_path, self.input_name, names))
        outputs = dict((o.name, o.shape) for o in self.session.get_outputs())
        for name in self.output_names:
            if name not in outputs:
                raise BackendError("{}: manifest output {!r} is not in the model's outputs {}".format(
                    bundle.onnx_path, name, sorted(outputs)))
        width = outputs[self.output_names[0]][-1]
        if isinstance(width, int) and width != len(bundle.labels):
            raise BackendError("{}: model gives {} outputs but the manifest has {} labels".format(
                bundle.onnx_path, width, len(bundle.labels)))

    def infer(self, batch):
        """NCHW float32 batch -> first output (logits) as float32 array."""
        outputs = self.session.run(self.output_names, {self.input_name: np.ascontiguousarray(batch, np.float32)})
        return outputs[0]

    def describe(self):
        return "onnxruntime {} ({})".format(ort.__version__, ", ".join(self.providers))
