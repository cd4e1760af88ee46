"""One clip's `.npz` features, read safely: headers first, bounded memory, never a pickle.

An `.npz` is a zip of `.npy` members. Each member read here has its header (shape, dtype)
checked before any of its data is read, then exactly the declared bytes are read. So a
compressed "bomb" (1 MB on disk, gigabytes once inflated) is refused at no cost, and
validating or loading a clip never holds more than a few MB. Limits, per key:

- `clip_features` / `sync_features`: a float array (16, 32 or 64 bit) of shape (1, T, dim)
  or (T, dim), T >= 1. Any T is accepted (ComfyUI's extractor writes a whole video's length
  when its duration is 0: an 81 s video gives 648 CLIP and 2016 sync rows, which its
  trainer trims to 8 s), and only the rows the model uses are read: memory is bounded by
  the clip length, not by the file. A header declaring more than MAX_ARRAY_BYTES is not
  features of any video and is refused unread; a Fortran-order array (rare: its rows are
  not contiguous) is read whole, so it must stay under MAX_FULL_READ_BYTES.
- `prompt` / `variant`: one string of at most MAX_STRING_CHARS characters (ComfyUI-SelVA
  trains on prompts over 10,000 characters; CLIP reads their first 77 tokens).
- `duration`: one number (seconds).

Other members are never read. Object arrays are refused, never unpickled (as pickles).
The file itself is opened only if it is a regular file (inside `root` when given).
"""

from __future__ import annotations

import math
import os
import zipfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import BinaryIO

import numpy as np

from selva_engine.errors import (
    ArrayTooLargeError,
    DatasetError,
    FeatureFileError,
    PickledDataError,
    open_error,
)
from selva_engine.io import open_regular
from selva_engine.model.variants import SequenceConfig, Variant

__all__ = ["MAX_ARRAY_BYTES", "MAX_FULL_READ_BYTES", "MAX_STRING_CHARS", "ClipFeatures",
           "load_features"]

MAX_ARRAY_BYTES = 2 << 30  # declared size of one features array: ~5 h of sync rows at 24 fps
MAX_FULL_READ_BYTES = 64 << 20  # a Fortran-order features array is read whole up to this
MAX_STRING_CHARS = 1_000_000  # 4 MB as UTF-32; CLIP reads 77 tokens of it
EXPORT_FIX = "re-export the clip with the SelVA Feature Extractor node"

HeaderCheck = Callable[[Path, str, tuple[int, ...], np.dtype], None]


@dataclass(frozen=True, eq=False)  # holds arrays: compare fields explicitly
class ClipFeatures:
    """Visual features of one clip, fitted to the model's sequence lengths.

    `clip` is (clip_seq_len, clip_dim) float32, `sync` is (sync_seq_len, sync_dim) float32
    (64x1024 and 192x768 at 8 s). `clip_frames`/`sync_frames` are the lengths stored in the
    file before cutting/padding. `npz_prompt`, `duration` (seconds) and `variant` are the
    optional metadata keys, None when absent.
    """

    clip: np.ndarray  # (Nc, 1024) float32
    sync: np.ndarray  # (Ns, 768) float32
    npz_prompt: str | None
    duration: float | None
    variant: str | None
    clip_frames: int
    sync_frames: int


def _size(nbytes: int) -> str:
    return f"{nbytes / (1 << 30):.1f} GiB" if nbytes >= 1 << 30 else f"{nbytes / (1 << 20):.1f} MiB"


def _check_features(npz_path: Path, key: str, shape: tuple[int, ...], dtype: np.dtype, *,
                    dim: int, seq_len: int, duration: float) -> None:
    """Refuse a features header that is not (1, T, dim)/(T, dim) float with sane T."""
    if dtype.hasobject:
        raise PickledDataError(npz_path, f"{key} holds pickled Python objects; refused",
                               "re-export with numeric float32 arrays (np.savez)")
    if len(shape) not in (2, 3) or (len(shape) == 3 and shape[0] != 1):
        raise FeatureFileError(npz_path, f"{key} has shape {shape}, expected (1, T, {dim})",
                               EXPORT_FIX)
    if shape[-1] != dim:
        raise FeatureFileError(npz_path, f"{key} has last dimension {shape[-1]}, expected "
                               f"{dim} (shape {shape})", EXPORT_FIX)
    frames = shape[-2]
    if frames == 0:
        raise FeatureFileError(npz_path, f"{key} is empty (0 frames)", EXPORT_FIX)
    if dtype.kind != "f" or dtype.itemsize > 8:
        raise FeatureFileError(npz_path, f"{key} has dtype {dtype}, expected float32",
                               EXPORT_FIX)
    nbytes = math.prod(shape) * dtype.itemsize
    if nbytes > MAX_ARRAY_BYTES:
        raise ArrayTooLargeError(
            npz_path, f"{key} declares shape {shape} {dtype} ({_size(nbytes)} once loaded), "
            f"more than the limit of {_size(MAX_ARRAY_BYTES)}: not features of a video; it "
            "was not loaded", f"{EXPORT_FIX}; training uses the first {duration:g} s "
            f"({seq_len} rows)")


