"""Persistence primitives: atomic writes, sha256 checksums, verified safetensors and JSON.

Every writer here either leaves the complete result or nothing: files are written beside their target and
renamed into place, directories are built under a temporary name and swapped in at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import time
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load, load_file, save_file

from .errors import ChecksumError, PersistenceError

logger = logging.getLogger(__name__)

_CHUNK = 1 << 20


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_tensors(tensors: Mapping[str, torch.Tensor]) -> str:
    """Hex sha256 over tensor names, dtypes, shapes and bytes: a fingerprint of learned state."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


_LEFTOVER = re.compile(r"\.(?P<name>.+)\.(?P<what>tmp|old)-(?P<pid>\d+)-[0-9a-f]{12}")
_STALE_SECONDS = 24 * 3600  # a staging folder this old is abandoned even if its pid was reused


def _fresh_name(target: Path, tag: str) -> Path:
    """An unused hidden name beside ``target`` for staging it: ``.NAME.TAG<pid>-<12 hex>``."""
    return target.parent / f".{target.name}.{tag}{os.getpid()}-{uuid.uuid4().hex[:12]}"


def fsync_tree(root: str | os.PathLike) -> None:
    """fsync every file and folder below ``root`` (and ``root`` itself), deepest first, so that a rename of
    ``root`` published after this cannot expose files whose data is not on disk yet after a power loss."""
    for folder, _, names in os.walk(root, topdown=False):
        for name in names:
            path = os.path.join(folder, name)
            if not os.path.islink(path):
                _fsync_path(path, os.O_RDONLY)
        _fsync_path(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))


def _fsync_path(path: str | os.PathLike, flags: int) -> None:
    try:
        fd = os.open(path, flags)
    except OSError:  # a folder cannot be opened on some systems (Windows): nothing to sync there
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def _swap_lock(folder: Path) -> Iterator[None]:
    """Serialise swaps (and their repair) of folders inside ``folder``: an exclusive ``flock`` on the folder
    itself, released by the kernel if the holder dies. A no-op where ``fcntl`` is missing."""
    try:
        import fcntl
    except ImportError:  # Windows
        yield
        return
    fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid() or os.name == "nt":  # on Windows os.kill(pid, 0) would terminate the process
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process, or no way to ask (Windows): assume it is running
        return True
    return True


def _abandoned(target: Path) -> list[tuple[Path, str]]:
    """Hidden staging (``tmp``) and backup (``old``) folders of ``target`` whose writer is gone."""
    found = []
    with contextlib.suppress(FileNotFoundError):
        for path in target.parent.iterdir():
            match = _LEFTOVER.fullmatch(path.name)
            if match is None or match["name"] != target.name:
                continue
            with contextlib.suppress(FileNotFoundError):
                old = time.time() - path.lstat().st_mtime > _STALE_SECONDS
                if old or not _pid_alive(int(match["pid"])):
                    found.append((path, match["what"]))
    return found


