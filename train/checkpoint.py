"""Training checkpoints with orbax-checkpoint: arrays plus a JSON record, written atomically.

A checkpoint is one numbered step directory ``<out_dir>/checkpoints/<epoch>/`` holding two
items:

- ``state``: the pytree of arrays, ``{"model": ..., "optimizer": ..., "ema": ...}``
  (pure nested dicts of ``nnx.state``; PRNG keys are stored as their ``uint32`` key data);
  ``"ema"`` (:data:`LOOKAHEAD_ITEM`, its name on disk since the first runs) holds the
  lookahead average once it has started;
- ``meta``: a JSON dict with the position in training (epoch, global step), the per-epoch
  metrics so far, elapsed time and the settings the run was started with.

Orbax's ``CheckpointManager`` writes each checkpoint into a temporary
``<epoch>.orbax-checkpoint-tmp-*`` directory and renames it into place once every file is
written (``AtomicRenameTemporaryPath``, its default on local file systems), so a process
killed mid-save leaves either the previous checkpoints or a leftover temporary directory,
which the next manager deletes (``cleanup_tmp_directories=True``); never a half-written
step. Only the newest ``max_to_keep`` checkpoints are kept. Saving is synchronous:
when :meth:`Checkpointer.save` returns the checkpoint is on disk.

A run stopped by a signal saves the same two items mid-epoch under
``<out_dir>/checkpoints/interrupted/<global step>/`` with a checkpointer of its own
(``train/run.py``); the epoch's position (steps done, running loss sums) is in ``meta``.

Several processes (``jax.distributed``, see ``train/distributed.py``) use the same calls:
every process calls ``save`` and ``restore`` with its global arrays (replicated over the
device mesh), orbax synchronises them and the primary host (process 0) writes the
replicated arrays and the JSON record; the directory must be on a file system all hosts
share. ``restore`` places every array with the sharding the model has now, so a run may
resume on another number of devices.

Damage after the fact (a file deleted, truncated or altered inside a checkpoint) is caught
before orbax reads it: once a save is complete, process 0 records the size and SHA-256 of
every file of the step in ``<epoch>.files.json`` beside it (written atomically), and
:meth:`Checkpointer.problem` compares the files with that record.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx

from train import distributed

TMP_MARK = ".orbax-checkpoint-tmp"  # orbax's suffix of a step being written
LOOKAHEAD_ITEM = "ema"  # the lookahead average's key in ``state``: kept, old checkpoints read


def step_dir(folder: str | Path, step: int) -> Path:
    """The folder checkpoint ``step`` of ``folder`` is written to (orbax names it so)."""
    return Path(folder) / str(step)


class Checkpointer:
    """Saves and restores ``(model, optimizer, lookahead, meta)`` under ``directory``."""

    def __init__(self, directory: str | Path, max_to_keep: int = 2, read_only: bool = False):
        """``read_only``: reads an existing ``directory`` and changes nothing in it (not
        even the leftovers of an interrupted write)."""
        self.directory = Path(directory).absolute()
        # The manager deletes these on start: note them first (a save that was interrupted).
        self.unfinished = sorted(
            p.name for p in self.directory.glob(f"*{TMP_MARK}*") if p.is_dir()
        ) if self.directory.is_dir() else []  # fmt: skip
        options = ocp.CheckpointManagerOptions(
            max_to_keep=max_to_keep,
            enable_async_checkpointing=False,
            cleanup_tmp_directories=not read_only,
            create=not read_only,
            read_only=read_only,
        )
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def step_dir(self, step: int) -> Path:
        """The folder of checkpoint ``step``: ``<directory>/<step>``."""
        return step_dir(self.directory, step)

    def latest_step(self) -> int | None:
        """The number of the newest complete checkpoint, or ``None``."""
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return list(self.manager.all_steps())

    def steps_on_disk(self) -> list[int]:
        """Every numbered step directory, newest first, whether orbax can read it or not."""
        names = [p.name for p in self.directory.iterdir() if p.is_dir() and p.name.isdigit()]
        return sorted(map(int, names), reverse=True)

    def problem(self, step: int) -> str | None:
        """What is wrong with the files of checkpoint ``step`` (``None``: they are as
        written, or were written before file records existed)."""
        record = self._record_path(step)
        if not record.is_file():
            return None
        try:
            expected = json.loads(record.read_text())
        except (OSError, ValueError) as exc:
            return f"unreadable file record {record.name}: {exc}"
        actual = _file_digests(self.step_dir(step))
        for name, (size, digest) in expected.items():
            if name not in actual:
                return f"{name} is missing"
            if actual[name][0] != size:
                return f"{name} has {actual[name][0]} bytes, {size} were written"
            if actual[name][1] != digest:
                return f"{name} is altered (SHA-256 differs)"
        return None

    def discard(self, step: int) -> None:
        """Deletes checkpoint ``step`` (a damaged one) so that it can be written again."""
        if distributed.is_main():
            shutil.rmtree(self.step_dir(step), ignore_errors=True)
            self._record_path(step).unlink(missing_ok=True)
        distributed.barrier(f"discard_{step}")
        self.manager.reload()

    def _record_path(self, step: int) -> Path:
        return self.directory / f"{step}.files.json"

    def _write_record(self, step: int) -> None:
        record = {k: list(v) for k, v in _file_digests(self.step_dir(step)).items()}
        path = self._record_path(step)
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(json.dumps(record, indent=1))
        os.replace(tmp, path)
        kept = {str(s) for s in self.manager.all_steps()}
        for old in self.directory.glob("*.files.json"):  # records of checkpoints orbax dropped
            if old.name.split(".")[0] not in kept:
                old.unlink(missing_ok=True)

    def save(self, step: int, *, model, optimizer, lookahead: Any, meta: dict) -> None:
        """Writes checkpoint ``step`` (the number of completed epochs) and waits for it."""
        state = {
            "model": nnx.to_pure_dict(nnx.state(model)),
            "optimizer": nnx.to_pure_dict(nnx.state(optimizer)),
        }
        if lookahead is not None:
            state[LOOKAHEAD_ITEM] = lookahead
        args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
        self.manager.save(step, args=args, force=True)
        self.manager.wait_until_finished()
        if distributed.is_main():
            self._write_record(step)

    def read_meta(self, step: int) -> dict:
        """The JSON record of checkpoint ``step`` alone (no arrays are read)."""
        restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(restored["meta"])

    def restore(self, step: int, *, model, optimizer, lookahead: Any) -> tuple[Any, dict]:
        """Loads checkpoint ``step`` into ``model`` and ``optimizer`` (in place).

        ``lookahead`` is a pytree of the same structure as the average saved (its values are
        ignored), or ``None`` if none was saved; returns ``(restored_lookahead, meta)``.
        """
        model_state, opt_state = nnx.state(model), nnx.state(optimizer)
        target = {"model": nnx.to_pure_dict(model_state), "optimizer": nnx.to_pure_dict(opt_state)}
        if lookahead is not None:
            target[LOOKAHEAD_ITEM] = lookahead
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
        args = ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
        )
        restored = self.manager.restore(step, args=args)
        nnx.replace_by_pure_dict(model_state, restored["state"]["model"])
        nnx.update(model, model_state)
        nnx.replace_by_pure_dict(opt_state, restored["state"]["optimizer"])
        nnx.update(optimizer, opt_state)
        return restored["state"].get(LOOKAHEAD_ITEM), dict(restored["meta"])

    def close(self) -> None:
        self.manager.close()


def _file_digests(folder: Path) -> dict[str, tuple[int, str]]:
    """``{relative path: (size, SHA-256)}`` of every file under ``folder``."""
    out = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        out[path.relative_to(folder).as_posix()] = (path.stat().st_size, digest)
    return out
