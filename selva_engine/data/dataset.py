"""Clip datasets: `stem.npz` + `stem.<audio>` pairs, prompts.txt, feature loading.

A dataset directory holds, non-recursively, one `.npz` of visual features per clip (written
by ComfyUI-SelVA's Feature Extractor node) and an audio file with the same stem. Rules:

- Audio suffixes `.wav .flac .ogg .aiff .aif` (and `.mp3`, accepted with a warning that lossy
  audio hurts) are matched case-insensitively (`Dog.WAV` pairs with `Dog.npz`); the stem
  itself is matched exactly. Several audio files for one stem are an error, never a silent
  pick. Pairs come out sorted by file name.
- Only regular files inside the directory are read: a FIFO, socket, device or directory
  named like a clip (or prompts.txt), a link that leads out of the directory and a broken
  link are per-file errors and are never opened (links that stay inside are fine).
- `.npz` files are read header first with limits and never unpickled (see
  `selva_engine.data.features`); clip features are cut or zero-padded to the variant's
  `clip_seq_len` (64 at 8 s), sync features to `sync_seq_len` (192).
- Prompt priority: `prompts.txt` entry > `prompt` stored in the `.npz` (even empty) > the
  dataset directory's name. A prompts.txt name must be a plain file name of the directory.
- Audio is not loaded here (extraction does that through `load_audio`), only its header is
  checked so an unreadable file is reported before any GPU work.
"""

from __future__ import annotations

import os
import re
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import soundfile as sf

from selva_engine.audio.files import RawAudio, fit_length, load_audio, read_audio, resample, to_mono
from selva_engine.data.features import ClipFeatures, load_features
from selva_engine.data.videos import VideoClip, is_video_name, scan_videos
from selva_engine.errors import (
    AmbiguousAudioError,
    ArrayTooLargeError,
    AudioFileError,
    DatasetError,
    EmptyDatasetError,
    FeatureFileError,
    HiddenClipError,
    LinkOutsideError,
    MissingAudioError,
    NotRegularFileError,
    OrphanAudioError,
    PairingError,
    PickledDataError,
    PromptEntryError,
    PromptNameError,
    PromptsFileError,
    UnreadableFileError,
    open_error,
)
from selva_engine.io import open_regular, regular_file_stat
from selva_engine.model.variants import Variant

