"""Shape, parameter, cost and receptive-field calculators.

These answer the questions one asks before running a network: how big is each
activation, how many weights, how many multiply-accumulates. They follow the
same formulas as the ops, so ``conv2d(x, w).shape == conv2d_output_shape(...)``.

Every calculator takes ``explain=True``: it then prints its formula with the
numbers put in (one line per axis or term) and returns the same value as without.
The ones that take an input shape also take ``data_format``: ``'NCHW'`` (PyTorch's,
the default) or ``'NHWC'`` (channels last); the shape they return is in that layout.

They live in three modules, re-exported here: ``jspatial.shapes.sizes`` (output sizes),
``jspatial.shapes.costs`` (parameters, MACs, memory) and ``jspatial.shapes.fields``
(receptive fields).

Worked values:

>>> conv_output_size(224, kernel_size=3, stride=2)     # the classic off-by-one
111
>>> conv_output_size(224, 3, stride=2, padding=1, explain=True)
floor((224 + 2*1 - 1*(3-1) - 1) / 2) + 1 = 112
112
>>> conv2d_params(3, 64, 3)
1792
>>> receptive_field([(3, 1), (2, 2), (3, 1), (3, 1)])  # conv3, maxpool2, conv3, conv3
12
"""

from jspatial.shapes.costs import activation_bytes as activation_bytes
from jspatial.shapes.costs import conv2d_macs as conv2d_macs
from jspatial.shapes.costs import conv2d_params as conv2d_params
from jspatial.shapes.costs import conv_transpose2d_macs as conv_transpose2d_macs
from jspatial.shapes.costs import conv_transpose2d_params as conv_transpose2d_params
from jspatial.shapes.fields import receptive_field as receptive_field
from jspatial.shapes.sizes import adaptive_pool2d_output_shape as adaptive_pool2d_output_shape
from jspatial.shapes.sizes import conv2d_output_shape as conv2d_output_shape
from jspatial.shapes.sizes import conv_output_size as conv_output_size
from jspatial.shapes.sizes import conv_transpose2d_output_shape as conv_transpose2d_output_shape
from jspatial.shapes.sizes import output_hw as output_hw
from jspatial.shapes.sizes import pool2d_output_shape as pool2d_output_shape
from jspatial.shapes.sizes import transposed_size as transposed_size
