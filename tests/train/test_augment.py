"""Tests for train/augment.py: shapes, determinism, flips, crops against NumPy."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from train import augment


@pytest.fixture
def images():
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (16, 3, 32, 32), dtype=np.uint8)


def test_normalize_matches_numpy(images):
    mean = np.array(augment.CIFAR_MEAN)[:, None, None]
    std = np.array(augment.CIFAR_STD)[:, None, None]
    expected = (images / 255.0 - mean) / std
    out = augment.normalize(jnp.asarray(images))
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_reflect_pad_matches_numpy(images):
    out = augment.reflect_pad(jnp.asarray(images), 2)
    expected = np.pad(images, ((0, 0), (0, 0), (2, 2), (2, 2)), mode="reflect")
    np.testing.assert_array_equal(out, expected)


def test_crop_matches_numpy_reference(images):
    padded = np.pad(images, ((0, 0), (0, 0), (2, 2), (2, 2)), mode="reflect")
    rng = np.random.default_rng(1)
    dy, dx = rng.integers(0, 5, 16), rng.integers(0, 5, 16)
    out = augment.crop(jnp.asarray(padded), jnp.asarray(dy), jnp.asarray(dx), 32)
    expected = np.stack([padded[i, :, dy[i] : dy[i] + 32, dx[i] : dx[i] + 32] for i in range(16)])
    np.testing.assert_array_equal(out, expected)


def test_zero_offset_crop_of_padded_is_a_shift(images):
    padded = augment.reflect_pad(jnp.asarray(images), 2)
    centre = augment.crop(padded, jnp.full(16, 2), jnp.full(16, 2), 32)
    np.testing.assert_array_equal(centre, images)


def test_flip_mirrors_only_masked_images(images):
    mask = np.arange(16) % 3 == 0
    out = np.asarray(augment.flip(jnp.asarray(images), jnp.asarray(mask)))
    np.testing.assert_array_equal(out[mask], images[mask][..., ::-1])
    np.testing.assert_array_equal(out[~mask], images[~mask])


def test_alternating_flips():
    base = augment.base_flips(jax.random.key(0), 1000)
    assert 400 < int(base.sum()) < 600
    e0, e1, e2 = (np.asarray(augment.epoch_flips(base, e)) for e in range(3))
    np.testing.assert_array_equal(e0, np.asarray(base))
    np.testing.assert_array_equal(e1, ~e0)  # every image flips every other epoch
    np.testing.assert_array_equal(e2, e0)


def test_augment_shape_dtype_and_determinism(images):
    x = jnp.asarray(images)
    mask = jnp.zeros(16, bool)
    a = augment.augment(x, jax.random.key(3), mask, translate=2)
    b = augment.augment(x, jax.random.key(3), mask, translate=2)
    c = augment.augment(x, jax.random.key(4), mask, translate=2)
    assert a.shape == (16, 3, 32, 32) and a.dtype == jnp.float32
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)


def test_augment_equals_crop_then_flip_then_normalise(images):
    x = jnp.asarray(images)
    key = jax.random.key(5)
    mask = jnp.asarray(np.arange(16) % 2 == 0)
    dy, dx = augment.random_offsets(key, 16, 2)
    padded = np.pad(images, ((0, 0), (0, 0), (2, 2), (2, 2)), mode="reflect")
    crops = np.stack([padded[i, :, dy[i] : dy[i] + 32, dx[i] : dx[i] + 32] for i in range(16)])
    crops[np.asarray(mask)] = crops[np.asarray(mask)][..., ::-1]
    expected = augment.normalize(jnp.asarray(crops))
    np.testing.assert_array_equal(augment.augment(x, key, mask, translate=2), expected)


def test_offsets_cover_the_range_uniformly():
    dy, dx = augment.random_offsets(jax.random.key(0), 5000, 2)
    for d in (dy, dx):
        counts = np.bincount(np.asarray(d), minlength=5)
        assert counts.shape == (5,) and counts.min() > 800


def test_tta_views_weights_and_shifts(images):
    x = jnp.asarray(images, jnp.float32)
    views = augment.tta_views(x)
    weights = [w for w, _ in views]
    assert len(views) == 6 and np.isclose(sum(weights), 1.0)
    np.testing.assert_allclose(weights, [0.25, 0.25, 0.125, 0.125, 0.125, 0.125])
    np.testing.assert_array_equal(views[0][1], x)
    np.testing.assert_array_equal(views[1][1], x[..., ::-1])
    padded = np.pad(images, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect").astype(np.float32)
    np.testing.assert_array_equal(views[2][1], padded[:, :, :32, :32])  # up-left
    np.testing.assert_array_equal(views[4][1], padded[:, :, 2:, 2:])  # down-right
    np.testing.assert_array_equal(views[5][1], padded[:, :, 2:, 2:][..., ::-1])
