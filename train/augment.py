"""On-device CIFAR-10 augmentation: normalise, random translate (reflect-pad + crop), flip.

Everything here is a pure ``jax.numpy`` function of uint8 or float NCHW batches, meant to
run inside the jitted train step so that the dataset stays on the device as uint8 and no
augmented copy is ever made on the host.

The random crop is gather-free: with ``translate = r`` a crop offset takes one of
``2r + 1`` values per axis, so the crop is ``2r + 1`` masked selects of static slices for
the rows and again for the columns (airbench's trick) instead of a per-image
``dynamic_slice``, which XLA lowers to a gather.

Flipping follows airbench's alternating scheme: every image draws one random bit once
(``base_flip``) and is mirrored in epoch ``e`` when ``base_flip XOR (e odd)``, so each image
is seen mirrored exactly every other epoch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


def normalize(images, dtype=jnp.float32):
    """uint8 ``(N, 3, H, W)`` in ``[0, 255]`` -> per-channel standardised ``dtype``."""
    mean = jnp.asarray(CIFAR_MEAN, dtype)[:, None, None]
    std = jnp.asarray(CIFAR_STD, dtype)[:, None, None]
    return (images.astype(dtype) / 255 - mean) / std


def reflect_pad(images, pad):
    """Pad the two spatial axes by ``pad`` with reflection (PyTorch's ``'reflect'``)."""
    if pad == 0:
        return images
    return jnp.pad(images, ((0, 0), (0, 0), (pad, pad), (pad, pad)), mode="reflect")


def _select_offset(images, offsets, size, axis):
    """``out[n] = images[n, ..., offsets[n] : offsets[n] + size, ...]`` along ``axis`` (2 or 3)."""
    out = None
    for s in range(images.shape[axis] - size + 1):
        window = jax.lax.slice_in_dim(images, s, s + size, axis=axis)
        chosen = (offsets == s)[:, None, None, None]
        out = window if out is None else jnp.where(chosen, window, out)
    return out


def crop(padded, dy, dx, size):
    """Per-image crop of ``(N, C, H, W)``: rows ``dy[n] : dy[n] + size``, same for columns.

    ``dy`` and ``dx`` are int arrays of shape ``(N,)`` with values in ``[0, H - size]``.
    """
    rows = _select_offset(padded, dy, size, axis=2)
    return _select_offset(rows, dx, size, axis=3)


def flip(images, mask):
    """Mirror left-right the images where the boolean ``mask`` of shape ``(N,)`` is true."""
    return jnp.where(mask[:, None, None, None], images[..., ::-1], images)


def random_offsets(key, n, translate):
    """Crop offsets ``(dy, dx)``, each ``(N,)`` uniform in ``[0, 2 * translate]``."""
    dy, dx = jax.random.randint(key, (2, n), 0, 2 * translate + 1)
    return dy, dx


def base_flips(key, n):
    """The per-image random flip bits drawn once for the whole run, ``(N,)`` bool."""
    return jax.random.bernoulli(key, 0.5, (n,))


def epoch_flips(base, epoch):
    """Alternating flips: image ``i`` is mirrored in ``epoch`` iff ``base[i] XOR (epoch odd)``."""
    return jnp.logical_xor(base, (epoch % 2) == 1)


def augment(images, key, flip_mask, translate):
    """Random translate by up to ``translate`` pixels (reflect-padded), flip, normalise.

    Args:
        images: uint8 ``(N, 3, H, W)``.
        key: PRNG key for the crop offsets.
        flip_mask: bool ``(N,)``, which images to mirror.
        translate: static int, the largest shift in pixels (0 disables cropping).

    Returns:
        float32 ``(N, 3, H, W)``, normalised with the CIFAR-10 mean and std.
    """
    size = images.shape[-1]
    if translate > 0:
        dy, dx = random_offsets(key, images.shape[0], translate)
        images = crop(reflect_pad(images, translate), dy, dx, size)
    return normalize(flip(images, flip_mask))


# airbench's TTA level 2: (weight, shift) of each view before mirroring; a shift (dy, dx)
# crops the image reflect-padded by 1 at offset (1 + dy, 1 + dx).
TTA_SHIFTS = ((0.5, (0, 0)), (0.25, (-1, -1)), (0.25, (1, 1)))
TTA_VIEWS = 2 * len(TTA_SHIFTS)  # each shift plain and mirrored: a TTA image costs this many


def views_per_image(tta: bool) -> int:
    """Forward passes one test image costs: :data:`TTA_VIEWS` with TTA, else 1."""
    return TTA_VIEWS if tta else 1


def tta_views(images):
    """The test-time views of airbench's TTA level 2 and their weights.

    ``{identity, mirror} x {no shift, shift up-left by 1, shift down-right by 1}``
    (shifts use reflect padding 1, then a crop): weights 0.25 for the two unshifted views
    and 0.125 for each of the four shifted ones, i.e.
    ``0.5 * mirror_avg(x) + 0.25 * mirror_avg(up_left) + 0.25 * mirror_avg(down_right)``.
    Returns a list of :data:`TTA_VIEWS` pairs ``(weight, view)``; the first view is the
    plain image.
    """
    size = images.shape[-1]
    padded = reflect_pad(images, 1)
    views = []
    for weight, (dy, dx) in TTA_SHIFTS:
        view = padded[:, :, 1 + dy : 1 + dy + size, 1 + dx : 1 + dx + size]
        views += [(weight / 2, view), (weight / 2, view[..., ::-1])]
    return views
