"""Orbax checkpoints of a training run: train state + data iterator + config in one step folder.

``WORKDIR/checkpoints/<step>/`` holds three items:

* ``state``: the train state pytree (params, optimizer state, EMA, step), saved asynchronously
  (Orbax copies the arrays to host before ``save`` returns, then writes in the background);
* ``data``: the Grain iterator state, one file per process (``grain.checkpoint``);
* ``meta``: JSON with the config, the mesh, counters (skipped samples) and the wall time.

Orbax only lists a step once all of its items are committed, so a run killed mid-save leaves a
temporary folder that is ignored; :meth:`Checkpointer.restore` also falls back to the previous
step when the latest one cannot be read, and moves the damaged step aside to
``WORKDIR/checkpoints.damaged/<step>-<time>`` (renamed, never deleted) so that the resumed run can
save that step again. When no step at all can be read, :class:`NoGoodCheckpointError` says so and
nothing is moved. Restoring onto a different mesh is a matter of passing
a target whose ShapeDtypeStructs carry the new shardings.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import pathlib
import time
from typing import Any

import jax
from jax.experimental import multihost_utils

log = logging.getLogger(__name__)


def _ocp():
    import orbax.checkpoint as ocp  # noqa: PLC0415

    return ocp


class NoGoodCheckpointError(RuntimeError):
    """Checkpoints exist but none of them can be restored."""


class CheckpointWriteError(RuntimeError):
    """A step could not be written (disk full, read-only or missing folder); earlier steps are intact."""


def _os_error(e: BaseException) -> OSError | None:
    """The first ``OSError`` in ``e``'s chain (Orbax wraps the errors of its writer threads)."""
    seen = set()
    while e is not None and id(e) not in seen:
        if isinstance(e, OSError):
            return e
        seen.add(id(e))
        e = e.__cause__ or e.__context__
    return None


