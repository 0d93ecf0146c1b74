"""The settings of a training run: one frozen :class:`Config`, built from a model's recipe.

Every setting that decides the numbers a run produces lives here, with its unit: the
command line overrides some of them, the whole object is printed when a run starts, saved
with every checkpoint and compared whole on ``--resume``. What only decides *where* a run
happens (devices, processes, folders, progress bars) is not a setting: a checkpoint taken
on 4 devices resumes on 1.

SGD hyper-parameters are in airbench's decoupled units (converted in
``train.loop.make_optimizer``): ``lr`` is the step size per 1024 examples, independent of
the momentum, and ``weight_decay`` the decay per 1024 examples, independent of the lr. The
loss is the *sum* of the label-smoothed cross entropy over the batch.

>>> cfg = make_config("simple_cnn", epochs=2)
>>> cfg.epochs, cfg.batch_size, cfg.lr
(2, 128, 4.0)
>>> make_config("simple_cnn", optimizer="adamw").lr
0.002
>>> diff(cfg, dataclasses.replace(cfg, lr=1.0))
{'lr': (4.0, 1.0)}
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax.numpy as jnp

from jspatial._args import DATA_FORMATS  # 'NCHW', 'NHWC': the layers' layouts


@dataclasses.dataclass(frozen=True)
class Config:
    """Every setting of a run; the defaults are Keller Jordan's airbench94 recipe."""

    model: str = "airbench94"  # a name in train.models.MODELS
    seed: int = 0  # model initialisation, data order and augmentation
    # ---- schedule
    epochs: float = 9.9  # passes over the training set; steps = ceil(steps_per_epoch * epochs)
    batch_size: int = 1024  # images per step, over all devices
    # ---- optimiser
    optimizer: str = "sgd"  # "sgd": Nesterov SGD, torch-style coupled decay; or "adamw"
    lr: float = 11.5  # peak; sgd: per 1024 examples (airbench units); adamw: plain step size
    momentum: float = 0.85  # sgd only
    weight_decay: float = 0.0153  # sgd: per 1024 examples; adamw: plain, >=2-D weights only
    bias_scaler: float = 64.0  # sgd: lr multiplier of the BatchNorm shifts (decay unscaled)
    label_smoothing: float = 0.2  # fraction of the target spread over all 10 classes
    # ---- learning-rate schedule: piecewise-linear multiplier of lr
    lr_start: float = 0.2  # at step 0
    lr_peak: float = 1.0  # at lr_peak_at of the steps
    lr_end: float = 0.07  # at the last step
    lr_peak_at: float = 0.23  # fraction of the steps
    # ---- airbench's lookahead weight average
    lookahead_decay: float = 0.95  # base decay per step; 0 = off
    lookahead_start_epochs: int = 3  # epochs before the average starts
    lookahead_every_n_steps: int = 5  # average (and copy back) every n steps
    lookahead_decay_pow: float = 3.0  # decay = lookahead_decay**n * (step / steps) ** pow
    # ---- whitening layer (airbench94 only)
    whiten_images: int = 5000  # training images its patch statistics are taken from
    whiten_bias_epochs: int = 3  # epochs its bias trains for; frozen afterwards
    # ---- augmentation
    translate: int = 2  # pixels; random shift of up to this many, reflect-padded
    flip: bool = True  # airbench's alternating horizontal flips
    # ---- evaluation
    tta: bool = True  # last epoch: test-time augmentation (augment.tta_views)
    eval_subset: int = 2000  # test images scored after every epoch but the last, evenly
    # spaced and the same in every run (0: all); the last epoch scores the whole test set
    eval_batch: int = 2000  # test images per forward pass
    # ---- data and numerics
    train_limit: int | None = None  # use the first N training images (None: all 50000)
    test_limit: int | None = None  # use the first N test images (None: all 10000)
    dtype: str = "float32"  # compute dtype of the layers, a key of DTYPES
    # The layers' layout: "NCHW" (channels second, PyTorch's) or "NHWC" (channels last: the
    # loops run on it without transposes, about 1.2x faster on a CPU); the data, its
    # augmentation and the weights (OIHW) are the same either way, the float rounding is
    # not. NHWC was the default for a while; its two full runs averaged 93.98%, under the
    # recipe's 94.0% (bench/RESULTS.md), so the default is back to NCHW (94.11%).
    data_format: str = "NCHW"

    def __post_init__(self):
        check(self)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Config:
        """A config from a saved dict; settings it lacks (runs saved before they existed)
        take the value they then had (:data:`BEFORE_SAVED`, else the default, which was
        then a fixed value), and settings saved under an earlier name (:data:`RENAMED`)
        take their value."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {**BEFORE_SAVED, **{RENAMED.get(k, k): v for k, v in values.items()}}
        return cls(**{k: v for k, v in values.items() if k in names})

    def describe(self) -> str:
        """``name=value`` pairs, a few to a line, in declaration order."""
        pairs = [f"{k}={v}" for k, v in self.to_dict().items()]
        lines, line = [], "config:"
        for pair in pairs:
            if len(line) + len(pair) > 99:
                lines.append(line)
                line = "       "
            line += " " + pair
        return "\n".join([*lines, line])


# Earlier names of settings, as runs saved them: {old: new}.
RENAMED = {"ema": "lookahead_decay"}

# Settings added after runs saved without them: the value those runs had, so that they
# resume exactly as they started.
BEFORE_SAVED = {"data_format": "NCHW"}

# --dtype: the compute dtype of the layers. Parameters, optimiser state, BatchNorm statistics
# and the loss (from the logits) stay float32 either way.
DTYPES = {"float32": None, "bfloat16": jnp.bfloat16}

# The other models start from airbench94's recipe with these changes (sensible, not tuned).
_OTHERS = dict(
    batch_size=512, momentum=0.9, weight_decay=1e-3, bias_scaler=1.0, label_smoothing=0.1,
    whiten_bias_epochs=0, lookahead_decay=0.0,
)  # fmt: skip
RECIPES: dict[str, dict[str, Any]] = {
    "airbench94": {},
    "resnet18": dict(_OTHERS, epochs=20, lr=2.0),  # lr 2.0 = torch lr 0.09 on a mean loss
    "vgg11": dict(_OTHERS, epochs=20, lr=2.0),
    "vgg13": dict(_OTHERS, epochs=20, lr=2.0),
    "simple_cnn": dict(_OTHERS, epochs=10, batch_size=128, lr=4.0, weight_decay=2e-3,
                       label_smoothing=0.0),
}  # fmt: skip
# With --optimizer adamw these replace the recipe's lr and weight_decay (plain AdamW units).
ADAMW = {
    "airbench94": dict(lr=2e-3, weight_decay=5e-4),
    "resnet18": dict(lr=1e-3, weight_decay=5e-2),
    "vgg11": dict(lr=1e-3, weight_decay=5e-2),
    "vgg13": dict(lr=1e-3, weight_decay=5e-2),
    "simple_cnn": dict(lr=2e-3, weight_decay=5e-4),
}


# What a setting must satisfy for a run to train: (test, the rule in words).
_RULES: dict[str, tuple[Any, str]] = {
    "seed": (lambda v: v >= 0, ">= 0"),
    "epochs": (lambda v: v > 0, "> 0"),
    "batch_size": (lambda v: v >= 1, ">= 1"),
    "optimizer": (lambda v: v in ("sgd", "adamw"), "'sgd' or 'adamw'"),
    "lr": (lambda v: v > 0, "> 0"),
    "momentum": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "weight_decay": (lambda v: v >= 0, ">= 0"),
    "bias_scaler": (lambda v: v >= 0, ">= 0"),
    "label_smoothing": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "lr_start": (lambda v: v >= 0, ">= 0"),
    "lr_peak": (lambda v: v >= 0, ">= 0"),
    "lr_end": (lambda v: v >= 0, ">= 0"),
    "lr_peak_at": (lambda v: 0 <= v <= 1, "in [0, 1]"),
    "lookahead_decay": (lambda v: 0 <= v < 1, "in [0, 1)"),
    "lookahead_start_epochs": (lambda v: v >= 0, ">= 0"),
    "lookahead_every_n_steps": (lambda v: v >= 1, ">= 1"),
    "lookahead_decay_pow": (lambda v: v >= 0, ">= 0"),
    "whiten_images": (lambda v: v >= 1, ">= 1"),
    "whiten_bias_epochs": (lambda v: v >= 0, ">= 0"),
    "translate": (lambda v: 0 <= v <= 16, "in [0, 16] pixels"),
    "eval_subset": (lambda v: v >= 0, ">= 0 (0: all test images)"),
    "eval_batch": (lambda v: v >= 1, ">= 1"),
    "train_limit": (lambda v: v is None or v >= 1, ">= 1"),
    "test_limit": (lambda v: v is None or v >= 1, ">= 1"),
    "dtype": (lambda v: v in DTYPES, f"one of {', '.join(DTYPES)}"),
    "data_format": (lambda v: v in DATA_FORMATS, " or ".join(map(repr, DATA_FORMATS))),
}


def check(cfg: Config) -> None:
    """Raises ``ValueError`` (one line, naming the setting and the value) for a setting a
    run cannot train with: e.g. a learning rate <= 0, label smoothing outside [0, 1).

    >>> make_config(lr=-1)
    Traceback (most recent call last):
    ...
    ValueError: lr must be > 0, got -1
    """
    for name, (ok, rule) in _RULES.items():
        value = getattr(cfg, name)
        finite = not isinstance(value, float) or math.isfinite(value)
        if not (finite and ok(value)):
            raise ValueError(f"{name} must be {rule}, got {value!r}")
    if cfg.model not in RECIPES:
        raise ValueError(f"unknown model {cfg.model!r}; choose one of {', '.join(RECIPES)}")
    if not max(cfg.lr_start, cfg.lr_peak, cfg.lr_end) > 0:
        raise ValueError("lr_start, lr_peak and lr_end are all 0: the learning rate is 0 "
                         "throughout")  # fmt: skip


# --quick: a run that visibly learns in about a minute on 2 CPU cores (3 epochs of the small
# model on the first 10000 training images; scored on 2000 test images, no TTA).
QUICK = dict(model="simple_cnn", epochs=3, train_limit=10000, test_limit=2000, tta=False)


def make_config(model: str = "airbench94", **overrides: Any) -> Config:
    """``model``'s recipe with ``overrides`` (``None`` values are ignored: not given).

    ``optimizer="adamw"`` switches to the recipe's AdamW ``lr`` and ``weight_decay`` unless
    those are overridden too.
    """
    if model not in RECIPES:
        raise ValueError(f"unknown model {model!r}; choose one of {', '.join(RECIPES)}")
    given = {k: v for k, v in overrides.items() if v is not None}
    settings = dict(RECIPES[model], model=model)
    if given.get("optimizer") == "adamw":
        settings.update(ADAMW[model])
    settings.update(given)
    names = {f.name for f in dataclasses.fields(Config)}
    if unknown := sorted(set(settings) - names):
        raise ValueError(f"unknown setting(s) {', '.join(unknown)}; known: {', '.join(names)}")
    return Config(**settings)


def parse_value(name: str, text: str) -> Any:
    """The value of setting ``name`` from command-line text, in that setting's type."""
    fields = {f.name: f for f in dataclasses.fields(Config)}
    if name in RENAMED:
        raise ValueError(f"setting {name!r} is now called {RENAMED[name]!r}")
    if name not in fields:
        raise ValueError(f"unknown setting {name!r}; known: {', '.join(fields)}")
    kind = str(fields[name].type)
    if text.lower() == "none" and "None" in kind:
        return None
    if kind.startswith("bool"):
        if text.lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"{name} takes true or false, got {text!r}")
        return text.lower() in ("true", "1")
    for type_name, convert in (("int", int), ("float", float)):
        if kind.startswith(type_name):
            try:
                return convert(text)
            except ValueError:
                raise ValueError(f"{name} takes a {type_name}, got {text!r}") from None
    return text


def diff(saved: Config, current: Config) -> dict[str, tuple[Any, Any]]:
    """``{name: (saved value, current value)}`` for every setting that differs."""
    a, b = saved.to_dict(), current.to_dict()
    return {k: (a[k], b[k]) for k in a if a[k] != b[k]}
