"""jspatial: the spatial operations of a CNN written as explicit, fast JAX loops.

Input is NCHW, weights are OIHW, and every op follows PyTorch's semantics
(``torch.nn.functional``). Each op lives in one short file:

- ``jspatial.conv``: ``conv2d`` (a ``fori_loop`` over kernel taps, its hand-written
  backward loop); ``jspatial.conv_transpose``: ``conv_transpose2d``, the same two loops
  the other way round; ``jspatial.im2col`` and ``jspatial.winograd``, the other two
  algorithms of ``conv2d``
- ``jspatial.pad``: ``pad`` (constant, reflect, replicate, circular), by slicing
- ``jspatial.pool``: ``max_pool2d``, ``avg_pool2d`` (tap loops, one shared backward)
- ``jspatial.adaptive``: ``adaptive_avg_pool2d``, ``adaptive_max_pool2d``,
  ``global_avg_pool2d``
- ``jspatial.unpool``: ``max_unpool2d``
- ``jspatial.norm``: ``batch_norm``
- ``jspatial.shapes``: output shapes, parameter counts, MACs, memory, receptive fields
- ``jspatial.steps``: ``steps(op, ...)`` runs an op tap by tap, eagerly, to watch it;
  ``loop_jaxpr(op, ...)`` shows one tap of its compiled loop
- ``jspatial.layers.summary``: ``summary(model, input_shape)`` (``js.summary``), the per-layer
  table of all of those
- ``jspatial.reference``: every op as nested NumPy loops, for tiny inputs
- ``jspatial.layers``: Flax NNX modules with the PyTorch API
"""

from jspatial import reference as reference
from jspatial.adaptive import adaptive_avg_pool2d as adaptive_avg_pool2d
from jspatial.adaptive import adaptive_max_pool2d as adaptive_max_pool2d
from jspatial.adaptive import global_avg_pool2d as global_avg_pool2d
from jspatial.conv import conv2d as conv2d
from jspatial.conv_transpose import conv_transpose2d as conv_transpose2d
from jspatial.layers.summary import summary as summary
from jspatial.norm import batch_norm as batch_norm
from jspatial.pad import pad as pad
from jspatial.pool import avg_pool2d as avg_pool2d
from jspatial.pool import max_pool2d as max_pool2d
from jspatial.shapes import activation_bytes as activation_bytes
from jspatial.shapes import adaptive_pool2d_output_shape as adaptive_pool2d_output_shape
from jspatial.shapes import conv2d_macs as conv2d_macs
from jspatial.shapes import conv2d_output_shape as conv2d_output_shape
from jspatial.shapes import conv2d_params as conv2d_params
from jspatial.shapes import conv_output_size as conv_output_size
from jspatial.shapes import conv_transpose2d_macs as conv_transpose2d_macs
from jspatial.shapes import conv_transpose2d_output_shape as conv_transpose2d_output_shape
from jspatial.shapes import conv_transpose2d_params as conv_transpose2d_params
from jspatial.shapes import pool2d_output_shape as pool2d_output_shape
from jspatial.shapes import receptive_field as receptive_field
from jspatial.steps import Step as Step
from jspatial.steps import loop_jaxpr as loop_jaxpr
from jspatial.steps import steps as steps
from jspatial.unpool import max_unpool2d as max_unpool2d

__version__ = "0.1.0"

__all__ = [
    "activation_bytes",
    "adaptive_pool2d_output_shape",
    "adaptive_avg_pool2d",
    "adaptive_max_pool2d",
    "avg_pool2d",
    "batch_norm",
    "conv2d",
    "conv2d_macs",
    "conv2d_output_shape",
    "conv2d_params",
    "conv_transpose2d",
    "conv_transpose2d_macs",
    "conv_transpose2d_output_shape",
    "conv_transpose2d_params",
    "conv_output_size",
    "global_avg_pool2d",
    "max_pool2d",
    "max_unpool2d",
    "pad",
    "pool2d_output_shape",
    "receptive_field",
    "Step",
    "steps",
    "loop_jaxpr",
    "reference",
    "summary",
]
