"""Where results go: staged, moved into the output folder as one set, recorded in a manifest.

- A run writes into a hidden staging folder inside the output folder (``.staging-<pid>-<host>-*``) and
  moves the files in only when everything succeeded, so its results are complete or absent.
- Nothing is replaced without ``overwrite``: checked up front, and again at the move, under a lock
  file, so of two runs into one folder the later mover stops with an error and keeps its results
  aside (``sparseimplant-unmoved-*``).
- A manifest lists what the run moved in. Replacing a run's results removes the earlier run's files
  this run did not write, so stale results never stand beside new ones; files the tool did not
  write are never touched.
- Leftovers of a run whose process is gone (a staging folder, a move cut short by SIGKILL) are
  removed by the next run into that folder.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import tempfile
import threading
import warnings
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Union

from .errors import SparseImplantError

MANIFEST = ".sparseimplant-manifest.json"
LOCK = ".sparseimplant.lock"
STAGING_PREFIX = ".staging-"
UNMOVED_PREFIX = "sparseimplant-unmoved-"
HOST = re.sub(r"[^A-Za-z0-9._-]", "_", socket.gethostname()) or "localhost"
_STAGING_NAME = re.compile(r"^\.staging-(?P<pid>\d+)-(?P<host>.+)-[a-z0-9_]+$")
PathLike = Union[str, os.PathLike]


def _new_file_mode() -> int:
    """The mode a plainly created file gets here (0666 less the umask)."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def atomic_write(path: PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(temporary_path)`` and rename the result to ``path`` only if it succeeded."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=".partial-", suffix="-" + path.name, dir=path.parent)
    os.close(handle)
    temporary_path = Path(temporary)
    try:
        write(temporary_path)
        os.chmod(temporary_path, _new_file_mode())  # mkstemp's 0600 would hide results from other users
        os.replace(temporary_path, path)
    finally:
        temporary_path.unlink(missing_ok=True)
    return path


@contextlib.contextmanager
def staged_output(output_dir: PathLike, names: Sequence[str], overwrite: bool = False) -> Iterator[Path]:
    """Yield a staging folder for the results ``names``; move what it holds into ``output_dir`` as one
    set when the block succeeds. On any error the staging folder goes, and so do the folders this
    call created, so a failed run leaves the output folder as it was."""
    output_dir = Path(output_dir)
    _check_folder(output_dir)
    created = _make_folder(output_dir)
    try:
        _remove_leftovers(output_dir)  # a dead run's half-moved set must not count as results
        _check_clashes(output_dir, names, overwrite)
        staging = Path(tempfile.mkdtemp(prefix=f"{STAGING_PREFIX}{os.getpid()}-{HOST}-", dir=output_dir))
    except BaseException as error:
        _remove_empty(created)
        if isinstance(error, OSError):
            raise _unwritable(output_dir, error) from None
        raise
    try:
        yield staging
        with _signals_held():
            _move_in(staging, output_dir, overwrite)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        _remove_empty(created)
        raise


def check_output(output_dir: PathLike, names: Sequence[str], overwrite: bool = False) -> None:
    """Refuse, before any work, an output folder that cannot be written or already holds results
    (``names``, or an earlier run's, by its manifest) unless ``overwrite``."""
    _check_folder(Path(output_dir))
    _check_clashes(Path(output_dir), names, overwrite)


def _check_folder(output_dir: Path) -> None:
    existing = next(folder for folder in (output_dir, *output_dir.parents) if os.path.lexists(folder))
    if not existing.is_dir():
        where = "is a file" if existing == output_dir else f"lies under the file '{existing}'"
        raise SparseImplantError(f"output path '{output_dir}' {where}: give a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise SparseImplantError(
            f"cannot write into output folder '{output_dir}' ('{existing}' is read-only): choose a folder you can write to"
        )


def _check_clashes(output_dir: Path, names: Sequence[str], overwrite: bool) -> None:
    clashes = _clashes(output_dir, names)
    if clashes and not overwrite:
        raise SparseImplantError(
            f"output folder '{output_dir}' already holds {', '.join(clashes)}: choose another folder or pass --overwrite"
        )


