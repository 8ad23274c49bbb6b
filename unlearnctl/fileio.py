"""Files a run owns: temporary files that name their writer, the cleanup of stale ones, and output locks.

**Temporary files.** :func:`temp_file` is where an atomic write puts its bytes before the rename:
``.NAME.PID.XXXXXXXX.tmp`` next to ``NAME``, with the writer's process id in the name. A process killed
in the middle of a write (SIGKILL, power cut) leaves that file behind; it is *stale* once no live process
owns it. (``.NAME.XXXXXXXX.tmp`` without a PID is the older naming; such a file can only be stale when
the run that finds it holds the output's lock, see below.)

**Output locks.** Two runs writing the same ``--out`` at once would race, and the last writer would win
silently. A run that writes a checkpoint first claims its output (:func:`claim_output`): it takes
``OUT.lock``, a file holding its PID and an exclusive ``flock`` on it. The kernel drops the ``flock``
when the process ends in any way (exit, crash, SIGKILL), so a lock file left by a killed run is stale
by construction — no PID liveness guess, no PID-reuse mistake. A second run finds the lock held and
exits 2 naming the first run's PID. The lock file is removed when the run ends (the CLI's ``run`` and, as
a fallback, at interpreter exit). Holding the lock, the run then removes the stale temporary files of
its output and state paths: while the lock is held, no other process may write them.

In a multi-process run (``accelerate launch``) only the main process writes files, so only it locks.
"""

from __future__ import annotations

import atexit
import os
import tempfile
from pathlib import Path

from unlearnctl.errors import BadInputError

_held: dict[Path, int] = {}  # lock file → open descriptor holding its flock


def temp_file(path: str | Path, delete: bool = False):
    """A new temporary file next to ``path`` named ``.NAME.PID.XXXXXXXX.tmp`` (an open binary handle)."""
    path = Path(path)
    return tempfile.NamedTemporaryFile(dir=path.parent if str(path.parent) else ".",
                                       prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", delete=delete)


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (signal 0 checks without sending anything)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, under another user
        return True
    return True


def temp_owner(temp: Path, path: Path) -> int | None:
    """The writer's PID embedded in ``temp`` (a temporary file of ``path``), or ``None`` for the older naming."""
    middle = temp.name[len(f".{path.name}."):-len(".tmp")]
    pid, dot, _ = middle.partition(".")
    return int(pid) if dot and pid.isdigit() else None


def temp_files(path: str | Path) -> list[Path]:
    """Every temporary file of ``path`` (``.NAME.*.tmp`` next to it), live or stale."""
    path = Path(path)
    folder = path.parent if str(path.parent) else Path(".")
    prefix = f".{path.name}."
    try:
        return sorted(p for p in folder.iterdir() if p.name.startswith(prefix) and p.name.endswith(".tmp")
                      and len(p.name) > len(prefix) + len(".tmp"))
    except OSError:
        return []


def stale_temp_files(path: str | Path, locked: bool = False) -> list[Path]:
    """Temporary files of ``path`` that no live process owns.

    A file naming a PID is stale when that process is gone (or is this process, which is not writing it
    now). A file in the older naming, without a PID, counts as stale only when ``locked``: the caller holds
    ``path``'s output lock, so no other process writes it.
    """
    path = Path(path)
    stale = []
    for temp in temp_files(path):
        pid = temp_owner(temp, path)
        if (pid is None and locked) or (pid is not None and (pid == os.getpid() or not pid_alive(pid))):
            stale.append(temp)
    return stale


def remove_stale_temp_files(*paths: str | Path, locked: bool = False) -> list[Path]:
    """Remove the stale temporary files of each of ``paths``; returns those removed."""
    removed = []
    for path in paths:
        for temp in stale_temp_files(path, locked=locked):
            try:
                temp.unlink()
                removed.append(temp)
            except FileNotFoundError:
                pass
            except OSError:
                pass  # not ours to remove (permissions): leave it
    return removed


def lock_path(out: str | Path) -> Path:
    """``run.safetensors`` → ``run.safetensors.lock``."""
    out = Path(out)
    return out.with_name(f"{out.name}.lock")


def _holder(lock: Path) -> str:
    try:
        text = lock.read_text().strip()
    except OSError:
        text = ""
    return f"process {text}" if text.isdigit() else "another process"


def lock_output(out: str | Path) -> Path | None:
    """Take ``OUT.lock`` for this process; :class:`BadInputError` naming the holder if another run has it.

    Re-entrant: a process that already holds the lock keeps it. Returns the lock file (``None`` in a
    non-main process of a multi-process run, which writes nothing).
    """
    import fcntl

    from unlearnctl.distributed import is_main_process

    if not is_main_process():
        return None
    lock = lock_path(out)
    key = lock.absolute()
    if key in _held:
        return lock
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise BadInputError(f"cannot create the output lock {lock} ({exc.strerror}); choose another --out folder") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise BadInputError(f"--out {out} is being written by another unlearnctl run ({_holder(lock)}, lock {lock}); "
                                "wait for it to finish or choose another --out") from None
        try:
            same = os.fstat(fd).st_ino == os.stat(lock).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)  # the holder removed the file between our open and flock: lock the new one
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    _held[key] = fd
    return lock


def release_output_locks() -> None:
    """Remove and unlock every output lock this process holds (end of a command; also at exit)."""
    for lock, fd in list(_held.items()):
        try:
            lock.unlink(missing_ok=True)  # unlink first: a run waiting on this inode then re-checks the path
        finally:
            os.close(fd)
            del _held[lock]


atexit.register(release_output_locks)


def claim_output(out: str | Path, *related: str | Path) -> Path | None:
    """Before a run that writes ``out``: take its lock, then remove the stale temporary files of ``out`` and of
    ``related`` (its state and last-good files). Returns the lock file (see :func:`lock_output`)."""
    lock = lock_output(out)
    if lock is not None:  # a non-main process of a multi-process run touches no files
        remove_stale_temp_files(out, *related, locked=True)
    return lock