def recover_directory(target: str | os.PathLike, marker: str) -> list[str]:
    """Repair what a writer killed during :func:`atomic_directory` left beside ``target``, and say what was done.

    When ``target`` is missing (the writer died between its two renames), the newest complete staging folder
    (it holds ``marker``, the file written last) becomes ``target``, else the backup of the previous version
    does. Staging and backup folders of writers that are gone are then deleted. Runs under the swap lock, so a
    live writer's swap is waited for, never undone.
    """
    target = Path(target)
    if not target.parent.is_dir() or not _abandoned(target):
        return []
    notes = []
    try:
        with _swap_lock(target.parent):
            leftovers = _abandoned(target)
            if not target.exists():
                complete = [p for p, what in leftovers if what == "tmp" and (p / marker).is_file()]
                backups = [p for p, what in leftovers if what == "old" and (p / marker).is_file()]
                newest = sorted(complete, key=lambda p: p.stat().st_mtime, reverse=True) + backups
                if newest:
                    newest[0].rename(target)
                    _fsync_path(target.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
                    kind = "the save that was interrupted while swapping it in" if newest[0] in complete else \
                        "the previous version (the save replacing it was interrupted)"
                    notes.append(f"restored {target} from {newest[0].name}: {kind}")
            for path, _ in leftovers:
                if path.exists():
                    shutil.rmtree(path)
                    notes.append(f"removed {path.name}, left by an interrupted save")
    except OSError as err:  # a read-only folder (a shared download): say what is there, change nothing
        logger.warning("could not repair what an interrupted save left beside %s (%s): %s", target, err,
                       ", ".join(p.name for p, _ in _abandoned(target)))
    for note in notes:
        logger.warning(note)
    return notes


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike, marker: str | None = None) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``target`` only if the block finishes without error.

    Before staging, what an earlier interrupted call left is repaired (see :func:`recover_directory`; ``marker``
    names the file the block writes last, which marks a staging folder complete). The staged files are fsynced
    before the swap, and the swap (``target`` renamed to a backup, the staging folder renamed to ``target``)
    runs under a lock, so concurrent writers replace ``target`` one after the other; a reader sees the old
    folder, the new one, or (between the two renames) none, which :func:`recover_directory` repairs if the
    writer dies there.

    Example:
        >>> with atomic_directory(tmp / "out") as staging:  # doctest: +SKIP
        ...     (staging / "config.json").write_text("{}")
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    if marker is not None:
        recover_directory(target, marker)
    staging = _fresh_name(target, "tmp-")
    staging.mkdir(0o777)  # honours the umask, unlike mkdtemp's 0o700
    try:
        yield staging
        fsync_tree(staging)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    backup = None
    with _swap_lock(target.parent):
        if target.exists():
            backup = _fresh_name(target, "old-")
            target.rename(backup)
        staging.rename(target)
        _fsync_path(target.parent, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    if backup is not None:
        shutil.rmtree(backup, ignore_errors=True)


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; it is renamed over ``path`` when the block completes and removed
    if the block fails, so readers see the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _fresh_name(path, "tmp-")
    os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
    mode = tmp.stat().st_mode  # 0o666 less the umask, as a plain open() gives (mkstemp would give 0o600)
    try:
        yield tmp
        os.chmod(tmp, mode)  # writers that recreate the file (safetensors) must not narrow it
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically."""
    with atomic_file(path) as tmp, open(tmp, "w", encoding="utf-8", newline="") as handle:
        handle.write(text)


def atomic_save_tensors(
    path: str | os.PathLike, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None
) -> None:
    """Write ``tensors`` as one safetensors file, renamed into place once complete."""
    with atomic_file(path) as tmp:
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, tmp, metadata=dict(metadata or {}))


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented, key-sorted JSON (for stable diffs and checksums)."""
    Path(path).write_text(json.dumps(obj, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def read_json(path: str | os.PathLike, what: str) -> Any:
    """Read a JSON file; a missing or invalid file raises PersistenceError naming ``what`` and the path."""
    path = Path(path)
    if not path.is_file():
        raise PersistenceError(f"{what}: {path} is missing. Is this a directory written by save_pretrained?")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise PersistenceError(f"{what}: {path} is not valid JSON ({err}); re-save it or restore it.") from err


def path_inside(root: str | os.PathLike, relative: Any, what: str) -> Path:
    """``root / relative``, refused (PersistenceError naming ``what``) unless it stays inside ``root``.

    ``relative`` must be a relative path string without ``..`` components, and the resolved path (symlinks
    followed) must lie inside the resolved ``root`` (for a Hugging Face cache snapshot: inside its repository
    folder, whose ``blobs/`` the snapshot links to); nothing under it is opened, so an entry of an untrusted
    config cannot make us read a file elsewhere.
    """
    if not isinstance(relative, str) or not relative or "\\" in relative or "\0" in relative:
        raise PersistenceError(f"{what}: {relative!r} is not a relative path inside the folder; refused.")
    pure = PurePosixPath(relative)
    if pure.is_absolute() or PureWindowsPath(relative).is_absolute() or PureWindowsPath(relative).drive:
        raise PersistenceError(f"{what}: {relative!r} is an absolute path; only paths inside the folder are "
                               "accepted, refused.")
    if ".." in pure.parts:
        raise PersistenceError(f"{what}: {relative!r} has a '..' component; only paths inside the folder are "
                               "accepted, refused.")
    try:
        base = _container(Path(root).resolve())
        target = (Path(root).resolve() / relative).resolve()
    except (OSError, RuntimeError) as err:  # a symlink loop
        raise PersistenceError(f"{what}: {relative!r} cannot be resolved ({err}); refused.") from err
    if target != base and base not in target.parents:
        raise PersistenceError(f"{what}: {relative!r} leads outside the folder (through a symlink); refused.")
    return Path(root) / relative


def hub_snapshot_repository(folder: Path) -> Path | None:
    """The repository folder of a Hugging Face cache snapshot (``<cache>/models--ORG--NAME/snapshots/<commit>``),
    or None for any other folder."""
    if folder.parent.name == "snapshots" and folder.parent.parent.name.startswith(("models--", "datasets--")):
        return folder.parent.parent
    return None


def _container(root: Path) -> Path:
    """What paths under ``root`` must stay inside: ``root`` itself, or for a Hugging Face cache snapshot its
    repository folder, since the snapshot's files are links to that repository's ``blobs/``."""
    return hub_snapshot_repository(root) or root


def verify_checksum(path: str | os.PathLike, expected: str, what: str) -> None:
    """Raise ChecksumError when the file's sha256 is not ``expected``."""
    path = Path(path)
    if not path.is_file():
        raise PersistenceError(f"{what}: file {path} is missing; restore it or save the ensemble again.")
    check_digest(sha256_file(path), expected, path, what)


def check_digest(actual: str, expected: str, path: Path, what: str) -> None:
    """Raise ChecksumError naming ``what`` and ``path`` when ``actual`` is not ``expected``."""
    if actual != expected:
        raise ChecksumError(
            f"{what}: {path} has sha256 {actual[:12]}…, but {expected[:12]}… was recorded when it was saved. "
            "The file was changed or corrupted; restore the original or save the ensemble again."
        )


def load_tensors(
    path: str | os.PathLike,
    what: str,
    *,
    sha256: str | None = None,
    expected_shapes: Mapping[str, tuple[int, ...]] | None = None,
) -> dict[str, torch.Tensor]:
    """Load a safetensors file, verifying its checksum and (optionally) exact tensor names and shapes."""
    path = Path(path)
    if not path.is_file():
        raise PersistenceError(f"{what}: file {path} is missing; restore it or save the ensemble again.")
    data = None
    if sha256 is not None:  # verify and parse the same bytes: a file swapped in between cannot slip through
        try:
            data = path.read_bytes()
        except OSError as err:
            raise PersistenceError(f"{what}: {path} cannot be read ({err}).") from err
        check_digest(hashlib.sha256(data).hexdigest(), sha256, path, what)
    try:
        tensors = load_file(str(path)) if data is None else load(data)
    except (SafetensorError, OSError, ValueError) as err:
        raise PersistenceError(f"{what}: {path} is not a readable safetensors file ({err}).") from err
    if expected_shapes is not None:
        check_state(tensors, expected_shapes, f"{what} ({path.name})")
    return tensors


def check_state(
    tensors: Mapping[str, torch.Tensor], expected_shapes: Mapping[str, tuple[int, ...]], what: str
) -> None:
    """Strict comparison of a state dict with expected names and shapes; lists every difference."""
    missing = sorted(set(expected_shapes) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected_shapes))
    wrong = [
        f"{name}: file {tuple(tensors[name].shape)} vs expected {tuple(expected_shapes[name])}"
        for name in sorted(set(tensors) & set(expected_shapes))
        if tuple(tensors[name].shape) != tuple(expected_shapes[name])
    ]
    if missing or unexpected or wrong:
        parts = [f"missing tensors {missing}" if missing else "", f"unexpected tensors {unexpected}" if unexpected else ""]
        parts += [f"shape mismatch {w}" for w in wrong]
        raise PersistenceError(
            f"{what} does not match the saved configuration: {'; '.join(p for p in parts if p)}. "
            "The weights belong to another configuration; save the ensemble again."
        )


def pack_directory(directory: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Every file below ``directory`` as a uint8 tensor named by its relative path, for one safetensors entry.

    Example:
        >>> packed = pack_directory(tmp / "member")  # {"state.safetensors": tensor([...], dtype=torch.uint8)}  # doctest: +SKIP
    """
    root = Path(directory)
    return {path.relative_to(root).as_posix(): torch.frombuffer(bytearray(path.read_bytes()), dtype=torch.uint8)
            for path in sorted(root.rglob("*")) if path.is_file()}


def unpack_directory(packed: Mapping[str, torch.Tensor], directory: str | os.PathLike) -> Path:
    """Write what :func:`pack_directory` packed back as files below ``directory``; refuses paths that leave it."""
    root = Path(directory).resolve()
    for name, tensor in packed.items():
        target = (root / name).resolve()
        if root not in target.parents:
            raise PersistenceError(f"packed file name {name!r} points outside {root}; the entry is not fusion's.")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(tensor.contiguous().numpy().tobytes())
    return root


def save_skops(obj: Any, path: str | os.PathLike) -> None:
    """Write a scikit-learn object as a skops file (no pickle), atomically."""
    import skops.io

    with atomic_file(path) as tmp:
        skops.io.dump(obj, tmp)


def load_skops(path: Path, what: str, trusted_types: list[str] | tuple[str, ...] | None = None) -> Any:
    """Load a skops file (see ``load_skops_bytes``); a missing file is a PersistenceError."""
    if not path.is_file():
        raise PersistenceError(f"{what}: {path} is missing; restore it or save the ensemble again.")
    return load_skops_bytes(path.read_bytes(), f"{what} ({path.name})", trusted_types)


def load_skops_bytes(data: bytes, what: str, trusted_types: list[str] | tuple[str, ...] | None = None) -> Any:
    """Load skops bytes, refusing types outside skops' defaults unless the caller trusts them by name
    (``from_pretrained(..., trusted_types=[...])``)."""
    import skops.io

    try:
        untrusted = skops.io.get_untrusted_types(data=data)
    except Exception as err:
        raise PersistenceError(f"{what}: not a readable skops file ({err}).") from err
    refused = sorted(set(untrusted) - set(trusted_types or []))
    if refused:
        raise PersistenceError(
            f"{what}: contains types that skops does not trust by default: {refused}. If you trust this file, "
            f"pass trusted_types={refused} to from_pretrained."
        )
    try:
        return skops.io.loads(data, trusted=untrusted or None)
    except Exception as err:
        raise PersistenceError(f"{what}: not a readable skops file ({err}).") from err
