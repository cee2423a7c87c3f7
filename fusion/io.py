"""Persistence primitives: atomic writes, sha256 checksums, verified safetensors and JSON.

Every writer here either leaves the complete result or nothing: files are written beside their target and
renamed into place, directories are built under a temporary name and swapped in at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterator, Mapping
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import ChecksumError, PersistenceError

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


def _fresh_name(target: Path, tag: str) -> Path:
    """An unused hidden name beside ``target`` for staging it."""
    return target.parent / f".{target.name}.{tag}{os.getpid()}-{uuid.uuid4().hex[:12]}"


@contextlib.contextmanager
def atomic_directory(target: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary directory that replaces ``target`` only if the block finishes without error.

    Example:
        >>> with atomic_directory(tmp / "out") as staging:  # doctest: +SKIP
        ...     (staging / "config.json").write_text("{}")
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = _fresh_name(target, "tmp-")
    staging.mkdir(0o777)  # honours the umask, unlike mkdtemp's 0o700
    try:
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    backup = None
    if target.exists():
        backup = target.parent / f".{target.name}.old-{os.getpid()}"
        shutil.rmtree(backup, ignore_errors=True)
        target.rename(backup)
    staging.rename(target)
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
    followed) must lie inside the resolved ``root``; nothing under it is opened, so an entry of an untrusted
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
        base = Path(root).resolve()
        target = (base / relative).resolve()
    except (OSError, RuntimeError) as err:  # a symlink loop
        raise PersistenceError(f"{what}: {relative!r} cannot be resolved ({err}); refused.") from err
    if target != base and base not in target.parents:
        raise PersistenceError(f"{what}: {relative!r} leads outside the folder (through a symlink); refused.")
    return Path(root) / relative


def verify_checksum(path: str | os.PathLike, expected: str, what: str) -> None:
    """Raise ChecksumError when the file's sha256 is not ``expected``."""
    path = Path(path)
    if not path.is_file():
        raise PersistenceError(f"{what}: file {path} is missing; restore it or save the ensemble again.")
    actual = sha256_file(path)
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
    if sha256 is not None:
        verify_checksum(path, sha256, what)
    elif not path.is_file():
        raise PersistenceError(f"{what}: file {path} is missing; restore it or save the ensemble again.")
    try:
        tensors = load_file(str(path))
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
