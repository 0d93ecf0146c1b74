"""The training loop's pieces: optimiser, train step, lookahead average, evaluation.

The recipe, section by section in the order of ``airbench94.py`` (one script; its names in
brackets), each mapped to the function here or next door that does it:

1. Hyper-parameters (``hyp``): one frozen :class:`train.config.Config`, airbench94's values.
2. Data and augmentation (``CifarLoader``, ``batch_crop``, ``batch_flip_lr``): the training
   set on the device as uint8 NCHW (:class:`TrainSet`), each step gathering its batch by
   index; random translate with reflect padding, alternating flips, normalisation
   (``augment.augment``, ``augment.epoch_flips``; inside :func:`make_train_step`).
3. The net (``Conv``, ``BatchNorm``, ``ConvGroup``, ``make_net``): whiten -> GELU -> three
   conv-pool-norm-GELU groups (64, 256, 256) -> max-pool -> linear / 9
   (``models.Airbench94``, ``models.ConvGroup``).
4. Whitening init (``get_whitening_parameters``, ``init_whitening_conv``): the first conv's
   filters from the eigenvectors of the covariance of 2x2 training patches, frozen
   (``models.whitening_weights``, ``models.init_whitening``).
5. Lookahead (``LookaheadState``): every few steps average the weights and copy the
   average back, the decay warming up over the run, and copy it in after every epoch
   (:func:`maybe_lookahead`, :func:`lookahead_step`).
6. Evaluation with test-time augmentation (``infer``, ``evaluate``): the weighted views
   of TTA level 2 (:func:`evaluate`, :func:`eval_predictions`, ``augment.tta_views``).
7. Training (``main``):
   the loss, label-smoothed cross entropy summed over the batch, with the whitening bias
   trained for ``whiten_bias_epochs`` only (:func:`make_train_step`); Nesterov SGD in
   airbench's decoupled units, the BatchNorm shifts at ``bias_scaler`` times the lr
   (:func:`make_optimizer`, :func:`kilostep_scale`); the lr schedule, a triangle
   (:func:`lr_multiplier`); the epoch loop of steps, lookahead, evaluation and, here,
   checkpoint and log (``train/run.py``: ``train_epoch``).

Every function takes its settings from a :class:`train.config.Config` passed in; nothing
here reads a module-level setting. ``python -m train.cifar10`` (``train/run.py``), the
notebook, the tests and the benchmarks all use these.

>>> from train import config, models
>>> cfg = config.make_config("simple_cnn")
>>> model = models.build_model("simple_cnn")
>>> optimizer, schedule = make_optimizer(model, cfg, total_steps=100, batch_size=128)
>>> round(float(schedule(0)) / float(schedule(23)), 3)  # the triangle's start / peak
0.2
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import nnx

from train import augment, distributed, models
from train.config import Config

LOOKAHEAD_VARS = (nnx.Param, nnx.BatchStat)  # what the lookahead average covers


# ---------------------------------------------------------------------------- Optimiser


def lr_multiplier(cfg: Config, total_steps: int) -> Callable:
    """airbench's triangle: ``lr_start`` at step 0, ``lr_peak`` at ``lr_peak_at`` of the
    steps, ``lr_end`` at the last step, linear in between."""
    xp = jnp.array([0.0, int(cfg.lr_peak_at * total_steps), total_steps], jnp.float32)
    fp = jnp.array([cfg.lr_start, cfg.lr_peak, cfg.lr_end], jnp.float32)
    return lambda step: jnp.interp(step, xp, fp)


def kilostep_scale(momentum: float) -> float:
    """airbench's unit: SGD's step size is ``lr / kilostep_scale`` for ``lr`` per 1024
    examples (its steady-state momentum gain ``1 / (1 - momentum)`` taken out)."""
    return 1024 * (1 + 1 / (1 - momentum))


def make_optimizer(model, cfg: Config, total_steps: int, batch_size: int):
    """Returns ``(nnx.Optimizer, step_size_at(step))``.

    SGD follows airbench94 exactly: torch-style coupled weight decay (``g + wd * p``) and
    Nesterov momentum, with its decoupled hyper-parameters converted as
    ``kilostep_scale = 1024 * (1 + 1 / (1 - momentum))``, ``lr = lr / kilostep_scale`` and
    ``wd = weight_decay * batch_size / kilostep_scale``. The BatchNorm shifts train with
    ``lr * bias_scaler`` and decay ``wd / (lr * bias_scaler)``; by linearity that is the same
    as scaling their gradient by ``bias_scaler`` before one shared SGD (done here).
    AdamW uses ``lr`` and ``weight_decay`` as given, decaying only the >=2-D weights.
    """
    multiplier = lr_multiplier(cfg, total_steps)
    if cfg.optimizer == "sgd":
        scale = kilostep_scale(cfg.momentum)
        lr = cfg.lr / scale
        wd = cfg.weight_decay * batch_size / scale
        schedule = lambda step: lr * multiplier(step)
        # As in airbench94 only the BatchNorm shifts get bias_scaler; the whitening bias and
        # all weights share the plain lr.
        tx = optax.chain(
            optax.masked(
                optax.scale(cfg.bias_scaler), models.path_mask(models.bn_bias_paths(model))
            ),
            optax.add_decayed_weights(wd / lr),
            optax.sgd(schedule, momentum=cfg.momentum, nesterov=True),
        )
    elif cfg.optimizer == "adamw":
        schedule = lambda step: cfg.lr * multiplier(step)
        decay_mask = lambda params: jax.tree.map(lambda p: p.ndim > 1, params)
        tx = optax.adamw(schedule, weight_decay=cfg.weight_decay, mask=decay_mask)
    else:
        raise ValueError(f"optimizer must be 'sgd' or 'adamw', got {cfg.optimizer!r}")
    return nnx.Optimizer(model, tx, wrt=nnx.Param), schedule


# ---------------------------------------------------------------------------- Train step


class TrainSet(NamedTuple):
    """The whole training set on the device(s), replicated."""

    images: Any  # uint8 (N, 3, 32, 32)
    labels: Any  # int32 (N,)
    base_flips: Any  # bool (N,): each image's flip bit, drawn once (augment.base_flips)


class StepInputs(NamedTuple):
    """What one train step reads besides the model, the optimiser and the running sums.

    A pytree: every field is traced (``epoch``, ``step`` and ``train_whiten_bias`` as
    scalars), so one compiled step serves every step of the run.
    """

    data: TrainSet
    perm: Any  # int32 (steps, batch_size) (or flat): the epoch's image indices
    key: Any  # the epoch's augmentation key
    epoch: Any  # int: the epoch (from 0), for the alternating flips
    step: Any  # int: the step within the epoch, a row of ``perm``
    train_whiten_bias: Any  # bool: whether the whitening bias trains in this step


def make_train_step(cfg: Config, batch_size: int):
    """The jitted step ``(model, optimizer, metrics, inputs: StepInputs) -> (metrics, loss)``;
    ``model``, ``optimizer`` and ``metrics`` are donated (updated in place)."""
    translate, flip, smoothing = cfg.translate, cfg.flip, cfg.label_smoothing
    data_format = cfg.data_format

    @nnx.jit(donate_argnames=("model", "optimizer", "metrics"))
    def train_step(model, optimizer, metrics, inputs: StepInputs):
        """One SGD step on batch ``inputs.step`` of the epoch's permutation ``inputs.perm``.

        With several devices the batch axis of ``perm`` is split over them, and so, by
        jit's sharding propagation, is everything computed per image: each device gathers
        and augments its own rows, and the sums over the batch (loss, gradients, BatchNorm
        statistics) become all-reduces. Returns the updated running ``metrics`` and this
        batch's summed loss.
        """
        (images, labels, base_flips), perm, key, epoch, step, train_whiten_bias = inputs
        idx = jax.lax.dynamic_index_in_dim(perm.reshape(-1, batch_size), step, keepdims=False)
        y = labels[idx]
        flips = augment.epoch_flips(base_flips[idx], epoch)
        if not flip:
            flips = jnp.zeros_like(flips)
        x = augment.augment(images[idx], jax.random.fold_in(key, step), flips, translate)
        x = models.model_input(x, data_format)
        targets = optax.smooth_labels(jax.nn.one_hot(y, 10), smoothing)

        def loss_fn(model):
            logits = model(x).astype(jnp.float32)  # the loss in float32 whatever the dtype
            return optax.softmax_cross_entropy(logits, targets).sum(), logits

        (loss, logits), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
        whiten = getattr(model, "whiten", None)
        old_bias = None if whiten is None else whiten.bias[...]
        optimizer.update(model, grads)
        if whiten is not None:  # airbench trains the whitening bias for the first epochs only
            whiten.bias[...] = jnp.where(train_whiten_bias, whiten.bias[...], old_bias)
        metrics = {
            "loss": metrics["loss"] + loss,
            "correct": metrics["correct"] + jnp.sum(jnp.argmax(logits, -1) == y),
        }
        return metrics, loss

    return train_step


class NonFiniteLoss(RuntimeError):
    """The loss became NaN or infinite: training diverged."""


def check_loss(loss, epoch: int, global_step: int, cfg: Config) -> float:
    """Fetches a step's summed loss (waits for that step) and stops on NaN/inf."""
    value = float(loss)
    if not math.isfinite(value):
        raise NonFiniteLoss(
            f"non-finite loss ({value}) at epoch {epoch + 1}, step {global_step}; training "
            f"diverged, try a lower --lr (now {cfg.lr})"
        )
    return value


