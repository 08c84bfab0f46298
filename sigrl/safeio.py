"""Reading untrusted files safely and writing files atomically.

Datasets and checkpoints come from the internet. Three rules follow:

* **Pickles never run code.** :func:`safe_load_pickle` uses an unpickler whose
  ``find_class`` refuses *every* global, so only the plain containers the pickle
  protocol builds without a global can come out: ``dict, list, tuple, str, bytes, int,
  float, bool, None`` (and ``set``/``frozenset`` from protocol 4, ``bytearray`` from 5). A pickle that asks
  for any callable (``os.system``, ``builtins.eval``, a class) raises
  :class:`~sigrl.errors.UnsafeFileError` naming the file and the global, before
  anything is called. Persistent ids are refused too.
* **Paths stay under their root.** :func:`safe_relpath` / :func:`safe_join` turn a
  relative path read from a list file (``Flickr\\actor\\0001_1.jpg`` or
  ``JPEGImages/x.jpg``) into a POSIX relative path, refusing absolute paths, drive
  letters and ``..`` components that climb out of the root.
* **Writes are atomic.** :func:`atomic_write_bytes` / :func:`atomic_write_text` write a
  temporary file in the target's directory, ``fsync`` it and ``os.replace`` it over the
  target, so a reader sees the old file or the new one, never half of one.

Torch files go through :func:`load_torch_weights_only` (``torch.load(...,
weights_only=True)``), which turns a refusal into an UnsafeFileError.
"""
from __future__ import annotations

import io
import os
import pickle
import posixpath
import re
import tempfile
from pathlib import Path
from typing import IO, Callable

from .errors import DataError, UnsafeFileError

__all__ = [
    "safe_load_pickle",
    "fsync_dir",
    "safe_loads_pickle",
    "safe_relpath",
    "safe_join",
    "atomic_write_bytes",
    "atomic_write_text",
    "load_torch_weights_only",
]


class _RestrictedUnpickler(pickle.Unpickler):
    """An unpickler that admits no global at all (see module docstring)."""

    def __init__(self, file, source: str):
        super().__init__(file)
        self._source = source

    def find_class(self, module: str, name: str):  # noqa: D401 - pickle hook
        raise UnsafeFileError(
            f"{self._source}: refused to load pickle: it asks for the global "
            f"'{module}.{name}' (only plain dict/list/tuple/str/bytes/numbers are allowed)"
        )

    def persistent_load(self, pid):
        raise UnsafeFileError(
            f"{self._source}: refused to load pickle: it uses a persistent id "
            "(only plain dict/list/tuple/str/bytes/numbers are allowed)"
        )


def safe_loads_pickle(data: bytes, source: str = "<bytes>"):
    """Unpickle ``data`` admitting plain containers only; ``source`` names it in errors."""
    try:
        return _RestrictedUnpickler(io.BytesIO(data), source).load()
    except UnsafeFileError:
        raise
    except Exception as err:  # truncated / corrupt pickle: a data problem, not code
        raise DataError(f"{source}: not a readable pickle ({type(err).__name__}: {err})") from None


def safe_load_pickle(path: str | os.PathLike):
    """Load the pickle at ``path`` admitting plain containers only.

    Raises:
        UnsafeFileError: the pickle asks for a global (any class or function); the
            message names the file and the global. Nothing is executed.
        DataError: the file is missing or is not a well-formed pickle.
    """
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found (expected a pickle)") from None
    except OSError as err:
        raise DataError(f"{path}: cannot read ({err.strerror})") from None
    return safe_loads_pickle(data, str(path))


_DRIVE = re.compile(r"^[A-Za-z]:")


