"""The one place where user-facing arguments are checked and normalised.

Every public op and layer funnels its hyper-parameters through these helpers, so
that ``stride=2`` and ``stride=(2, 2)`` mean the same everywhere and every bad
value produces the same kind of message: the op, the argument as spelled in the
signature, and the value seen. ``op`` is the name the user called (``conv2d``
for the function, ``Conv2d`` for the layer).

The checks live in three files by what they check: ``values`` (ints, pairs, flags,
numbers, choices, and the argument kinds of the public signatures: ``IntOrPair``,
``Padding``, ``OutputSize``), ``arrays`` (inputs, operands, indices, layouts) and
``geometry`` (padding, windows, groups, output sizes). The ops use them as ``_args.X``.
"""

from jspatial._args.arrays import _AXES as _AXES
from jspatial._args.arrays import DATA_FORMATS as DATA_FORMATS
from jspatial._args.arrays import batched as batched
from jspatial._args.arrays import channel_axis as channel_axis
from jspatial._args.arrays import check_array as check_array
from jspatial._args.arrays import check_bias as check_bias
from jspatial._args.arrays import check_data_format as check_data_format
from jspatial._args.arrays import check_indices as check_indices
from jspatial._args.arrays import check_input as check_input
from jspatial._args.arrays import check_operand as check_operand
from jspatial._args.arrays import spatial_shape as spatial_shape
from jspatial._args.arrays import unbatch as unbatch
from jspatial._args.geometry import adaptive_output_size as adaptive_output_size
from jspatial._args.geometry import check_fits as check_fits
from jspatial._args.geometry import check_groups as check_groups
from jspatial._args.geometry import conv_padding as conv_padding
from jspatial._args.geometry import output_padding as output_padding
from jspatial._args.geometry import pool_params as pool_params
from jspatial._args.geometry import unpool_output_size as unpool_output_size
from jspatial._args.values import IntOrPair as IntOrPair
from jspatial._args.values import OutputSize as OutputSize
from jspatial._args.values import Padding as Padding
from jspatial._args.values import Padding2d as Padding2d
from jspatial._args.values import Pair as Pair
from jspatial._args.values import check_bool as check_bool
from jspatial._args.values import check_divisor_override as check_divisor_override
from jspatial._args.values import check_eps as check_eps
from jspatial._args.values import check_int as check_int
from jspatial._args.values import check_momentum as check_momentum
from jspatial._args.values import check_number as check_number
from jspatial._args.values import is_int as is_int
from jspatial._args.values import one_of as one_of
from jspatial._args.values import pair as pair
from jspatial._args.values import positive_int as positive_int