def _check_string(npz_path: Path, key: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    if dtype.hasobject:
        raise PickledDataError(npz_path, f"{key} holds pickled Python objects; refused",
                               "re-export with numeric float32 arrays (np.savez)")
    if dtype.kind not in "US" or math.prod(shape) != 1 or len(shape) > 1:
        raise FeatureFileError(npz_path, f"key {key!r} must be a string (got dtype {dtype}, "
                               f"shape {shape})", EXPORT_FIX)
    chars = dtype.itemsize // 4 if dtype.kind == "U" else dtype.itemsize
    if chars > MAX_STRING_CHARS:
        raise ArrayTooLargeError(npz_path, f"key {key!r} declares a string of {chars:,} "
                                 f"characters, more than the limit of {MAX_STRING_CHARS:,}; "
                                 "it was not loaded", f"store a short {key} (or none)")


def _check_number(npz_path: Path, key: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
    if dtype.kind not in "fiu" or math.prod(shape) != 1 or len(shape) > 1:
        raise FeatureFileError(npz_path, f"key {key!r} must be a finite number (got dtype "
                               f"{dtype}, shape {shape})", EXPORT_FIX)


def _read_member(zf: zipfile.ZipFile, member: str, npz_path: Path, key: str,
                 check: HeaderCheck, rows: int | None = None) -> tuple[np.ndarray, int]:
    """Read one `.npy` member: its header, `check(...)` on it, then its data; with `rows`,
    only the first `rows` rows along the frame axis (a C-order array's leading bytes).
    Returns (array, frames declared: the second-last dimension, 0 for a scalar)."""
    with zf.open(member) as m:
        version = np.lib.format.read_magic(m)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(m)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(m)
        else:  # 3.0 only adds UTF-8 field names: structured arrays, never features
            raise FeatureFileError(npz_path, f"{key} uses .npy format {version}, expected "
                                   "1.0 or 2.0", EXPORT_FIX)
        check(npz_path, key, tuple(shape), dtype)
        declared = int(shape[-2]) if len(shape) >= 2 else 0
        if rows is not None and len(shape) >= 2:
            if not fortran:
                shape = (*shape[:-2], min(declared, rows), shape[-1])
            elif math.prod(shape) * dtype.itemsize > MAX_FULL_READ_BYTES:
                raise ArrayTooLargeError(npz_path, f"{key} is a Fortran-order array of "
                                         f"{_size(math.prod(shape) * dtype.itemsize)}, more than "
                                         f"{_size(MAX_FULL_READ_BYTES)} read whole; it was not "
                                         "loaded", "save C-order arrays (np.ascontiguousarray)")
        count = math.prod(shape)
        buf = bytearray(count * dtype.itemsize)  # bounded by the check and the rows used
        view, got = memoryview(buf), 0
        while got < len(buf):
            n = m.readinto(view[got:])
            if not n:
                raise EOFError(f"{key} ends after {got} of {len(buf)} bytes")
            got += n
    arr = np.frombuffer(buf, dtype=dtype, count=count)
    return (arr.reshape(shape[::-1]).transpose() if fortran else arr.reshape(shape)), declared


def _read_arrays(f: BinaryIO, npz_path: Path, variant: Variant,
                 seq: SequenceConfig) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """The members this module knows, each checked from its header before it is read (the
    features only as far as the model uses them); and the frames each features array
    declares."""
    checks: dict[str, HeaderCheck] = {
        "clip_features": partial(_check_features, dim=variant.clip_dim,
                                 seq_len=seq.clip_seq_len, duration=seq.duration),
        "sync_features": partial(_check_features, dim=variant.sync_dim,
                                 seq_len=seq.sync_seq_len, duration=seq.duration),
        "prompt": _check_string, "variant": _check_string, "duration": _check_number,
    }
    try:
        with zipfile.ZipFile(f) as zf:
            members = {n.removesuffix(".npy"): n for n in zf.namelist()}
            missing = [k for k in ("clip_features", "sync_features") if k not in members]
            if missing:
                raise FeatureFileError(
                    npz_path, f"missing key(s) {', '.join(missing)} (has: "
                    f"{', '.join(sorted(members)[:20]) or 'none'})", EXPORT_FIX)
            rows = {"clip_features": seq.clip_seq_len, "sync_features": seq.sync_seq_len}
            read = {key: _read_member(zf, members[key], npz_path, key, check, rows.get(key))
                    for key, check in checks.items() if key in members}
            return ({k: arr for k, (arr, _) in read.items()},
                    {k: frames for k, (_, frames) in read.items() if k in rows})
    except DatasetError:
        raise
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, OSError, KeyError,
            NotImplementedError, RuntimeError) as exc:  # RuntimeError: encrypted member
        raise FeatureFileError(npz_path, f"corrupt or half-written .npz ({type(exc).__name__}: "
                               f"{exc})", EXPORT_FIX) from exc


def _check_magic(f: BinaryIO, npz_path: Path) -> None:
    """Tell zip, .npy, pickle and garbage apart before reading on (never as a pickle)."""
    try:
        head = f.read(8)
        f.seek(0)
    except OSError as exc:
        raise open_error(npz_path, exc) from exc
    if not head:
        raise FeatureFileError(npz_path, "file is empty (0 bytes)", EXPORT_FIX)
    if head.startswith(b"PK"):
        return
    if head.startswith(b"\x93NUMPY"):
        raise FeatureFileError(npz_path, "is a single .npy array, not an .npz archive", EXPORT_FIX)
    if head[:1] == b"\x80":
        raise PickledDataError(npz_path, "is a Python pickle; pickles are refused",
                               "export features with np.savez (the SelVA Feature Extractor node)")
    raise FeatureFileError(npz_path, "is not an .npz (zip) archive: corrupt or half-written",
                           EXPORT_FIX)


def _fit_features(npz_path: Path, key: str, arr: np.ndarray, seq_len: int) -> np.ndarray:
    """Cut/zero-pad header-checked (1, T, dim) or (T, dim) features to (seq_len, dim) float32."""
    arr = (arr[0] if arr.ndim == 3 else arr).astype(np.float32)
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise FeatureFileError(npz_path, f"{key} holds {bad} NaN/infinite values", EXPORT_FIX)
    out = np.zeros((seq_len, arr.shape[1]), dtype=np.float32)
    n = min(int(arr.shape[0]), seq_len)
    out[:n] = arr[:n]  # zero padding in raw feature space, as the original trainer
    return out


def _string(value: np.ndarray | None) -> str | None:
    if value is None:
        return None
    item = value.reshape(()).item()
    return item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)