def safe_relpath(relative: str, *, where: str | None = None) -> str:
    """Normalise ``relative`` to a POSIX path inside its root, or refuse it.

    Backslashes become ``/``; ``.`` components and repeated slashes are removed;
    ``a/../b`` is allowed (it stays inside), ``../b`` is not.

    Args:
        relative: a path read from a list file.
        where: ``"file:line"`` to put in the error message.

    Raises:
        UnsafeFileError: ``relative`` is empty, absolute (``/x``, ``C:\\x``, ``\\\\host``)
            or escapes the root with ``..``.
    """
    prefix = f"{where}: " if where else ""
    text = str(relative).replace("\\", "/")
    if not text.strip():
        raise UnsafeFileError(f"{prefix}empty path (expected a path relative to the dataset root)")
    if text.startswith("/") or _DRIVE.match(text):
        raise UnsafeFileError(
            f"{prefix}absolute path {relative!r} refused (expected a path relative to the dataset root)"
        )
    if "\x00" in text:
        raise UnsafeFileError(f"{prefix}path {relative!r} contains a NUL byte")
    norm = posixpath.normpath(text)
    if norm == ".." or norm.startswith("../") or norm == ".":
        raise UnsafeFileError(
            f"{prefix}path {relative!r} escapes the dataset root (expected a path inside it)"
        )
    return norm


def safe_join(root: str | os.PathLike, relative: str, *, where: str | None = None) -> Path:
    """``root / safe_relpath(relative)``: a path that cannot leave ``root`` lexically.

    Symbolic links inside ``root`` are not resolved (a dataset may legitimately link
    its image folder elsewhere).
    """
    return Path(root) / safe_relpath(relative, where=where)


def atomic_write(path: str | os.PathLike, write: Callable[[IO[bytes]], None]) -> Path:
    """Write ``path`` atomically: ``write(fh)`` fills a temp file in the same directory,
    which is fsync'ed and renamed over ``path`` (the rename is fsync'ed too where the
    platform allows). A failure leaves ``path`` untouched and no temp file behind.

    Parent directories are created. The file gets the usual permissions
    (``0o666 & ~umask``), not the temp file's private ``0o600``. Returns ``path``.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            write(fh)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    fsync_dir(path.parent)  # make the rename itself durable where the platform allows it
    return path


def fsync_dir(path: str | os.PathLike) -> None:
    """fsync a directory (so renames inside it survive a power cut); a no-op where the
    platform cannot open directories."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """:func:`atomic_write` of ``data``."""
    return atomic_write(path, lambda fh: fh.write(data))


def atomic_write_text(path: str | os.PathLike, text: str, encoding: str = "utf-8") -> Path:
    """:func:`atomic_write_bytes` for text (UTF-8, newlines written as given)."""
    return atomic_write_bytes(path, text.encode(encoding))


def load_torch_weights_only(path: str | os.PathLike, map_location="cpu", *, mmap: bool = False):
    """``torch.load(path, weights_only=True)`` with errors a user can act on.

    Tensors, plain containers and numbers load; anything that needs an arbitrary
    global is refused by torch and reported as UnsafeFileError naming the file.
    ``mmap=True`` maps the tensors instead of reading them (files of the zip format
    ``torch.save`` writes since torch 1.6; the legacy format is read in full): enough to
    check a large checkpoint that another library then loads.

    Raises:
        UnsafeFileError: torch refused the file under ``weights_only=True``.
        DataError: the file is missing or not a torch file.
    """
    import warnings

    import torch

    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: file not found (expected a torch .pt file)")
    try:
        with warnings.catch_warnings():  # torch's notes on pickle protocols it does not expect
            warnings.simplefilter("ignore")
            if mmap:
                try:
                    return torch.load(path, map_location=map_location, weights_only=True, mmap=True)
                except RuntimeError as err:
                    if "mmap" not in str(err):
                        raise
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        lines = [line.strip() for line in str(err).strip().splitlines() if line.strip()]
        detail = next((line for line in lines if "GLOBAL" in line), lines[0] if lines else "")
        if "weights only" in str(err).lower() or "weights_only" in str(err) or "GLOBAL" in str(err):
            raise UnsafeFileError(
                f"{path}: refused to load with weights_only=True (it asks to run code): {detail}"
            ) from None
        raise DataError(f"{path}: not a readable torch file ({detail})") from None
    except Exception as err:  # torch raises many kinds for a file that is not a .pt
        msg = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise DataError(f"{path}: not a readable torch file ({msg})") from None
