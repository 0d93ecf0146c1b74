"""Flax NNX layers with PyTorch's API, thin wrappers over the ``jspatial`` functions.

Every layer is an ``nnx.Module`` (so ``nnx.jit``, ``nnx.grad``, ``nnx.Optimizer``,
``nnx.split``/``merge`` and ``nnx.Sequential`` work on it) with PyTorch's
constructor arguments, parameter names and shapes (NCHW input, OIHW kernels),
``forward`` and ``parameters()``. ``model.eval()``/``model.train()`` switch every
``BatchNorm2d`` inside a model. ``load_torch_state_dict``/``to_torch_state_dict``
move weights to and from PyTorch.

Example:
    >>> import jax.numpy as jnp
    >>> from flax import nnx
    >>> from jspatial.layers import BatchNorm2d, Conv2d, Flatten, MaxPool2d, parameters
    >>> rngs = nnx.Rngs(0)
    >>> model = nnx.Sequential(
    ...     Conv2d(3, 16, 3, padding=1, rngs=rngs), BatchNorm2d(16), nnx.relu, MaxPool2d(2),
    ...     Flatten(), nnx.Linear(16 * 16 * 16, 10, rngs=rngs),
    ... )
    >>> model(jnp.ones((4, 3, 32, 32))).shape
    (4, 10)
    >>> sum(p.size for p in parameters(model))
    41450
"""

from jspatial.layers.conv import Conv2d as Conv2d
from jspatial.layers.conv import ConvTranspose2d as ConvTranspose2d
from jspatial.layers.conv import he_normal_oihw as he_normal_oihw
from jspatial.layers.module import Module as Module
from jspatial.layers.module import named_modules as named_modules
from jspatial.layers.module import named_parameters as named_parameters
from jspatial.layers.module import named_variables as named_variables
from jspatial.layers.module import parameters as parameters
from jspatial.layers.norm import BatchNorm1d as BatchNorm1d
from jspatial.layers.norm import BatchNorm2d as BatchNorm2d
from jspatial.layers.pool import AdaptiveAvgPool2d as AdaptiveAvgPool2d
from jspatial.layers.pool import AdaptiveMaxPool2d as AdaptiveMaxPool2d
from jspatial.layers.pool import AvgPool2d as AvgPool2d
from jspatial.layers.pool import Flatten as Flatten
from jspatial.layers.pool import GlobalAvgPool2d as GlobalAvgPool2d
from jspatial.layers.pool import MaxPool2d as MaxPool2d
from jspatial.layers.pool import MaxUnpool2d as MaxUnpool2d
from jspatial.layers.torch_interop import LoadResult as LoadResult
from jspatial.layers.torch_interop import StateDictError as StateDictError
from jspatial.layers.torch_interop import load_torch_state_dict as load_torch_state_dict
from jspatial.layers.torch_interop import to_torch_state_dict as to_torch_state_dict

__all__ = [
    "AdaptiveAvgPool2d",
    "AdaptiveMaxPool2d",
    "AvgPool2d",
    "BatchNorm1d",
    "BatchNorm2d",
    "Conv2d",
    "ConvTranspose2d",
    "Flatten",
    "GlobalAvgPool2d",
    "LoadResult",
    "MaxPool2d",
    "MaxUnpool2d",
    "Module",
    "StateDictError",
    "he_normal_oihw",
    "load_torch_state_dict",
    "named_modules",
    "named_parameters",
    "named_variables",
    "parameters",
    "to_torch_state_dict",
]
