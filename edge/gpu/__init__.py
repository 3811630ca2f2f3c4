"""GPU support for edge/: a small CUDA runtime (``cuda``, with pycuda, cuda-python and CuPy
adapters) and the CUDA preprocessing kernel (``preprocess.cu``, loaded by ``kernel``, driven by
``preprocess.CudaPreprocessor``).

Nothing here touches CUDA at import time: a runtime is loaded, and its
context created, by ``edge.gpu.cuda.load_runtime()`` and released by its
``close()``.
"""
