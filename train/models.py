"""CIFAR-10 models built from ``jspatial.layers`` (NCHW input, PyTorch-style layers).

- ``airbench94``: Keller Jordan's airbench94 network (the fastest known recipe to 94% on
  CIFAR-10): a frozen 2x2 "whitening" convolution initialised from the training data, three
  conv-pool-norm groups (64, 256, 256 channels) and a linear head scaled by 1/9.
- ``resnet18``: the CIFAR variant of ResNet-18 (3x3 stem, no max-pool, 11.2M parameters).
- ``vgg11``: VGG-11 with batch norm, CIFAR-sized (one linear layer on the 512-d feature).
- ``simple_cnn``: two conv-relu-pool stages and a linear layer, 25,578 parameters.

Every model maps float ``(N, 3, 32, 32)`` to logits ``(N, 10)``; built with
``data_format="NHWC"`` its layers run channels last and it takes ``(N, 32, 32, 3)``, with the
same parameters (OIHW kernels, the head reading features in PyTorch's ``(C, H, W)`` order),
so a checkpoint loads into either layout. ``dtype`` (default ``None``:
float32) is the compute dtype of every layer, e.g. ``jnp.bfloat16`` for mixed precision: the
parameters and BatchNorm statistics stay float32 and are cast for the computation, BatchNorm
statistics and all sums are accumulated in float32. Trainable arrays are
``nnx.Param``; arrays that must never be trained (airbench's whitening filters and its
BatchNorm scales) are :class:`Frozen`, a separate variable type the optimiser never sees.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from jspatial._windows import nchw_to_nhwc
from jspatial.layers import BatchNorm2d, Conv2d, Flatten, GlobalAvgPool2d, MaxPool2d
from jspatial.layers.module import named_modules

NUM_CLASSES = 10


class Frozen(nnx.Variable):
    """A model array that is part of the state (checkpointed, averaged) but never trained."""


def torch_default_oihw(key, shape, dtype=jnp.float32):
    """PyTorch's default ``Conv2d`` init, ``kaiming_uniform_(a=sqrt(5))``: U(+-1/sqrt(fan_in))."""
    bound = 1.0 / math.sqrt(math.prod(shape[1:]))
    return jax.random.uniform(key, shape, dtype, -bound, bound)


# PyTorch's default ``nn.Linear`` init for an (in, out) kernel: U(+-1/sqrt(fan_in)).
torch_default_linear = nnx.initializers.variance_scaling(1 / 3, "fan_in", "uniform")


