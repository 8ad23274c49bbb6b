"""Resumable run state (``--checkpoint-every N``, ``--resume STATE``) and the last-good-state rule.

A **state file** holds everything a run changes, so that a resumed run continues exactly where the
interrupted one stopped: model weights, AdamW moments and step counts, the learning-rate scheduler's
position, the EMA shadow, the ``torch.Generator`` state (batches, timesteps, noise, label dropout), the
step counter, method state (saliency masks, chosen constants, probe results) and the command's full
parameter set. On CPU a resumed run gives bit-identical weights to an uninterrupted one.

It is a safetensors file — tensors plus JSON metadata, never pickle — so loading it runs no code, and
its header is validated like a checkpoint's (:func:`unlearnctl.checkpoint.read_header`):

==================  =====================================================================
metadata key        content
==================  =====================================================================
``format``          ``"unlearnctl-state"``
``format_version``  ``"1"``
``command``         the command that wrote it (``train``, ``unlearn``, ``relearn-attack``)
``params``          JSON: every parameter that determines the result (recipe, seed, data and
                    forget fingerprints, base model hash); ``--resume`` refuses a run whose
                    parameters differ
``step``            optimizer steps completed
``state``           JSON skeleton of the nested state; each tensor appears as
                    ``{"__tensor__": name}`` and is stored under that name
``integrity``       sha256 over the four entries above and every tensor's name, dtype, shape
                    and bytes: a state damaged on disk is refused, never resumed from
==================  =====================================================================

``OUT.state.safetensors`` (next to the output) is rewritten atomically every N steps, never with
non-finite weights, and removed once the output is written. ``OUT.last-good.safetensors`` is a normal
checkpoint written only when a run stops on a NaN/Inf: the last weights whose loss, gradient and values
were all finite.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch

from unlearnctl.errors import BadInputError, NonFiniteFailure, RuntimeFailure, UnlearnctlError, require
from unlearnctl.tensors import first_nonfinite

STATE_FORMAT = "unlearnctl-state"
STATE_FORMAT_VERSION = 1
TENSOR, TUPLE, ITEMS, FLOAT = "__tensor__", "__tuple__", "__items__", "__float__"


class Interrupted(UnlearnctlError):
    """Ctrl-C during a run: exit 130, no output written (the message names the state to resume from)."""

    exit_code = 130


# --------------------------------------------------------------------------------------------- file names


def state_path_for(out: str | Path) -> Path:
    """``run.safetensors`` → ``run.state.safetensors``: where ``--checkpoint-every`` writes."""
    out = Path(out)
    return out.with_name(f"{out.stem}.state{out.suffix}")


def last_good_path(out: str | Path) -> Path:
    """``run.safetensors`` → ``run.last-good.safetensors``: the last finite weights of a run stopped by NaN/Inf."""
    out = Path(out)
    return out.with_name(f"{out.stem}.last-good{out.suffix}")


# --------------------------------------------------------------------------------------------- (un)packing


def pack(state: Any) -> tuple[Any, dict[str, torch.Tensor]]:
    """Split a nested state (dicts, lists, tuples, numbers, strings, tensors) into JSON and named tensors.

    Dicts with non-string keys (optimizer states are keyed by parameter index) become ``{"__items__":
    [[key, value], ...]}``, tuples ``{"__tuple__": [...]}``, non-finite floats ``{"__float__": "nan"}``, so
    :func:`unpack` rebuilds the same structure with the same types.
    """
    import numpy as np

    tensors: dict[str, torch.Tensor] = {}

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, torch.Tensor):
            name = path or "tensor"
            if name in tensors:
                name = f"{name}#{len(tensors)}"
            tensors[name] = value.detach().cpu().clone().contiguous()  # clone: safetensors refuses shared storage
            return {TENSOR: name}
        if isinstance(value, np.generic):
            value = value.item()
        if value is None or isinstance(value, (bool, int, str)):
            return value
        if isinstance(value, float):
            return value if math.isfinite(value) else {FLOAT: repr(value)}
        if isinstance(value, list):
            return [walk(v, f"{path}.{i}") for i, v in enumerate(value)]
        if isinstance(value, tuple):
            return {TUPLE: [walk(v, f"{path}.{i}") for i, v in enumerate(value)]}
        if isinstance(value, dict):
            if all(isinstance(k, str) and not k.startswith("__") for k in value):
                return {k: walk(v, f"{path}.{k}" if path else k) for k, v in value.items()}
            return {ITEMS: [[walk(k, f"{path}.key"), walk(v, f"{path}.{k}")] for k, v in value.items()]}
        raise TypeError(f"cannot store a {type(value).__name__} at {path!r} in a state file")

    return walk(state, ""), tensors


def unpack(skeleton: Any, tensors: dict[str, torch.Tensor]) -> Any:
    """Inverse of :func:`pack`; every tensor must be referenced exactly as stored."""
    used: set[str] = set()

    def walk(value: Any) -> Any:
        if isinstance(value, list):
            return [walk(v) for v in value]
        if not isinstance(value, dict):
            return value
        if set(value) == {TENSOR}:
            name = value[TENSOR]
            if not isinstance(name, str) or name not in tensors:
                raise ValueError(f"missing tensor {str(name)[:60]!r}")
            used.add(name)
            return tensors[name]
        if set(value) == {TUPLE}:
            return tuple(walk(v) for v in value[TUPLE])
        if set(value) == {ITEMS}:
            return {_hashable(walk(k)): walk(v) for k, v in value[ITEMS]}
        if set(value) == {FLOAT}:
            return float(value[FLOAT])
        return {k: walk(v) for k, v in value.items()}

    state = walk(skeleton)
    if used != set(tensors):
        raise ValueError(f"{len(set(tensors) - used)} stored tensors are not referenced")
    return state


def _hashable(key: Any) -> Any:
    hash(key)  # TypeError for a list/dict key: a corrupt skeleton
    return key


# --------------------------------------------------------------------------------------------- state files


@dataclass
class RunState:
    """A loaded state file."""

    path: Path
    command: str
    params: dict[str, Any]
    step: int
    state: dict[str, Any]


def canonical(params: dict[str, Any]) -> dict[str, Any]:
    """Parameters as they compare after a JSON round trip (tuples → lists, keys sorted)."""
    return json.loads(json.dumps(params, sort_keys=True, default=str))


def _state_integrity(metadata: dict[str, str], tensors: dict[str, torch.Tensor]) -> str:
    import hashlib

    from unlearnctl.checkpoint import weights_sha256

    record = [metadata.get(key) for key in ("command", "params", "step", "state")] + [weights_sha256(tensors)]
    return hashlib.sha256(json.dumps(record).encode("utf-8")).hexdigest()


def save_state(path: str | Path, command: str, params: dict[str, Any], step: int, state: dict[str, Any]) -> Path:
    """Atomically write a state file (see the module docstring for the layout)."""
    from unlearnctl.checkpoint import atomic_write_bytes, safetensors_bytes

    skeleton, tensors = pack(state)
    metadata = {
        "format": STATE_FORMAT, "format_version": str(STATE_FORMAT_VERSION), "command": command,
        "params": json.dumps(canonical(params), sort_keys=True), "step": str(step), "state": json.dumps(skeleton),
    }
    metadata["integrity"] = _state_integrity(metadata, tensors)
    path = Path(path)
    atomic_write_bytes(path, safetensors_bytes(tensors, metadata))
    return path


def load_state(path: str | Path) -> RunState:
    """Read and validate a state file; every problem raises :class:`BadInputError` (nothing is executed)."""
    from safetensors.torch import load_file

    from unlearnctl.checkpoint import FORMAT_NAME, PICKLE_SUFFIXES, read_header

    path = Path(path)
    require(path.is_file(), f"resume state {path} does not exist; give the .state.safetensors file written by --checkpoint-every")
    require(path.suffix.lower() not in PICKLE_SUFFIXES, f"{path} is a pickle file; resume states are .safetensors files written by --checkpoint-every")
    header = read_header(path)
    meta = header.get("__metadata__")
    meta = meta if isinstance(meta, dict) else {}
    if meta.get("format") == FORMAT_NAME:
        raise BadInputError(f"{path} is a model checkpoint, not a resume state; pass the .state.safetensors file written by --checkpoint-every")
    require(meta.get("format") == STATE_FORMAT, f"{path} is not an unlearnctl resume state (no {STATE_FORMAT!r} metadata)")
    require(meta.get("format_version") == str(STATE_FORMAT_VERSION),
            f"{path} has state format version {str(meta.get('format_version'))[:20]!r}; this unlearnctl reads version {STATE_FORMAT_VERSION}")
    corrupt = f"{path} is a corrupt resume state (%s); delete it and start over without --resume"
    try:
        command, step = meta["command"], int(meta["step"])
        params, skeleton = json.loads(meta["params"]), json.loads(meta["state"])
    except (KeyError, TypeError, ValueError, RecursionError):
        raise BadInputError(corrupt % "metadata") from None
    require(isinstance(command, str) and isinstance(params, dict) and isinstance(skeleton, dict) and step >= 0, corrupt % "metadata")
    try:
        tensors = load_file(str(path))
    except Exception as exc:  # safetensors' own checks, should ours miss something
        raise BadInputError(corrupt % str(exc)[:100]) from None
    require(meta.get("integrity") == _state_integrity(meta, tensors), corrupt % "integrity check failed")
    try:
        state = unpack(skeleton, tensors)
    except (TypeError, ValueError, RecursionError) as exc:
        raise BadInputError(corrupt % str(exc)[:100]) from None
    return RunState(path, command, params, step, state)


def first_difference(saved: Any, current: Any, where: str = "") -> tuple[str, Any, Any] | None:
    """The first ``(dotted.key, saved value, current value)`` where two parameter sets differ, or ``None``."""
    if isinstance(saved, dict) and isinstance(current, dict):
        for key in sorted(set(saved) | set(current)):
            found = first_difference(saved.get(key), current.get(key), f"{where}.{key}" if where else key)
            if found:
                return found
        return None
    if isinstance(saved, list) and isinstance(current, list) and len(saved) == len(current):
        for i, (a, b) in enumerate(zip(saved, current)):
            found = first_difference(a, b, f"{where}[{i}]")
            if found:
                return found
        return None
    return None if saved == current else (where, saved, current)


@dataclass
class Checkpointer:
    """Writes a run's state every ``every`` steps and holds the state it resumes from.

    Created by :meth:`ResumeOptions.start`. A training loop calls :meth:`restore` once before its first
    step and :meth:`maybe_save` after each completed step. ``extras`` lets the caller add its own state
    (curve points of an attack): ``{name: (get, set)}``.
    """

    command: str
    params: dict[str, Any]
    every: int = 0
    path: Path | None = None
    resumed: RunState | None = None
    saved_step: int | None = None
    extras: dict[str, tuple[Callable[[], Any], Callable[[Any], None]]] = field(default_factory=dict)

    @property
    def start_step(self) -> int:
        return self.resumed.step if self.resumed else 0

    def restore(self) -> dict[str, Any] | None:
        """The saved loop state to load (``None`` when not resuming); the extras are restored here."""
        if self.resumed is None:
            return None
        state = dict(self.resumed.state)
        for name, (_, set_state) in self.extras.items():
            require(name in state, f"{self.resumed.path} lacks the {name!r} state this run needs; start over without --resume")
            set_state(state.pop(name))
        return state

    def maybe_save(self, step: int, get_state: Callable[[], dict[str, Any]]) -> None:
        """After step ``step``: write the state if it is due. Never writes non-finite weights."""
        if not self.every or self.path is None or step % self.every:
            return
        state = get_state()
        state.update({name: get() for name, (get, _) in self.extras.items()})
        _, tensors = pack(state)
        bad = first_nonfinite(tensors)
        if bad is not None:
            raise NonFiniteFailure(f"state {bad} became non-finite at step {step}; lower --lr", step)
        save_state(self.path, self.command, self.params, step, state)
        self.saved_step = step


@dataclass
class ResumeOptions:
    """What the user asked: write state every ``checkpoint_every`` steps to ``state_path``; resume from ``resume_path``."""

    checkpoint_every: int = 0
    state_path: Path | None = None
    resume_path: Path | None = None
    checkpointer: Checkpointer | None = None  # set by start()

    def __post_init__(self):
        require(self.checkpoint_every >= 0, f"--checkpoint-every must be >= 0 steps (0 = off), got {self.checkpoint_every}")
        require(not self.checkpoint_every or self.state_path is not None, "--checkpoint-every needs a state file path")
        if self.resume_path is not None:
            self.resume_path = Path(self.resume_path)
            require(self.resume_path.is_file(), f"--resume {self.resume_path} does not exist; give the .state.safetensors file "
                    "written by --checkpoint-every")

    @classmethod
    def for_output(cls, out: str | Path, checkpoint_every: int = 0, resume: str | Path | None = None) -> "ResumeOptions":
        """The CLI's options: the state goes next to ``out`` (``OUT.state.safetensors``).

        Claims ``out`` first (:func:`unlearnctl.fileio.claim_output`): a second run writing the same file
        exits 2 naming the first, and temporary files left by a killed run are removed.
        """
        from unlearnctl.checkpoint import check_output_path
        from unlearnctl.fileio import claim_output

        state_path = state_path_for(out)
        claim_output(out, state_path, last_good_path(out))
        if checkpoint_every:
            check_output_path(state_path)
            require(not state_path.exists() or (resume is not None and Path(resume).resolve() == state_path.resolve()),
                    f"{state_path} holds the state of an interrupted run; continue it with --resume {state_path}, "
                    "or delete it to start over")
        return cls(checkpoint_every, state_path, Path(resume) if resume is not None else None)

    def start(self, command: str, params: dict[str, Any], total_steps: int | None = None) -> Checkpointer:
        """Load and check the state to resume from (same command, same parameters) before any work."""
        params = canonical(params)
        resumed = None
        if self.resume_path is not None:
            resumed = load_state(self.resume_path)
            where = f"--resume {self.resume_path}"
            require(resumed.command == command,
                    f"{where} was written by `{resumed.command[:40]}`, not `{command}`; resume it with the command that wrote it")
            diff = first_difference(resumed.params, params)
            if diff is not None:
                key, old, new = diff
                raise BadInputError(f"{where} was saved with {key}={_short(old)}, this run has {key}={_short(new)}; "
                                    "rerun with the same options, or drop --resume to start over")
            require(total_steps is None or resumed.step <= total_steps,
                    f"{where} is at step {resumed.step}, beyond this run's {total_steps} steps")
        self.checkpointer = Checkpointer(command, params, self.checkpoint_every, self.state_path, resumed)
        return self.checkpointer

    def finish(self) -> None:
        """The output is written: the periodic state is no longer needed (removed by the process that wrote it)."""
        from unlearnctl.distributed import is_main_process

        if self.checkpoint_every and self.state_path is not None and is_main_process():
            self.state_path.unlink(missing_ok=True)


def _short(value: Any) -> str:
    text = json.dumps(value, sort_keys=True) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


@contextmanager
def protect_output(out: str | Path, resume: ResumeOptions | None = None) -> Iterator[None]:
    """Around a run that will write ``out``: turn a NaN/Inf stop into exit 1 with the last good weights
    saved next to ``out``, and Ctrl-C into exit 130 naming the newest resumable state."""
    from unlearnctl.checkpoint import save_checkpoint

    out = Path(out)
    try:
        yield
    except NonFiniteFailure as exc:
        state = resume.checkpointer if resume is not None else None
        message = f"{exc}; no output was written"
        if exc.checkpoint is not None:
            side = save_checkpoint(exc.checkpoint, last_good_path(out))
            message += f"; the last good weights (after step {exc.step}) are in {side}"
        if state is not None and state.saved_step is not None:
            message += f"; the last good resumable state (step {state.saved_step}) is {state.path}"
        raise RuntimeFailure(message) from None
    except KeyboardInterrupt:
        state = resume.checkpointer if resume is not None else None
        message = "interrupted; no output was written"
        if state is not None and state.saved_step is not None:
            message += f"; resume from step {state.saved_step} with --resume {state.path}"
        elif resume is not None and resume.resume_path is not None:
            message += f"; {resume.resume_path} is unchanged"
        raise Interrupted(message) from None
