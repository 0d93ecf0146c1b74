"""What a training run shows and writes: the column log, notes, progress bars, JSON files.

Only process 0 prints (one log for a run of several processes). Accuracies are printed in
percent everywhere; the JSON files (``metrics.jsonl``, ``summary.json``) hold fractions.
The learning rate ``lr`` is in ``--lr``'s units everywhere (for SGD airbench's, per 1024
examples; the optimiser's step size is that divided by ``train.loop.kilostep_scale``): the
log's column and ``metrics.jsonl`` hold the same number, the scheduled rate of the epoch's
last step.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

from tqdm import tqdm

from train import distributed

COLUMNS = ["epoch", "train_loss", "train_acc%", "test_acc%", "test_imgs", "lr", "epoch_s",
           "total_s"]  # fmt: skip
WIDTH = 10


def note(message: str) -> None:
    """A note or error on stderr, from process 0 only."""
    if distributed.is_main():
        print(message, file=sys.stderr, flush=True)


def say(message: str) -> None:
    """A line of the run's log on stdout, from process 0 only."""
    if distributed.is_main():
        print(message, flush=True)


def print_row(cells, head: bool = False) -> None:
    line = "|" + "|".join(f" {str(c).rjust(WIDTH)} " for c in cells) + "|"
    rule = "-" * len(line)
    say("\n".join([rule, line, rule] if head else [line]))


def log_epoch(r: dict) -> None:
    """One row of the table from a ``metrics.jsonl`` record."""
    print_row([
        r["epoch"], f"{r['train_loss']:.4f}", f"{100 * r['train_acc']:.2f}",
        f"{100 * r['test_acc']:.2f}", r.get("test_images", ""), f"{r['lr']:.4g}",
        f"{r['epoch_s']:.1f}", f"{r['total_s']:.1f}",
    ])  # fmt: skip


# ---------------------------------------------------------------------------- Files


def write_atomic(path: Path, text: str) -> None:
    """Writes ``text`` to ``path`` through a temporary file and a rename: readers see the
    old content or the new, never a part."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_metrics(path: Path, history: list[dict]) -> None:
    write_atomic(path, "".join(json.dumps(h) + "\n" for h in history))


def write_json(path: Path, value: dict) -> None:
    write_atomic(path, json.dumps(value, indent=2) + "\n")


# ---------------------------------------------------------------------------- Progress


def _clock(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


class Progress:
    """Progress bars on stderr (training steps, then evaluation) with an ETA for the run.

    The ETA adds the remaining training images at the measured training rate to the
    remaining test images at the measured evaluation rate (a TTA image counts as
    ``augment.TTA_VIEWS``); the first step and the first evaluation batch, which compile,
    are left out of the rates.
    """

    def __init__(self, enabled: bool, train_left: int, eval_left: int):
        self.enabled = enabled and distributed.is_main()
        self.train_left, self.eval_left = train_left, eval_left
        self.rates = {"train": [0.0, 0], "eval": [0.0, 0]}  # seconds, images after compiling
        self.bar, self.kind, self.last = None, None, None

    def start(self, kind: str, desc: str, total: int, weight: int = 1) -> None:
        """Opens the bar of one phase: ``kind`` is ``"train"`` or ``"eval"``; ``weight``
        is the cost of one image in plain evaluations (``augment.TTA_VIEWS`` with TTA)."""
        self.close()
        self.kind, self.weight, self.last, self.first = kind, weight, time.perf_counter(), True
        self.bar = tqdm(
            total=total, unit="img", unit_scale=True, leave=False, desc=desc,
            file=sys.stderr, disable=not self.enabled, mininterval=1.0,
        )  # fmt: skip

    def update(self, n: int, **postfix) -> None:
        now = time.perf_counter()
        if not self.first:  # the first update of a phase includes compiling: not a rate
            rate = self.rates[self.kind]
            rate[0], rate[1] = rate[0] + now - self.last, rate[1] + n * self.weight
        self.first, self.last = False, now
        if self.kind == "train":
            self.train_left -= n
        else:
            self.eval_left -= n * self.weight
        if (eta := self.eta()) is not None:
            postfix["run_eta"] = _clock(eta)
        self.bar.set_postfix(postfix, refresh=False)
        self.bar.update(n)

    def eta(self) -> float | None:
        """Seconds left in the run, or ``None`` before the training rate is known."""
        (train_s, train_n), (eval_s, eval_n) = self.rates["train"], self.rates["eval"]
        if not train_n:
            return None
        train_rate = train_s / train_n
        eval_rate = eval_s / eval_n if eval_n else train_rate / 3  # forward only: ~1/3
        return self.train_left * train_rate + self.eval_left * eval_rate

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