def dirac_init(weight, n):
    """Makes the first ``n`` output filters of an OIHW kernel identity taps (``dirac_``).

    Filter ``i < n`` passes input channel ``i`` through its centre tap and ignores the rest.
    """
    c_out, c_in, kh, kw = weight.shape
    n = min(n, c_out, c_in)
    eye = jnp.zeros((n, c_in, kh, kw), weight.dtype)
    eye = eye.at[jnp.arange(n), jnp.arange(n), kh // 2, kw // 2].set(1)
    return weight.at[:n].set(eye)


def layout(data_format):
    """The keyword arguments that build a layer in ``data_format`` (``'NCHW'``, every
    layer's default, needs none)."""
    return {} if data_format == "NCHW" else {"data_format": data_format}


def model_input(images, data_format):
    """NCHW images ``(N, 3, H, W)`` as a model in ``data_format`` takes them: the batch is
    moved to channels last once, after augmentation, for an NHWC model."""
    return nchw_to_nhwc(images) if data_format == "NHWC" else images


def gelu(x):
    """GELU with the exact erf form, as ``torch.nn.GELU()`` (JAX defaults to the tanh form).

    Values are ``jax.nn.gelu``'s. The derivative is written out on CPUs and GPUs
    (``_gelu_written``): JAX's automatic derivative of ``jax.nn.gelu`` keeps several of its
    intermediates per activation alive until the backward pass, the written one keeps one.
    A TPU compile keeps the automatic one, which XLA fuses there into fewer HBM bytes.
    """
    return jax.lax.platform_dependent(x, tpu=_gelu_autodiff, default=_gelu_written)


def _gelu_autodiff(x):
    return jax.nn.gelu(x, approximate=False)


@jax.custom_jvp
def _gelu_written(x):
    """``jax.nn.gelu``, differentiated as torch's GELU backward: ``Phi(x) + x * phi(x)``,
    the normal CDF and density."""
    return _gelu_autodiff(x)


@_gelu_written.defjvp
def _gelu_jvp(primals, tangents):
    (x,), (t,) = primals, tangents
    # Python floats, so the constants take x's dtype: 1/sqrt(2) and 1/sqrt(2 pi).
    cdf = 0.5 * (1.0 + jax.lax.erf(x * 0.7071067811865476))
    pdf = 0.3989422804014327 * jnp.exp(-0.5 * x * x)
    return _gelu_autodiff(x), t * (cdf + x * pdf)


# ----------------------------------------------------------------------------- airbench94


class ConvGroup(nnx.Module):
    """conv3x3 -> maxpool2 -> BN -> GELU -> conv3x3 -> BN -> GELU (airbench's block)."""

    def __init__(self, c_in, c_out, *, bn_momentum, bn_eps, rngs, dtype=None, data_format="NCHW"):
        fmt = layout(data_format)
        self.conv1 = _airbench_conv(c_in, c_out, rngs, dtype, fmt)
        self.pool = MaxPool2d(2, **fmt)
        self.norm1 = _airbench_norm(c_out, bn_momentum, bn_eps, dtype, fmt)
        self.conv2 = _airbench_conv(c_out, c_out, rngs, dtype, fmt)
        self.norm2 = _airbench_norm(c_out, bn_momentum, bn_eps, dtype, fmt)

    def __call__(self, x):
        x = gelu(self.norm1(self.pool(self.conv1(x))))
        return gelu(self.norm2(self.conv2(x)))


def _airbench_conv(c_in, c_out, rngs, dtype=None, fmt=None):
    conv = Conv2d(
        c_in, c_out, 3, padding=1, bias=False, kernel_init=torch_default_oihw, dtype=dtype,
        rngs=rngs, **(fmt or {}),
    )  # fmt: skip
    # An implicit residual: the first c_in filters start as the identity.
    conv.weight[...] = dirac_init(conv.weight[...], c_in)
    return conv


def _airbench_norm(c, momentum, eps, dtype=None, fmt=None):
    norm = BatchNorm2d(c, eps=eps, momentum=momentum, dtype=dtype, **(fmt or {}))
    norm.weight = Frozen(norm.weight[...])  # scale fixed at 1; only the bias (shift) trains
    return norm


class Airbench94(nnx.Module):
    """airbench94: whiten(2x2, frozen) -> GELU -> 3 ConvGroups -> maxpool3 -> linear / 9.

    ``bn_momentum`` is in PyTorch's convention: airbench94 writes ``BatchNorm(momentum=0.6)``
    and hands ``1 - 0.6 = 0.4`` to ``torch.nn.BatchNorm2d``, so the running statistics move
    as ``running = 0.6 * running + 0.4 * batch``.
    """

    def __init__(
        self,
        widths=(64, 256, 256),
        *,
        whiten_kernel=2,
        bn_momentum=0.4,
        bn_eps=1e-12,
        scaling_factor=1 / 9,
        rngs,
        dtype=None,
        data_format="NCHW",
    ):
        fmt = layout(data_format)
        whiten_width = 2 * 3 * whiten_kernel**2
        self.whiten = Conv2d(
            3, whiten_width, whiten_kernel, padding=0, bias=True,
            kernel_init=torch_default_oihw, dtype=dtype, rngs=rngs, **fmt,
        )  # fmt: skip
        # Set from the data by ``init_whitening``, then never trained.
        self.whiten.weight = Frozen(self.whiten.weight[...])
        chans = (whiten_width, *widths)
        self.groups = nnx.List(
            [
                ConvGroup(
                    a,
                    b,
                    bn_momentum=bn_momentum,
                    bn_eps=bn_eps,
                    rngs=rngs,
                    dtype=dtype,
                    data_format=data_format,
                )  # fmt: skip
                for a, b in zip(chans[:-1], chans[1:])
            ]
        )
        self.pool = MaxPool2d(3, **fmt)
        # The pool leaves 1x1 maps, whose (C, H, W) and (H, W, C) orders agree: no transpose.
        self.flatten = Flatten()
        self.head = nnx.Linear(
            widths[-1], NUM_CLASSES, use_bias=False, kernel_init=torch_default_linear,
            dtype=dtype, rngs=rngs,
        )  # fmt: skip
        self.scaling_factor = scaling_factor
        self.data_format = data_format

    def __call__(self, x):
        x = gelu(self.whiten(x))
        for group in self.groups:
            x = group(x)
        return self.head(self.flatten(self.pool(x))) * self.scaling_factor


def whitening_weights(images, kernel_size=2, eps=5e-4, chunk=1000):
    """airbench's whitening filters from normalised images ``(N, 3, H, W)``.

    Takes every ``k x k`` patch (``3 k^2`` values), estimates the (uncentred) patch
    covariance, and returns ``concat(F, -F)`` with ``F = V^T / sqrt(lambda + eps)`` reshaped
    to ``(3 k^2, 3, k, k)``: the eigenvectors as filters, largest eigenvalue first, so that
    ``conv(x, F)`` has (nearly) identity covariance over patches.
    """
    n, c, h, w = images.shape
    k = kernel_size
    cov = jnp.zeros((c * k * k, c * k * k), jnp.float32)
    for start in range(0, n, chunk):
        cov = cov + _patch_gram(jnp.asarray(images[start : start + chunk], jnp.float32), k)
    cov = cov / (n * (h - k + 1) * (w - k + 1))
    eigenvalues, eigenvectors = jnp.linalg.eigh(cov)
    eigenvalues, eigenvectors = eigenvalues[::-1], eigenvectors[:, ::-1]
    filters = (eigenvectors.T / jnp.sqrt(eigenvalues + eps)[:, None]).reshape(-1, c, k, k)
    return jnp.concatenate([filters, -filters])


@jax.jit(static_argnums=1)
def _patch_gram(images, k):
    """Sum over all ``k x k`` patches of ``p p^T``, patch order ``(channel, row, col)``."""
    h, w = images.shape[2] - k + 1, images.shape[3] - k + 1
    taps = [images[:, :, i : i + h, j : j + w] for i in range(k) for j in range(k)]
    patches = jnp.stack(taps, axis=2).reshape(images.shape[0], -1, h, w)
    return jnp.einsum("nphw,nqhw->pq", patches, patches, precision=jax.lax.Precision.HIGHEST)


def init_whitening(model, images):
    """Sets ``model.whiten`` (if the model has one) from normalised training images."""
    if isinstance(model, Airbench94):
        k = model.whiten.kernel_size[0]
        model.whiten.weight[...] = whitening_weights(images, k)


# ----------------------------------------------------------------------------- ResNet-18


class BasicBlock(nnx.Module):
    """conv3x3-BN-ReLU-conv3x3-BN plus a (1x1-conv-BN when the shape changes) shortcut."""

    def __init__(self, c_in, c_out, stride, *, rngs, dtype=None, data_format="NCHW"):
        fmt = dict(dtype=dtype, **layout(data_format))
        self.conv1 = Conv2d(c_in, c_out, 3, stride, 1, bias=False, rngs=rngs, **fmt)
        self.bn1 = BatchNorm2d(c_out, **fmt)
        self.conv2 = Conv2d(c_out, c_out, 3, 1, 1, bias=False, rngs=rngs, **fmt)
        self.bn2 = BatchNorm2d(c_out, **fmt)
        if stride != 1 or c_in != c_out:
            self.shortcut = nnx.Sequential(
                Conv2d(c_in, c_out, 1, stride, bias=False, rngs=rngs, **fmt),
                BatchNorm2d(c_out, **fmt),
            )
        else:
            self.shortcut = None

    def __call__(self, x):
        y = nnx.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return nnx.relu(y + (x if self.shortcut is None else self.shortcut(x)))


class ResNet18(nnx.Module):
    """ResNet-18 for 32x32 inputs: 3x3 stem (64), stages [2, 2, 2, 2] of 64/128/256/512."""

    def __init__(self, widths=(64, 128, 256, 512), blocks=(2, 2, 2, 2), *, rngs, dtype=None,
                 data_format="NCHW"):  # fmt: skip
        fmt = layout(data_format)
        self.stem = Conv2d(3, widths[0], 3, padding=1, bias=False, dtype=dtype, rngs=rngs, **fmt)
        self.bn = BatchNorm2d(widths[0], dtype=dtype, **fmt)
        layers, c_in = [], widths[0]
        for i, (width, n) in enumerate(zip(widths, blocks)):
            for j in range(n):
                stride = 2 if i > 0 and j == 0 else 1
                layers.append(BasicBlock(c_in, width, stride, rngs=rngs, dtype=dtype,
                                         data_format=data_format))  # fmt: skip
                c_in = width
        self.layers = nnx.List(layers)
        self.pool = GlobalAvgPool2d(**fmt)
        self.head = nnx.Linear(
            c_in, NUM_CLASSES, kernel_init=torch_default_linear, dtype=dtype, rngs=rngs
        )

    def __call__(self, x):
        x = nnx.relu(self.bn(self.stem(x)))
        for layer in self.layers:
            x = layer(x)
        return self.head(self.pool(x))


# ----------------------------------------------------------------------------- VGG


VGG_CONFIGS = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg13": (64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
}