def all_finite(model) -> bool:
    leaves = jax.tree.leaves(nnx.state(model))
    return bool(
        all(jnp.all(jnp.isfinite(x)) for x in leaves if jnp.issubdtype(x.dtype, jnp.floating))
    )


# ---------------------------------------------------------------------------- Lookahead


@nnx.jit(donate_argnames=("lookahead",))
def lookahead_step(model, lookahead, decay):
    """``lookahead <- decay * lookahead + (1 - decay) * params``, then ``params <- lookahead``
    (airbench's ``LookaheadState.update``).

    ``lookahead`` is the average: a pure dict of the model's :data:`LOOKAHEAD_VARS`. As in
    airbench only floating-point values are averaged; integer ones (BatchNorm's
    ``num_batches_tracked``) are the model's own.
    """
    params = nnx.to_pure_dict(nnx.state(model, LOOKAHEAD_VARS))

    def average(e, p):
        return e + (1 - decay) * (p - e) if jnp.issubdtype(p.dtype, jnp.floating) else p

    lookahead = jax.tree.map(average, lookahead, params)
    state = nnx.state(model, LOOKAHEAD_VARS)
    nnx.replace_by_pure_dict(state, lookahead)
    nnx.update(model, state)
    return lookahead


def maybe_lookahead(model, lookahead, cfg: Config, epoch: int, global_step: int,
                    total_steps: int):  # fmt: skip
    """airbench's lookahead: from epoch ``lookahead_start_epochs``, every
    ``lookahead_every_n_steps`` steps average the weights and copy the average back.

    The decay warms up as ``lookahead_decay ** n * (step / total_steps) **
    lookahead_decay_pow``: fast moves early, strong averaging at the end. The first
    qualifying step only starts the average. Returns the average (``None`` until it starts).
    """
    n = cfg.lookahead_every_n_steps
    if not cfg.lookahead_decay or epoch < cfg.lookahead_start_epochs or global_step % n:
        return lookahead
    if lookahead is None:
        return nnx.to_pure_dict(jax.tree.map(jnp.copy, nnx.state(model, LOOKAHEAD_VARS)))
    decay = cfg.lookahead_decay**n * (global_step / total_steps) ** cfg.lookahead_decay_pow
    return lookahead_step(model, lookahead, decay)


