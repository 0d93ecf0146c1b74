"""The accelerator path on NVIDIA GPUs: the tap loops as Pallas kernels on the Triton backend.

``jspatial._accel.gpu.conv`` holds the convolution (forward, input gradient, weight
gradient); it compiles for compute capability 8.0 and up (A100, H100, H200) and runs in
Pallas' interpret mode on a CPU, which is how the tests check it.
"""