class VGG(nnx.Module):
    """VGG with batch norm for CIFAR: conv3x3-BN-ReLU stages, 5 max-pools, one linear layer."""

    def __init__(self, config="vgg11", *, rngs, dtype=None, data_format="NCHW"):
        fmt = layout(data_format)
        layers, c_in = [], 3
        for item in VGG_CONFIGS[config]:
            if item == "M":
                layers.append(MaxPool2d(2, **fmt))
            else:
                layers += [
                    Conv2d(c_in, item, 3, padding=1, bias=False, dtype=dtype, rngs=rngs, **fmt),
                    BatchNorm2d(item, dtype=dtype, **fmt),
                ]
                layers.append(nnx.relu)
                c_in = item
        self.features = nnx.Sequential(*layers)
        self.flatten = Flatten(**fmt)  # PyTorch's (C, H, W) feature order in either layout
        self.head = nnx.Linear(
            c_in, NUM_CLASSES, kernel_init=torch_default_linear, dtype=dtype, rngs=rngs
        )
        self.data_format = data_format

    def __call__(self, x):
        return self.head(self.flatten(self.features(x)))


# ----------------------------------------------------------------------------- simple CNN


class SimpleCNN(nnx.Module):
    """Conv(3->16)-ReLU-MaxPool2-Conv(16->32)-ReLU-MaxPool2-Flatten-Linear(2048->10)."""

    def __init__(self, *, rngs, dtype=None, data_format="NCHW"):
        fmt = layout(data_format)
        self.conv1 = Conv2d(3, 16, 3, padding=1, dtype=dtype, rngs=rngs, **fmt)
        self.conv2 = Conv2d(16, 32, 3, padding=1, dtype=dtype, rngs=rngs, **fmt)
        self.pool = MaxPool2d(2, **fmt)
        self.data_format = data_format
        self.flatten = Flatten(**fmt)  # PyTorch's (C, H, W) feature order in either layout
        self.head = nnx.Linear(
            32 * 8 * 8, NUM_CLASSES, kernel_init=torch_default_linear, dtype=dtype, rngs=rngs
        )

    def __call__(self, x):
        x = self.pool(nnx.relu(self.conv1(x)))
        x = self.pool(nnx.relu(self.conv2(x)))
        return self.head(self.flatten(x))