def load_features(npz_path: Path | str, variant: Variant, duration: float = 8.0,
                  root: Path | str | None = None) -> ClipFeatures:
    """Read one `.npz` and fit its features to `variant` at `duration` seconds.

    Requires `clip_features` (1, Nc', clip_dim) and `sync_features` (1, Ns', sync_dim) (the
    leading 1 may be absent), float, finite, non-empty and within the limits of the module
    docstring; optional `prompt`/`variant` strings and `duration` number. Features are cut
    (only the rows used are read) or zero-padded to the sequence config's
    `clip_seq_len`/`sync_seq_len`; `clip_frames`/`sync_frames` are the rows the file holds. With `root`,
    the file must really lie inside that directory (a link out of it is refused unread).
    Raises `ArrayTooLargeError` for arrays beyond the limits, `PickledDataError` for object
    arrays or pickles, `NotRegularFileError`/`LinkOutsideError`/`UnreadableFileError` for a
    file that is not read, `FeatureFileError` for every other problem.
    """
    npz_path = Path(npz_path)
    if not os.path.lexists(npz_path):
        raise FeatureFileError(npz_path, "feature file not found", EXPORT_FIX)
    seq = variant.sequence(duration)
    try:
        f = open_regular(npz_path, root)
    except OSError as exc:
        raise open_error(npz_path, exc) from exc
    with f:
        _check_magic(f, npz_path)
        arrays, frames = _read_arrays(f, npz_path, variant, seq)
    clip = _fit_features(npz_path, "clip_features", arrays["clip_features"], seq.clip_seq_len)
    sync = _fit_features(npz_path, "sync_features", arrays["sync_features"], seq.sync_seq_len)
    clip_frames, sync_frames = frames["clip_features"], frames["sync_features"]
    dur: float | None = None
    if "duration" in arrays:
        dur = float(arrays["duration"].reshape(()))
        if not math.isfinite(dur):
            raise FeatureFileError(npz_path, f"key 'duration' must be a finite number (got "
                                   f"{dur})", EXPORT_FIX)
    return ClipFeatures(clip, sync, _string(arrays.get("prompt")), dur,
                        _string(arrays.get("variant")), clip_frames, sync_frames)
