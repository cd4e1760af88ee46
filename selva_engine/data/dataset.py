"""Clip datasets: `stem.npz` + `stem.<audio>` pairs, prompts.txt, feature loading.

A dataset directory holds, non-recursively, one `.npz` of visual features per clip (written
by ComfyUI-SelVA's Feature Extractor node) and an audio file with the same stem. Rules:

- Audio suffixes `.wav .flac .ogg .aiff .aif` (and `.mp3`, accepted with a warning that lossy
  audio hurts) are matched case-insensitively (`Dog.WAV` pairs with `Dog.npz`); the stem
  itself is matched exactly. Several audio files for one stem are an error, never a silent
  pick. Pairs come out sorted by file name.
- `.npz` files are read with `allow_pickle=False`; clip features are cut or zero-padded to
  the variant's `clip_seq_len` (64 at 8 s), sync features to `sync_seq_len` (192).
- Prompt priority: `prompts.txt` entry > `prompt` stored in the `.npz` (even empty) > the
  dataset directory's name.
- Audio is not loaded here (extraction does that through `load_audio`), only its header is
  checked so an unreadable file is reported before any GPU work.
"""

from __future__ import annotations

import zipfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from selva_engine.audio.files import RawAudio, fit_length, load_audio, read_audio, resample, to_mono
from selva_engine.errors import (
    AmbiguousAudioError,
    AudioFileError,
    DatasetError,
    EmptyDatasetError,
    FeatureFileError,
    MissingAudioError,
    OrphanAudioError,
    PairingError,
    PickledDataError,
    PromptEntryError,
    PromptsFileError,
)
from selva_engine.model.variants import Variant

__all__ = [
    "AUDIO_SUFFIXES",
    "LOSSY_SUFFIXES",
    "PROMPTS_FILE",
    "AmbiguousAudioError",
    "AudioFileError",
    "Clip",
    "ClipFeatures",
    "ClipPair",
    "DatasetError",
    "DatasetScan",
    "EmptyDatasetError",
    "FeatureFileError",
    "MissingAudioError",
    "OrphanAudioError",
    "PairingError",
    "PickledDataError",
    "PromptEntryError",
    "PromptsFileError",
    "RawAudio",
    "find_pairs",
    "fit_length",
    "load_audio",
    "load_dataset",
    "load_features",
    "read_audio",
    "read_prompts",
    "resample",
    "resolve_prompt",
    "to_mono",
]

AUDIO_SUFFIXES: tuple[str, ...] = (".wav", ".flac", ".ogg", ".aiff", ".aif", ".mp3")
LOSSY_SUFFIXES: frozenset[str] = frozenset({".mp3", ".ogg"})
PROMPTS_FILE = "prompts.txt"

_EXPORT_FIX = "re-export the clip with the SelVA Feature Extractor node"


@dataclass(frozen=True)
class ClipPair:
    """One clip's files: `stem.npz` and its audio file (same directory, same stem)."""

    stem: str
    npz_path: Path
    audio_path: Path


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


@dataclass(frozen=True, eq=False)  # holds arrays: compare fields explicitly
class Clip:
    """A trainable clip: features loaded, prompt resolved, audio path kept (not loaded)."""

    stem: str
    npz_path: Path
    audio_path: Path
    prompt: str
    clip: np.ndarray  # (Nc, 1024) float32
    sync: np.ndarray  # (Ns, 768) float32


