"""Fakes of what cannot exist on this machine: TensorRT's Python module (8.2, 8.6, 10.x, 11.x) and a CUDA runtime.

    from trtfakes import make_tensorrt, FakeCudaRuntime
    cuda = FakeCudaRuntime(compute_capability=(5, 3))
    trt = make_tensorrt("8.2.1.8", memory=cuda.memory)
    backend = TensorRTBackend(bundle, trt=trt, runtime=cuda, ...)

They are injected through the TrtApi / backend constructor, never by
patching ``sys.modules``. ``trt.fake`` records the calls made.
"""
from trtfakes.cuda_fake import FakeCudaRuntime  # noqa: F401
from trtfakes.tensorrt_fake import VERSIONS, make_tensorrt  # noqa: F401