# ---------------------------------------------------------------------------- Evaluation


@nnx.jit(static_argnames=("tta", "data_format"))
def eval_predictions(model, images, tta, data_format="NCHW"):
    """Predicted classes of uint8 test images: ``(plain, tta)``; with ``tta`` the views of
    ``augment.tta_views`` are run one after another by ``lax.map`` (one traced forward
    pass) and weighted."""
    x = augment.normalize(images)
    if not tta:
        logits = model(models.model_input(x, data_format))
        return logits.argmax(-1), logits.argmax(-1)
    weights, views = zip(*augment.tta_views(x))
    graphdef, state = nnx.split(model)
    outs = jax.lax.map(
        lambda v: nnx.merge(graphdef, state)(models.model_input(v, data_format)), jnp.stack(views)
    )
    weighted = jnp.tensordot(jnp.asarray(weights), outs.astype(jnp.float32), axes=1)
    return outs[0].argmax(-1), weighted.argmax(-1)


def evaluate(model, images, labels, tta, mesh=None, batch_size=2000, progress=None,
             data_format="NCHW"):  # fmt: skip
    """Test accuracy ``(plain, tta)`` and the predictions used for the confusion matrix.

    ``images`` are host uint8 arrays ``(N, 3, 32, 32)``; with a ``mesh`` each batch is split
    over its devices. ``progress(n)``, if given, is called after each batch of ``n`` images.
    With ``tta`` a batch costs ``augment.TTA_VIEWS`` plain ones. ``data_format`` is the
    model's layout (the images are moved to it on the device).
    """
    model.eval()
    n = len(images)
    n_devices = 1 if mesh is None else mesh.size
    batch = -(-min(batch_size, n) // n_devices) * n_devices  # divisible by the devices
    plain, augmented = [], []
    for start in range(0, n, batch):
        chunk = np.asarray(images[start : start + batch])
        real = len(chunk)
        if real < batch:  # pad the last batch: one compiled shape for all batches
            chunk = np.concatenate([chunk, np.take(images, np.arange(batch - real) % n, 0)])
        if mesh is not None:
            chunk = distributed.put(chunk, distributed.batch_sharding(mesh, chunk.ndim))
        p, t = eval_predictions(model, chunk, tta=tta, data_format=data_format)
        plain.append(distributed.to_host(p))
        augmented.append(distributed.to_host(t))
        if progress is not None:
            progress(real)
    model.train()
    plain, augmented = np.concatenate(plain)[:n], np.concatenate(augmented)[:n]
    labels = np.asarray(labels)
    return float(np.mean(plain == labels)), float(np.mean(augmented == labels)), augmented
