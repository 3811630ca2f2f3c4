"""GPU support for edge/: a small CUDA runtime (``cuda``) and the CUDA preprocessing kernel.

Nothing here touches CUDA at import time: a runtime is loaded, and its
context created, by ``edge.gpu.cuda.load_runtime()`` and released by its
``close()``.
"""