def _clashes(output_dir: Path, names: Sequence[str]) -> List[str]:
    """The files of ``names`` and of the earlier run's manifest that are in ``output_dir``."""
    candidates = set(names) | set(_manifest(output_dir))
    return sorted(name for name in candidates if os.path.lexists(output_dir / name))


def _manifest(output_dir: Path) -> List[str]:
    """What the last run moved into ``output_dir``: plain file names only, so an edited manifest can
    never point the clean-up elsewhere; an unreadable one counts as none (nothing is removed)."""
    try:
        files = json.loads((output_dir / MANIFEST).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    return [name for name in files if isinstance(name, str) and _plain_name(name)] if isinstance(files, list) else []


def _manifest_run(output_dir: Path) -> Optional[str]:
    try:
        return json.loads((output_dir / MANIFEST).read_text(encoding="utf-8")).get("run")
    except (OSError, ValueError, AttributeError):
        return None


def _plain_name(name: str) -> bool:
    return name not in ("", ".", "..", MANIFEST, LOCK) and "/" not in name and "\\" not in name


def _make_folder(output_dir: Path) -> List[Path]:
    """Create ``output_dir``; return the folders that did not exist, deepest first."""
    created = []
    for folder in (output_dir, *output_dir.parents):
        if os.path.isdir(folder):
            break
        created.append(folder)
    try:
        output_dir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        _remove_empty(created)
        raise _unwritable(output_dir, error) from None
    return created


def _remove_empty(folders: Sequence[Path]) -> None:
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (another run's files) or gone: leave it
            return


def _unwritable(output_dir: Path, error: OSError) -> SparseImplantError:
    reason = error.strerror or type(error).__name__
    return SparseImplantError(f"cannot write into output folder '{output_dir}' ({reason}): choose a folder you can write to")


def _move_in(staging: Path, output_dir: Path, overwrite: bool) -> None:
    """Move the staged files in under the folder's lock, replace the manifest, and remove the files
    of the earlier run's manifest that this run did not write."""
    moved = sorted(path.name for path in staging.iterdir())
    run = staging.name[len(STAGING_PREFIX):]  # unique: pid, host and a random part
    with _lock(output_dir, staging) as record:
        earlier = [name for name in _manifest(output_dir) if os.path.lexists(output_dir / name)]
        clashes = sorted(set(earlier) | {name for name in moved if os.path.lexists(output_dir / name)})
        if clashes and not overwrite:
            kept = _keep_aside(staging, output_dir)
            raise SparseImplantError(
                f"output folder '{output_dir}' received {', '.join(clashes)} from another run while this one worked:"
                f" this run's results are kept in '{kept}'; move them elsewhere, or rerun with --overwrite"
            )
        record(run, sorted(set(moved) | set(earlier)))
        for name in moved:
            os.replace(staging / name, output_dir / name)
        for name in sorted(set(earlier) - set(moved)):
            (output_dir / name).unlink(missing_ok=True)
        document = json.dumps({"files": moved, "run": run}, indent=2) + "\n"
        atomic_write(output_dir / MANIFEST, lambda temporary: temporary.write_text(document, encoding="utf-8"))
    staging.rmdir()


@contextlib.contextmanager
def _lock(output_dir: Path, staging: Path) -> Iterator:
    """Hold ``output_dir``'s lock file (created exclusively: one mover at a time) and yield a function
    that records in it which files the move touches, for the clean-up should the mover be killed."""
    lock = output_dir / LOCK
    owner = {"pid": os.getpid(), "host": HOST}
    if not _take(lock, owner) and not (_recover(output_dir) and _take(lock, owner)):
        holder = _read_lock(lock)
        who = f"process {holder['pid']} on {holder['host']}" if holder else "unknown process"
        kept = _keep_aside(staging, output_dir)
        raise SparseImplantError(
            f"another run ({who}) is moving its results into '{output_dir}': this run's results are kept in"
            f" '{kept}'; move them elsewhere, or delete '{lock}' if no run is writing there"
        )

    def record(run: str, touched: Sequence[str]) -> None:
        text = json.dumps({**owner, "run": run, "touches": list(touched)})
        atomic_write(lock, lambda temporary: temporary.write_text(text, encoding="utf-8"))

    try:
        yield record
    finally:
        lock.unlink(missing_ok=True)


def _take(lock: Path, owner: Dict) -> bool:
    """Create the lock file, with its owner inside, unless it exists (then False)."""
    try:
        handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return False
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as stream:
            stream.write(json.dumps(owner))
    except BaseException:
        lock.unlink(missing_ok=True)
        raise
    return True


def _read_lock(lock: Path) -> Optional[Dict]:
    try:
        holder = json.loads(lock.read_text(encoding="utf-8"))
        return holder if isinstance(holder.get("pid"), int) and isinstance(holder.get("host"), str) else None
    except (OSError, ValueError, AttributeError):
        return None


def _recover(output_dir: Path) -> bool:
    """If the lock's process is gone, finish its move: if the manifest names its run, the move had
    completed; otherwise remove every file it may have touched (its set and the set it replaced), so
    the folder holds no mixed results. Returns True when the lock was stale and has been cleared."""
    lock = output_dir / LOCK
    holder = _read_lock(lock)
    if holder is None or holder["host"] != HOST or process_exists(holder["pid"]):
        return False
    claimed = lock.with_name(f"{LOCK}.stale-{os.getpid()}")
    try:
        os.replace(lock, claimed)  # one process claims the stale lock; the others then find it gone
    except FileNotFoundError:
        return True
    touched = [name for name in holder.get("touches", []) if isinstance(name, str) and _plain_name(name)]
    if holder.get("run") is not None and _manifest_run(output_dir) == holder["run"]:
        touched = []
    for name in touched:
        (output_dir / name).unlink(missing_ok=True)
    if touched:
        (output_dir / MANIFEST).unlink(missing_ok=True)
        warnings.warn(f"removed the incomplete results of a run (process {holder['pid']}) killed while moving them"
                      f" into '{output_dir}': {', '.join(touched)}")
    claimed.unlink(missing_ok=True)
    return True


def _keep_aside(staging: Path, output_dir: Path) -> Path:
    """Rename the staging folder so that no later clean-up takes it for a dead run's leftovers."""
    kept = output_dir / (UNMOVED_PREFIX + staging.name[len(STAGING_PREFIX):])
    os.replace(staging, kept)
    return kept


def _remove_leftovers(output_dir: Path) -> None:
    """Remove staging folders, and a move cut short, left by processes of this host that are gone."""
    for entry in os.scandir(output_dir):
        match = _STAGING_NAME.match(entry.name)
        if (match and entry.is_dir(follow_symlinks=False) and match["host"] == HOST
                and not process_exists(int(match["pid"]))):
            shutil.rmtree(entry.path, ignore_errors=True)
    if os.path.lexists(output_dir / LOCK):
        _recover(output_dir)


def process_exists(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine (an unsure answer is yes: nothing is removed)."""
    if os.name == "nt":
        import ctypes

        kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
        handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
        if not handle:
            return ctypes.get_last_error() != 87  # ERROR_INVALID_PARAMETER: no such process
        try:
            code = ctypes.c_ulong()
            return not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)) or code.value == 259  # STILL_ACTIVE
        finally:
            kernel32.CloseHandle(handle)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # e.g. another user's process
        return True
    return True


@contextlib.contextmanager
def _signals_held() -> Iterator[None]:
    """Hold Ctrl-C and SIGTERM while the results are moved in (a few renames), then deliver them:
    stopping half-way would leave a mixed set. Only the main thread may set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: List[int] = []
    numbers = [signal.SIGINT, signal.SIGTERM]
    previous = {number: signal.signal(number, lambda number, frame: received.append(number)) for number in numbers}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)
        if received:
            signal.raise_signal(received[0])
