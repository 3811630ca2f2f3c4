"""GPU support for edge/: the CUDA preprocessing kernel (preprocess.cu) and its loaders."""