# ----------------------------------------------------------------------------- registry


MODELS: dict[str, Callable[..., nnx.Module]] = {
    "airbench94": Airbench94,
    "resnet18": ResNet18,
    "vgg11": functools.partial(VGG, "vgg11"),
    "vgg13": functools.partial(VGG, "vgg13"),
    "simple_cnn": SimpleCNN,
}


def build_model(name, seed=0, dtype=None, data_format="NCHW"):
    """A freshly initialised model by name (see ``MODELS``), parameters drawn from ``seed``.

    ``dtype`` is the compute dtype (``None``: float32; ``jnp.bfloat16`` for mixed precision);
    the parameters are float32 either way. ``data_format`` is the layers' layout, and so the
    model's input's: ``'NCHW'`` or ``'NHWC'``; the parameters are the same either way.

    The initial weights come from an ``rbg`` key (XLA's RngBitGenerator): on CPU its kernels
    compile about 5x faster than the default threefry ones, which matters when every
    differently shaped initialiser is compiled once (tens of seconds for ResNet-18).
    """
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    rngs = nnx.Rngs(jax.random.key(seed, impl="rbg"))
    return MODELS[name](rngs=rngs, dtype=dtype, data_format=data_format)


def count_params(model, variable_type=nnx.Param):
    """Number of scalars in the ``variable_type`` variables of ``model``."""
    return sum(x.size for x in jax.tree.leaves(nnx.state(model, variable_type)))


def first_conv(model):
    """The first ``Conv2d`` in attribute order (airbench's whitening layer, ResNet's stem)."""
    for _, module in named_modules(model):  # attribute order, unlike nnx.iter_modules
        if isinstance(module, Conv2d):
            return module
    raise ValueError(f"{type(model).__name__} has no Conv2d")


def bn_bias_paths(model):
    """Paths of the BatchNorm shifts (airbench's "norm biases", trained with a larger lr)."""
    return {
        (*path, "bias")
        for path, module in nnx.iter_modules(model)
        if isinstance(module, BatchNorm2d) and module.bias is not None
    }


def path_mask(paths):
    """An optax mask function: ``True`` for the leaves whose path is in ``paths``.

    It runs on the pure nested dict of ``nnx.Param`` arrays that ``nnx.Optimizer`` hands to
    optax; ``paths`` are tuples of attribute names and list indices (``nnx.iter_modules``).
    """

    def mask(tree):
        return jax.tree_util.tree_map_with_path(lambda p, _: _key_tuple(p) in paths, tree)

    return mask


def _key_tuple(path):
    return tuple(getattr(k, "key", getattr(k, "idx", k)) for k in path)
