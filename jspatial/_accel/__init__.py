"""The accelerator path: the same tap loops, run on-chip as Pallas kernels.

``tpu/`` holds the TPU kernels (Pallas TPU), ``gpu/`` the NVIDIA GPU kernels (Pallas
Triton), and ``dispatch`` the one table that says which runs for which compile
target (``kernel_for``); see ``bench/accel.py`` and ``bench/gpu.py`` for what each saves.
"""
