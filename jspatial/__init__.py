"""jspatial: the spatial operations of a CNN written as explicit, fast JAX loops.

Input is NCHW, weights are OIHW, and every op follows PyTorch's semantics
(``torch.nn.functional``). Each op lives in one short file:

- ``jspatial.conv``: ``conv2d`` (a ``fori_loop`` over kernel taps, hand-written VJP)
- ``jspatial.pool``: ``max_pool2d``, ``avg_pool2d``, ``global_avg_pool2d``
- ``jspatial.norm``: ``batch_norm``
- ``jspatial.shapes``: output shapes, parameter counts, MACs, memory, receptive fields
- ``jspatial.reference``: the seven-nested-loop NumPy versions, for tiny inputs
- ``jspatial.layers``: Flax NNX modules with the PyTorch API
"""

from jspatial import reference as reference
from jspatial.conv import conv2d as conv2d
from jspatial.norm import batch_norm as batch_norm
from jspatial.pool import avg_pool2d as avg_pool2d
from jspatial.pool import global_avg_pool2d as global_avg_pool2d
from jspatial.pool import max_pool2d as max_pool2d
from jspatial.shapes import activation_bytes as activation_bytes
from jspatial.shapes import conv2d_macs as conv2d_macs
from jspatial.shapes import conv2d_output_shape as conv2d_output_shape
from jspatial.shapes import conv2d_params as conv2d_params
from jspatial.shapes import conv_output_size as conv_output_size
from jspatial.shapes import pool2d_output_shape as pool2d_output_shape
from jspatial.shapes import receptive_field as receptive_field

__version__ = "0.1.0"

__all__ = [
    "activation_bytes",
    "avg_pool2d",
    "batch_norm",
    "conv2d",
    "conv2d_macs",
    "conv2d_output_shape",
    "conv2d_params",
    "conv_output_size",
    "global_avg_pool2d",
    "max_pool2d",
    "pool2d_output_shape",
    "receptive_field",
    "reference",
]