@dataclass
class DatasetScan:
    """Result of `load_dataset`: good clips, blocking problems, and non-blocking warnings."""

    clips: list[Clip] = field(default_factory=list)
    problems: list[DatasetError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def find_pairs(directory: Path | str) -> tuple[list[ClipPair], list[PairingError]]:
    """Pair `stem.npz` with `stem.<audio>` in `directory` (non-recursive, name-sorted).

    Returns the pairs and the pairing problems: `MissingAudioError` for an `.npz` without
    audio, `OrphanAudioError` for audio without an `.npz`, `AmbiguousAudioError` when several
    audio files share a stem (that stem yields no pair). Hidden files (`.name`) are skipped.
    Raises `EmptyDatasetError` if the directory does not exist.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise EmptyDatasetError(directory, "dataset directory does not exist",
                                "create it and put stem.npz + stem.wav pairs in it")
    npz: dict[str, Path] = {}
    audio: dict[str, list[Path]] = {}
    for p in sorted(directory.iterdir(), key=lambda q: q.name):
        if p.name.startswith(".") or not p.is_file():
            continue
        suffix = p.suffix.lower()
        if suffix == ".npz":
            npz[p.stem] = p
        elif suffix in AUDIO_SUFFIXES:
            audio.setdefault(p.stem, []).append(p)
    pairs: list[ClipPair] = []
    problems: list[PairingError] = []
    for stem in sorted(set(npz) | set(audio)):
        cands = audio.get(stem, [])
        if stem in npz and len(cands) == 1:
            pairs.append(ClipPair(stem, npz[stem], cands[0]))
        elif len(cands) > 1:
            names = ", ".join(c.name for c in cands)
            problems.append(AmbiguousAudioError(
                cands[0].parent / stem, f"several audio files for one clip: {names}",
                "keep exactly one audio file per stem (delete or rename the others)"))
        elif stem in npz:
            problems.append(MissingAudioError(
                npz[stem], "no audio file with the same stem",
                f"add {stem}.wav (or .flac/.ogg/.aiff) next to it, or remove the .npz"))
        else:
            problems.append(OrphanAudioError(
                cands[0], "no .npz feature file with the same stem (ignored)",
                f"export {stem}.npz with the SelVA Feature Extractor node, or remove the audio"))
    return pairs, problems


def read_prompts(directory: Path | str) -> tuple[dict[str, str], list[PromptsFileError]]:
    """Parse `<directory>/prompts.txt` into {npz file name: prompt}.

    Each line is `file.npz: prompt`, split at the first ':' and stripped; blank lines and
    lines starting with '#' are ignored. Returns the mapping and the problems found: lines
    without ':' or with an empty name, names that are not an existing `.npz` of the directory,
    and an unreadable/non-UTF-8 file (then the mapping is empty). A missing prompts.txt gives
    ({}, []). Later duplicate entries win, as in the original trainer.
    """
    directory = Path(directory)
    path = directory / PROMPTS_FILE
    if not path.is_file():
        return {}, []
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        return {}, [PromptsFileError(path, f"cannot be read as UTF-8 text ({exc})",
                                     "save prompts.txt as UTF-8")]
    prompts: dict[str, str] = {}
    problems: list[PromptsFileError] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        where = Path(f"{path}:{lineno}")
        name, sep, prompt = stripped.partition(":")
        name = name.strip()
        if not sep or not name:
            problems.append(PromptsFileError(
                where, f"line is not 'file.npz: prompt' (got {stripped[:60]!r})",
                "write the .npz file name, a colon, then the prompt"))
            continue
        prompts[name] = prompt.strip()
        if not (directory / name).is_file() or not name.endswith(".npz"):
            stem = name[:-4] if name.endswith(".npz") else Path(name).stem
            guess = f"{stem}.npz" if (directory / f"{stem}.npz").is_file() else None
            if guess == name:
                guess = None
            hint = (f"use '{guess}' (the .npz file name with its extension)" if guess
                    else "fix the name or delete the stale line")
            problems.append(PromptEntryError(where, f"names {name!r}, which is not an .npz "
                                             "file in this dataset", hint, name, guess))
    return prompts, problems


def resolve_prompt(npz_name: str, prompts: Mapping[str, str], npz_prompt: str | None,
                   dataset_dir: Path | str) -> str:
    """Pick the training prompt of one clip: prompts.txt > npz prompt (even "") > dir name.

    `npz_name` is the `.npz` file name with extension (the prompts.txt key), `npz_prompt` the
    value stored in the file (None when absent). Returns the prompt string.
    """
    if npz_name in prompts:
        return prompts[npz_name]
    if npz_prompt is not None:
        return npz_prompt
    return Path(dataset_dir).resolve().name


def _read_string(npz_path: Path, key: str, value: np.ndarray) -> str:
    if value.dtype.kind not in "US" or value.size != 1:
        raise FeatureFileError(npz_path, f"key {key!r} must be a string (got dtype {value.dtype}, "
                               f"shape {value.shape})", _EXPORT_FIX)
    item = value.reshape(()).item()
    return item.decode("utf-8", "replace") if isinstance(item, bytes) else str(item)


def _fit_features(npz_path: Path, key: str, arr: np.ndarray, dim: int, seq_len: int) -> tuple[np.ndarray, int]:
    """Validate (1, T, dim) or (T, dim) features and cut/zero-pad them to (seq_len, dim)."""
    if arr.ndim == 3 and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim != 2:
        raise FeatureFileError(npz_path, f"{key} has shape {arr.shape}, expected (1, T, {dim})",
                               _EXPORT_FIX)
    if arr.shape[1] != dim:
        raise FeatureFileError(npz_path, f"{key} has last dimension {arr.shape[1]}, expected "
                               f"{dim} (shape {arr.shape})", _EXPORT_FIX)
    if arr.shape[0] == 0:
        raise FeatureFileError(npz_path, f"{key} is empty (0 frames)", _EXPORT_FIX)
    if arr.dtype.kind not in "fiu":
        raise FeatureFileError(npz_path, f"{key} has non-numeric dtype {arr.dtype}", _EXPORT_FIX)
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        bad = int((~np.isfinite(arr)).sum())
        raise FeatureFileError(npz_path, f"{key} holds {bad} NaN/infinite values", _EXPORT_FIX)
    frames = int(arr.shape[0])
    out = np.zeros((seq_len, dim), dtype=np.float32)
    n = min(frames, seq_len)
    out[:n] = arr[:n]  # zero padding in raw feature space, as the original trainer
    return out, frames


def _check_magic(npz_path: Path) -> None:
    """Tell zip, .npy, pickle and garbage apart before numpy guesses (it would try pickle)."""
    try:
        with open(npz_path, "rb") as f:
            head = f.read(8)
    except OSError as exc:
        raise FeatureFileError(npz_path, f"cannot be read ({exc})", "check file permissions") from exc
    if not head:
        raise FeatureFileError(npz_path, "file is empty (0 bytes)", _EXPORT_FIX)
    if head.startswith(b"PK"):
        return
    if head.startswith(b"\x93NUMPY"):
        raise FeatureFileError(npz_path, "is a single .npy array, not an .npz archive", _EXPORT_FIX)
    if head[:1] == b"\x80":
        raise PickledDataError(npz_path, "is a Python pickle; pickles are refused",
                               "export features with np.savez (the SelVA Feature Extractor node)")
    raise FeatureFileError(npz_path, "is not an .npz (zip) archive: corrupt or half-written",
                           _EXPORT_FIX)


def load_features(npz_path: Path | str, variant: Variant, duration: float = 8.0) -> ClipFeatures:
    """Read one `.npz` (allow_pickle=False) and fit its features to `variant` at `duration` s.

    Requires `clip_features` (1, Nc', clip_dim) and `sync_features` (1, Ns', sync_dim) (the
    leading 1 may be absent), finite and non-empty; optional 0-d `prompt`/`variant` strings
    and `duration` number. Features are cut or zero-padded to the sequence config's
    `clip_seq_len`/`sync_seq_len`. Raises `PickledDataError` for object arrays or pickles,
    `FeatureFileError` for every other problem (corrupt zip, missing key, wrong shape, NaN).
    """
    npz_path = Path(npz_path)
    if not npz_path.is_file():
        raise FeatureFileError(npz_path, "feature file not found", _EXPORT_FIX)
    _check_magic(npz_path)
    seq = variant.sequence(duration)
    try:
        with np.load(npz_path, allow_pickle=False) as data:
            if not isinstance(data, np.lib.npyio.NpzFile):
                raise FeatureFileError(npz_path, "is not an .npz archive", _EXPORT_FIX)
            keys = set(data.files)
            missing = [k for k in ("clip_features", "sync_features") if k not in keys]
            if missing:
                raise FeatureFileError(
                    npz_path, f"missing key(s) {', '.join(missing)} (has: {', '.join(sorted(keys)) or 'none'})",
                    _EXPORT_FIX)
            arrays = {k: data[k] for k in ("clip_features", "sync_features", "prompt",
                                           "duration", "variant") if k in keys}
    except DatasetError:
        raise
    except ValueError as exc:
        if "pickle" in str(exc).lower() or "object" in str(exc).lower():
            raise PickledDataError(npz_path, "holds pickled Python object arrays; refused",
                                   "re-export with numeric float32 arrays (np.savez)") from exc
        raise FeatureFileError(npz_path, f"unreadable .npz ({exc})", _EXPORT_FIX) from exc
    except (zipfile.BadZipFile, zlib.error, OSError, EOFError, KeyError) as exc:
        raise FeatureFileError(npz_path, f"corrupt or half-written .npz ({type(exc).__name__}: "
                               f"{exc})", _EXPORT_FIX) from exc
    clip, clip_frames = _fit_features(npz_path, "clip_features", arrays["clip_features"],
                                      variant.clip_dim, seq.clip_seq_len)
    sync, sync_frames = _fit_features(npz_path, "sync_features", arrays["sync_features"],
                                      variant.sync_dim, seq.sync_seq_len)
    prompt = _read_string(npz_path, "prompt", arrays["prompt"]) if "prompt" in arrays else None
    var = _read_string(npz_path, "variant", arrays["variant"]) if "variant" in arrays else None
    dur: float | None = None
    if "duration" in arrays:
        d = arrays["duration"]
        if d.dtype.kind not in "fiu" or d.size != 1 or not np.isfinite(d).all():
            raise FeatureFileError(npz_path, f"key 'duration' must be a finite number (got "
                                   f"dtype {d.dtype}, shape {d.shape})", _EXPORT_FIX)
        dur = float(d.reshape(()))
    return ClipFeatures(clip, sync, prompt, dur, var, clip_frames, sync_frames)


def _check_audio_header(path: Path) -> None:
    """Cheap readability check (header only) so bad audio is reported before extraction."""
    try:
        info = sf.info(str(path))
    except Exception as exc:  # libsndfile raises several types for bad input
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise AudioFileError(path, f"not a readable audio file ({first})",
                             "re-export the clip as 16/24-bit PCM WAV or FLAC") from exc
    if info.frames <= 0:
        raise AudioFileError(path, "audio file holds no samples",
                             "re-export the clip as 16/24-bit PCM WAV or FLAC")


def load_dataset(directory: Path | str, variant: Variant, collect: bool = False,
                 duration: float = 8.0, check_audio: bool = True) -> DatasetScan:
    """Load every clip of a dataset directory: pairs, prompts and features (not audio).

    With `collect=False` the first blocking problem is raised (a `DatasetError` subclass);
    with `collect=True` all problems are gathered in `DatasetScan.problems` and good clips
    are kept. Blocking: missing audio, several audio files for a stem, bad `.npz`, unreadable
    audio (header check when `check_audio`), unreadable prompts.txt. Non-blocking (warnings):
    audio without `.npz`, bad prompts.txt lines (ignored as the original trainer does), lossy
    `.mp3`/`.ogg` audio. No `.npz` at all raises `EmptyDatasetError` in both modes.
    """
    directory = Path(directory)
    scan = DatasetScan()

    def problem(err: DatasetError) -> None:
        if not collect:
            raise err
        scan.problems.append(err)

    pairs, pair_problems = find_pairs(directory)
    if not any(p.suffix.lower() == ".npz" for p in directory.iterdir() if p.is_file()):
        raise EmptyDatasetError(directory, "no .npz files in this directory",
                                "export features with the SelVA Feature Extractor node (one "
                                "stem.npz per clip) and put each clip's audio next to it")
    for err in pair_problems:
        if isinstance(err, OrphanAudioError):
            scan.warnings.append(str(err))
        else:
            problem(err)
    prompts, prompt_problems = read_prompts(directory)
    for perr in prompt_problems:
        if perr.path.name == PROMPTS_FILE:  # whole file unreadable
            problem(perr)
        else:
            scan.warnings.append(str(perr))
    for pair in pairs:
        try:
            feats = load_features(pair.npz_path, variant, duration)
            if check_audio:
                _check_audio_header(pair.audio_path)
        except DatasetError as err:
            problem(err)
            continue
        if pair.audio_path.suffix.lower() in LOSSY_SUFFIXES:
            scan.warnings.append(f"{pair.audio_path}: lossy audio format; compression artefacts "
                                 "are learned too (fix: use WAV or FLAC if you have it)")
        prompt = resolve_prompt(pair.npz_path.name, prompts, feats.npz_prompt, directory)
        scan.clips.append(Clip(pair.stem, pair.npz_path, pair.audio_path, prompt,
                               feats.clip, feats.sync))
    if not scan.clips and not scan.problems:
        raise EmptyDatasetError(directory, "no usable clips", "add stem.npz + stem.wav pairs")
    return scan
