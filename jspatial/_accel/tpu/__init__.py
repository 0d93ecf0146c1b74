"""Pallas TPU kernels: the convolution's tap loop, max pooling and batch-norm statistics."""