__all__ = [
    "AUDIO_SUFFIXES",
    "LOSSY_SUFFIXES",
    "PROMPTS_FILE",
    "SHOWN_PER_CODE",
    "AmbiguousAudioError",
    "ArrayTooLargeError",
    "AudioFileError",
    "Clip",
    "ClipFeatures",
    "ClipPair",
    "DatasetError",
    "DatasetScan",
    "EmptyDatasetError",
    "FeatureFileError",
    "LinkOutsideError",
    "MissingAudioError",
    "NotRegularFileError",
    "HiddenClipError",
    "OrphanAudioError",
    "PairingError",
    "PickledDataError",
    "PromptEntryError",
    "PromptNameError",
    "PromptsFileError",
    "RawAudio",
    "UnreadableFileError",
    "VideoClip",
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
_PART_NAME = re.compile(r"^(.+)_part\d{2}\.npz$")
MAX_PROMPTS_BYTES = 16 << 20  # one short line per clip: 16 MiB is far beyond any dataset
SHOWN_PER_CODE = 5  # warnings of one kind listed; the rest are counted in one line

_AUDIO_FIX = "re-export the clip as 16/24-bit PCM WAV or FLAC"


@dataclass(frozen=True)
class ClipPair:
    """One clip's files: `stem.npz` and its audio file (same directory, same stem)."""

    stem: str
    npz_path: Path
    audio_path: Path


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
    """Result of `load_dataset`: good clips, blocking problems, and non-blocking warnings.

    `warnings` lists at most SHOWN_PER_CODE warnings of one kind (code), then one line
    "… and N more like this (code)"; `warning_counts` holds the true count per code.
    """

    clips: list[Clip] = field(default_factory=list)
    videos: list[VideoClip] = field(default_factory=list)  # clips whose features are still to extract
    problems: list[DatasetError] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    warning_counts: Counter[str] = field(default_factory=Counter)

    def warn(self, code: str, message: str) -> None:
        """Count a warning of kind `code`; keep its text while few of that kind were seen."""
        self.warning_counts[code] += 1
        if self.warning_counts[code] <= SHOWN_PER_CODE:
            self.warnings.append(message)

    def summarise(self) -> None:
        """Append one "… and N more like this" line per kind with warnings left out."""
        for code, n in self.warning_counts.items():
            if n > SHOWN_PER_CODE:
                self.warnings.append(f"… and {n - SHOWN_PER_CODE:,} more like this ({code})")


def _is_clip_name(name: str) -> bool:
    suffix = os.path.splitext(name)[1].lower()
    return not name.startswith(".") and (suffix == ".npz" or suffix in AUDIO_SUFFIXES)


def find_pairs(directory: Path | str) -> tuple[list[ClipPair], list[DatasetError]]:
    """Pair `stem.npz` with `stem.<audio>` in `directory` (non-recursive, name-sorted).

    Returns the pairs and the problems: `MissingAudioError` for an `.npz` without audio,
    `OrphanAudioError` for audio without an `.npz`, `AmbiguousAudioError` when several
    audio files share a stem (that stem yields no pair), and for a clip-named entry that is
    not read (checked with lstat/stat, never opened): `NotRegularFileError` (FIFO, socket,
    device, directory), `LinkOutsideError` (a link out of `directory`),
    `UnreadableFileError` (a broken link). A stem with such an entry gets no pairing
    problem on top. Hidden files (`.name`) are skipped; a hidden `.npz` is reported as
    `HiddenClipError` (a warning: it is not trained on). Raises `EmptyDatasetError` if the
    directory does not exist.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise EmptyDatasetError(directory, "dataset directory does not exist",
                                "create it and put stem.npz + stem.wav pairs in it")
    npz: dict[str, Path] = {}
    audio: dict[str, list[Path]] = {}
    refused: set[str] = set()
    videos = {os.path.splitext(n)[0] for n in os.listdir(directory) if is_video_name(n)}
    problems: list[DatasetError] = []
    for p in sorted(directory.iterdir(), key=lambda q: q.name):
        if p.name.startswith(".") and p.name.lower().endswith(".npz") and p.name != ".npz":
            problems.append(HiddenClipError(
                p, "skipped: a name starting with '.' is a hidden file (ComfyUI's sanitiser "
                "names a clip '../x' like this)", f"rename it without the leading dots, e.g. "
                f"{p.name.lstrip('.') or 'clip.npz'}, and its audio to the same stem"))
            continue
        if not _is_clip_name(p.name):
            continue
        try:
            regular_file_stat(p, directory)
        except OSError as exc:
            problems.append(open_error(p, exc))
            refused.add(p.stem)
            continue
        if p.suffix.lower() == ".npz":
            npz[p.stem] = p
        else:
            audio.setdefault(p.stem, []).append(p)
    pairs: list[ClipPair] = []
    misnamed = _misnamed_audio(npz, audio, refused)
    for stem in sorted(set(npz) | set(audio)):
        cands = audio.get(stem, [])
        if stem in videos and stem not in npz:
            continue  # a video clip: paired by selva_engine.data.videos
        if stem in npz and len(cands) == 1:
            pairs.append(ClipPair(stem, npz[stem], cands[0]))
        elif len(cands) > 1:
            names = ", ".join(c.name for c in cands)
            problems.append(AmbiguousAudioError(
                cands[0].parent / stem, f"several audio files for one clip: {names}",
                "keep exactly one audio file per stem (delete or rename the others)"))
        elif stem in refused:
            continue  # its unreadable file is reported already
        elif stem in npz and stem in misnamed:
            near = misnamed[stem]
            problems.append(MissingAudioError(
                npz[stem], f"no audio file with the same stem (did you mean {near.name}?)",
                f"rename {near.name} to {stem}{near.suffix}, or the .npz to {near.stem}.npz"))
        elif stem in npz:
            problems.append(MissingAudioError(
                npz[stem], "no audio file with the same stem",
                f"add {stem}.wav (or .flac/.ogg/.aiff) next to it, or remove the .npz"))
        elif stem in {p.stem for p in misnamed.values()}:
            continue  # said with its .npz above, as one finding
        else:
            problems.append(OrphanAudioError(
                cands[0], "no .npz feature file with the same stem (ignored)",
                f"export {stem}.npz with the SelVA Feature Extractor node, or remove the audio"))
    return pairs, problems


def _misnamed_audio(npz: dict[str, Path], audio: dict[str, list[Path]],
                    refused: set[str]) -> dict[str, Path]:
    """For each .npz stem without audio, the one unpaired audio file whose stem is a close
    misspelling of it (difflib ratio >= 0.8; each audio file matched once)."""
    import difflib

    lonely = {stem: paths[0] for stem, paths in audio.items()
              if stem not in npz and len(paths) == 1 and stem not in refused}
    out: dict[str, Path] = {}
    for stem in sorted(s for s in npz if s not in audio and s not in refused):
        close = difflib.get_close_matches(stem, list(lonely), n=1, cutoff=0.8)
        if close:
            out[stem] = lonely.pop(close[0])
    return out


def _bad_prompt_name(name: str) -> bool:
    """A prompts.txt name that is a path, not a plain file name of the dataset."""
    return any(c in name for c in "/\\\x00") or name in (".", "..")


def _suffix_folded(name: str) -> str:
    """`name` with its suffix lower-cased: the one case rule of a dataset (stems exact,
    suffixes case-insensitive), used for audio pairing and prompts.txt names alike."""
    stem, suffix = os.path.splitext(name)
    return stem + suffix.lower()


def _prompt_line(where: Path, line: str, folded: dict[str, str], video_stems: set[str]
                 ) -> tuple[str, str] | PromptsFileError:
    """One non-comment line of prompts.txt: (npz name, prompt), or the problem with it.
    The name matches an .npz whose stem is the same and whose suffix differs only in case
    (`k.npz:` names `k.NPZ`), as audio pairs with its .npz; `folded` maps folded names to
    the real ones. A video clip is named by its file, `<stem>.npz` or `<stem>_partNN.npz`."""
    name, sep, prompt = line.partition(":")
    name = name.strip()
    if not sep or not name:
        return PromptsFileError(where, f"line is not 'file.npz: prompt' (got {line[:60]!r})",
                                "write the .npz file name, a colon, then the prompt")
    if _bad_prompt_name(name):
        return PromptNameError(where, f"names {name[:80]!r}, a path rather than a plain file "
                               "name of this dataset; the line is ignored",
                               "write only the .npz file name, e.g. 'dog_001.npz: a dog barks'")
    if _suffix_folded(name) in folded:
        return folded[_suffix_folded(name)], prompt.strip()
    part = _PART_NAME.match(_suffix_folded(name))
    if part and part.group(1) in video_stems:
        return _suffix_folded(name), prompt.strip()
    stem = os.path.splitext(name)[0]
    guess = folded.get(f"{stem}.npz") if folded.get(f"{stem}.npz") != name else None
    hint = (f"use '{guess}' (the .npz file name with its extension)" if guess
            else "fix the name or delete the stale line")
    return PromptEntryError(where, f"names {name[:80]!r}, which is not an .npz file in this "
                            "dataset", hint, name, guess)


def _read_prompts_text(directory: Path, path: Path) -> str | DatasetError:
    """The text of prompts.txt (a regular file inside `directory`), or why it is not read."""
    try:
        with open_regular(path, directory) as f:
            data = f.read(MAX_PROMPTS_BYTES + 1)
    except OSError as exc:
        return open_error(path, exc)
    if len(data) > MAX_PROMPTS_BYTES:
        return PromptsFileError(path, f"is larger than {MAX_PROMPTS_BYTES >> 20} MiB",
                                "keep one short 'file.npz: prompt' line per clip")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return PromptsFileError(path, f"cannot be read as UTF-8 text ({exc})",
                                "save prompts.txt as UTF-8")


def read_prompts(directory: Path | str) -> tuple[dict[str, str], list[DatasetError]]:
    """Parse `<directory>/prompts.txt` into {npz file name: prompt}.

    Each line is `file.npz: prompt`, split at the first ':' and stripped; blank lines and
    lines starting with '#' are ignored. Returns the mapping and the problems found, each
    naming `prompts.txt:<line>`: lines without ':' or with an empty name, names that are
    paths (`PromptNameError`: '/', '\\', NUL, '.' or '..'; never looked up), names that
    are not an `.npz` of the directory (`PromptEntryError`). When the file itself is not
    read (not UTF-8, over 16 MiB, not a regular file, a link out of the directory, not
    readable) the one problem names `prompts.txt` and the mapping is empty. A missing
    prompts.txt gives ({}, []). Later duplicate entries win, as in the original trainer.
    """
    directory = Path(directory)
    path = directory / PROMPTS_FILE
    if not os.path.lexists(path):
        return {}, []
    text = _read_prompts_text(directory, path)
    if isinstance(text, DatasetError):
        return {}, [text]
    names = [e.name for e in os.scandir(directory)]
    video_stems = {os.path.splitext(n)[0] for n in names if is_video_name(n)}
    clip_names = ({n for n in names if n.lower().endswith(".npz")} | {n for n in names if is_video_name(n)}
                  | {f"{stem}.npz" for stem in video_stems})
    folded = {_suffix_folded(n): n for n in clip_names}
    prompts: dict[str, str] = {}
    problems: list[DatasetError] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        got = _prompt_line(Path(f"{path}:{lineno}"), stripped, folded, video_stems)
        if isinstance(got, PromptsFileError):
            problems.append(got)
        else:
            prompts[got[0]] = got[1]
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


def _check_audio_header(path: Path, root: Path) -> None:
    """Cheap readability check (header only) so bad audio is reported before extraction."""
    try:
        f = open_regular(path, root)
    except OSError as exc:
        raise open_error(path, exc) from exc
    with f:
        try:
            info = sf.info(f)
        except Exception as exc:  # libsndfile raises several types for bad input
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise AudioFileError(path, f"not a readable audio file ({first})", _AUDIO_FIX) from exc
    if info.frames <= 0:
        raise AudioFileError(path, "audio file holds no samples", _AUDIO_FIX)


def _has_clips(directory: Path) -> bool:
    return any((e.name.lower().endswith(".npz") and not e.name.startswith(".")) or is_video_name(e.name)
               for e in os.scandir(directory))


def _add_videos(scan: DatasetScan, directory: Path, npz_stems: set[str], prompts: dict[str, str],
                overrides: dict[str, object], check_audio: bool, problem) -> None:
    found = scan_videos(directory, audio_suffixes=AUDIO_SUFFIXES, npz_stems=npz_stems, prompts=prompts,
                        fallback_prompt=directory.resolve().name, overrides=overrides,
                        check_audio=_check_audio_header if check_audio else None)
    for err in found.problems:
        problem(err)
    for code, text in found.warnings:
        scan.warn(code, text)
    scan.videos.extend(found.clips)


def load_dataset(directory: Path | str, variant: Variant, collect: bool = False,
                 duration: float = 8.0, check_audio: bool = True,
                 video: Mapping[str, object] | None = None) -> DatasetScan:
    """Load every clip of a dataset directory: pairs, prompts and features (not audio).

    With `collect=False` the first blocking problem is raised (a `DatasetError` subclass);
    with `collect=True` all problems are gathered in `DatasetScan.problems` and good clips
    are kept. Blocking: missing audio, several audio files for a stem, a clip file that is
    not read (not a regular file, a link out of the directory, unreadable), a bad or
    oversized `.npz`, unreadable audio (header check when `check_audio`), a prompts.txt
    that is not read. Non-blocking (warnings, summarised per kind, see `DatasetScan`):
    audio without `.npz`, bad prompts.txt lines (ignored as the original trainer does),
    lossy `.mp3`/`.ogg` audio. No `.npz` and no video at all raises `EmptyDatasetError` in
    both modes. Videos (`selva_engine.data.videos`) become `DatasetScan.videos`, probed and cut
    into windows with the `[video]` settings of dataset.toml updated by `video` (a job's).
    """
    directory = Path(directory)
    scan = DatasetScan()

    def problem(err: DatasetError) -> None:
        if not collect:
            raise err
        scan.problems.append(err)

    pairs, pair_problems = find_pairs(directory)
    if not _has_clips(directory):
        raise EmptyDatasetError(directory, "no .npz files in this directory and no videos",
                                "put videos (stem.mp4, with stem.wav beside each) in it, or "
                                "export features with the SelVA Feature Extractor node (one "
                                "stem.npz per clip) and put each clip's audio next to it")
    for err in pair_problems:
        if isinstance(err, (OrphanAudioError, HiddenClipError)):
            scan.warn(err.code, str(err))
        else:
            problem(err)
    prompts, prompt_problems = read_prompts(directory)
    for perr in prompt_problems:
        if perr.path.name == PROMPTS_FILE:  # the whole file was not read
            problem(perr)
        else:
            scan.warn(perr.code, str(perr))
    for pair in pairs:
        try:
            feats = load_features(pair.npz_path, variant, duration, root=directory)
            if check_audio:
                _check_audio_header(pair.audio_path, directory)
        except DatasetError as err:
            problem(err)
            continue
        if pair.audio_path.suffix.lower() in LOSSY_SUFFIXES:
            scan.warn("lossy", f"{pair.audio_path}: lossy audio format; compression artefacts "
                      "are learned too (fix: use WAV or FLAC if you have it)")
        prompt = resolve_prompt(pair.npz_path.name, prompts, feats.npz_prompt, directory)
        scan.clips.append(Clip(pair.stem, pair.npz_path, pair.audio_path, prompt,
                               feats.clip, feats.sync))
    _add_videos(scan, directory, {p.stem for p in pairs} | {p.stem for p in directory.glob("*.npz")},
                prompts, dict(video or {}), check_audio, problem)
    scan.summarise()
    if not scan.clips and not scan.videos and not scan.problems:
        raise EmptyDatasetError(directory, "no usable clips", "add stem.npz + stem.wav pairs")
    return scan