class Checkpointer:
    def __init__(self, directory: str | os.PathLike, *, keep: int = 3, async_save: bool = True):
        import grain  # noqa: PLC0415

        ocp = _ocp()
        self.directory = str(pathlib.Path(directory).absolute()) if "://" not in str(directory) else str(directory)
        self.manager = ocp.CheckpointManager(
            self.directory, item_names=("state", "data", "meta"),
            item_handlers={"state": ocp.StandardCheckpointHandler(), "data": grain.checkpoint.CheckpointHandler(),
                           "meta": ocp.JsonCheckpointHandler()},
            options=ocp.CheckpointManagerOptions(max_to_keep=keep if keep and keep > 0 else None,
                                                 enable_async_checkpointing=async_save, create=True))
        self._pending: int | None = None  # the step whose asynchronous save may still fail

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: Any, data_iterator=None, meta: dict | None = None) -> bool:
        import grain  # noqa: PLC0415

        ocp = _ocp()
        items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta or {})}
        if data_iterator is not None:
            items["data"] = grain.checkpoint.CheckpointSave(data_iterator)
        with self._write_errors(int(step)):
            saved = self.manager.save(int(step), args=ocp.args.Composite(**items), force=True)
        self._pending = int(step)
        return saved

    @contextlib.contextmanager
    def _write_errors(self, step: int):
        """Turn a failed write (of ``step``, or of the asynchronous save before it) into one line."""
        try:
            yield
        except Exception as e:  # noqa: BLE001 - Orbax re-raises writer-thread errors in many wrappers
            err = _os_error(e)
            failed = self._pending if self._pending is not None and self._pending != step else step
            self._pending = None
            reason = (err.strerror or str(err)) if err is not None else f"{type(e).__name__}: {str(e)[:200]}"
            done = [s for s in self.all_steps_on_disk() if s != failed]
            kept = f"step {done[-1]} is intact" if done else "no earlier checkpoint exists"
            raise CheckpointWriteError(
                f"{reason.lower()} while saving step {failed} to {self.directory}; {kept} "
                f"(free some space or fix the folder's permissions, then run the same command to resume)"
                .replace("\n", " ")) from None

    def all_steps_on_disk(self) -> list[int]:
        """The committed step folders (read from disk, not Orbax's cache)."""
        if "://" in self.directory:
            return self.all_steps()
        d = pathlib.Path(self.directory)
        return sorted(int(p.name) for p in d.iterdir() if p.name.isdigit()) if d.is_dir() else []

    def restore(self, abstract_state: Any, data_iterator=None, step: int | None = None):
        """Restore the latest good step (or ``step``): ``(step, state, meta)``; None if there is none.

        ``data_iterator``, if given, is set to the saved position in place.
        """
        import grain  # noqa: PLC0415

        ocp = _ocp()
        steps = [step] if step is not None else sorted(self.manager.all_steps(), reverse=True)
        errors = []
        for s in steps:
            items = {"state": ocp.args.StandardRestore(abstract_state), "meta": ocp.args.JsonRestore()}
            data_state = None
            if data_iterator is not None:
                own = self._data_file(s, jax.process_index(), jax.process_count())
                if own is None or own.exists():
                    items["data"] = grain.checkpoint.CheckpointRestore(data_iterator)
                else:  # saved by another number of processes: the plan position is the same on every host
                    data_state = self._any_data_state(s)
            try:
                out = self.manager.restore(s, args=ocp.args.Composite(**items))
            except Exception as e:  # noqa: BLE001 - a damaged step: try the previous one
                log.warning("checkpoint step %s cannot be restored (%s: %s); trying an earlier one",
                            s, type(e).__name__, str(e)[:500])
                errors.append((s, e))
                continue
            if data_state is not None:
                data_iterator.set_state(data_state)
            for bad, _ in errors:
                self._move_aside(bad)
            return s, out["state"], dict(out["meta"] or {})
        if errors:
            raise NoGoodCheckpointError(
                f"no checkpoint in {self.directory} could be restored ("
                + "; ".join(f"step {s}: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}"
                            for s, e in errors)
                + "); move that folder away to start from scratch")
        return None

    def _move_aside(self, step: int) -> None:
        """Rename the damaged ``step`` folder to ``<directory>.damaged/<step>-<time>`` (process 0)."""
        if "://" in self.directory:
            log.warning("checkpoint step %s is damaged; remove it by hand (remote storage)", step)
            return
        src = pathlib.Path(self.directory) / str(step)
        if jax.process_index() == 0 and src.exists():
            dst = pathlib.Path(self.directory + ".damaged") / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
            dst.parent.mkdir(parents=True, exist_ok=True)
            while dst.exists():
                dst = dst.with_name(dst.name + "x")
            os.replace(src, dst)
            log.warning("moved the damaged checkpoint step %s aside to %s", step, dst)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices(f"checkpoint_move_aside_{step}")
        self.manager.reload()

    def _data_file(self, step: int, index: int, count: int) -> pathlib.Path | None:
        if "://" in self.directory:
            return None
        return pathlib.Path(self.directory) / str(step) / "data" / f"process_{index}-of-{count}.json"

    def _any_data_state(self, step: int) -> dict | None:
        files = sorted((pathlib.Path(self.directory) / str(step) / "data").glob("process_*-of-*.json"))
        if not files:
            log.warning("checkpoint step %s has no data iterator state: the data restarts from the beginning", step)
            return None
        log.info("restoring the data iterator from %s (saved by another number of processes)", files[0].name)
        return json.loads(files[0].read_text())

    def wait(self) -> None:
        with self._write_errors(self._pending if self._pending is not None else -1):
            self.manager.wait_until_finished()
        self._pending = None

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self.manager.close()


def restore_params(directory: str | os.PathLike, abstract_params: Any, step: int | None = None) -> Any:
    """Only the parameters of another run's checkpoint (``directory`` = its ``checkpoints/`` folder or
    its workdir), placed in the shardings of ``abstract_params`` (fine-tuning / evaluation)."""
    ocp = _ocp()
    d = pathlib.Path(directory)
    if (d / "checkpoints").is_dir():
        d = d / "checkpoints"
    mngr = ocp.CheckpointManager(str(d.absolute()), item_names=("state", "data", "meta"),
                                 item_handlers={"state": ocp.PyTreeCheckpointHandler()},
                                 options=ocp.CheckpointManagerOptions(read_only=True))
    step = mngr.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(f"no checkpoint in {d}")
    target = {"params": abstract_params}
    restore_args = jax.tree.map(lambda a: ocp.ArrayRestoreArgs(sharding=a.sharding, dtype=a.dtype), target)
    out = mngr.restore(step, args=ocp.args.Composite(
        state=ocp.args.PyTreeRestore(item=target, restore_args=restore_args, partial_restore=True)))
    mngr.close()
    return out["state"]["params"]
