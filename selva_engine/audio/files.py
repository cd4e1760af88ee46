"""Audio reading for clip datasets: soundfile only, mono, resampled, exact length.

`torchaudio.load` needs FFmpeg, so every read goes through soundfile (libsndfile: WAV, FLAC,
OGG, AIFF, MP3 with libsndfile >= 1.1). Resampling uses `torchaudio.functional.resample`
with its defaults (Hann-windowed sinc, 6 zero crossings, rolloff 0.99), as the original
trainer does; torch is imported only when a resample is needed.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from selva_engine.audio.stack import check_audio_stack
from selva_engine.errors import AudioFileError, open_error
from selva_engine.io import open_regular

__all__ = ["RawAudio", "fit_length", "load_audio", "read_audio", "resample", "to_mono"]

_READ_FIX = "re-export the clip as 16/24-bit PCM WAV or FLAC"


@dataclass(frozen=True)
class RawAudio:
    """One audio file as stored: samples (frames, channels) float32 in [-1, 1], rate in Hz.

    `data` may be only the first part of the file when `read_audio` was given `max_seconds`;
    `frames` is the length of the whole file as libsndfile reports it (it already shortens
    it for a truncated WAV); `format`/`subtype` are libsndfile's names (e.g. "WAV", "PCM_24").
    """

    path: Path
    data: np.ndarray  # (frames read, channels) float32
    sampling_rate: int  # Hz
    channels: int
    format: str
    subtype: str
    frames: int  # whole file

    @property
    def duration(self) -> float:
        """Length of the whole file in seconds."""
        return self.frames / float(self.sampling_rate)


def read_audio(path: Path | str, max_seconds: float | None = None,
               root: Path | str | None = None) -> RawAudio:
    """Read an audio file once (header + samples) with soundfile, keeping all channels.

    Returns a `RawAudio` with float32 samples of shape (frames, channels); with `max_seconds`
    only that many seconds from the start are read (training uses the first 8 s, so an
    hour-long file costs no more than a clip). Only a regular file is opened (a FIFO or
    device would block or never end), and with `root` only one whose real path lies inside
    that directory. Raises `AudioFileError` naming the file when it is missing, not audio,
    unreadable, or holds no samples; `NotRegularFileError`, `LinkOutsideError` or
    `UnreadableFileError` when it is not opened. Any bit depth or rate libsndfile
    understands is accepted.
    """
    path = Path(path)
    if not os.path.lexists(path):
        raise AudioFileError(path, "audio file not found", "put the clip's audio next to its .npz")
    try:
        f = open_regular(path, root)
    except OSError as exc:
        raise open_error(path, exc) from exc
    with f:
        if os.fstat(f.fileno()).st_size == 0:
            raise AudioFileError(path, "audio file is empty (0 bytes)", _READ_FIX)
        try:
            with sf.SoundFile(f) as snd:
                sr, channels = int(snd.samplerate), int(snd.channels)
                fmt, subtype, total = str(snd.format), str(snd.subtype), int(snd.frames)
                count = -1 if max_seconds is None else max(1, math.ceil(max_seconds * sr))
                data = snd.read(frames=count, dtype="float32", always_2d=True)  # (frames, ch)
        except Exception as exc:  # libsndfile raises several types for bad input
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise AudioFileError(path, f"not a readable audio file ({first})", _READ_FIX) from exc
    if data.shape[0] == 0 or channels < 1:
        raise AudioFileError(path, "audio file holds no samples", _READ_FIX)
    if sr <= 0:
        raise AudioFileError(path, f"invalid sample rate {sr}", _READ_FIX)
    if not np.isfinite(data).all():
        raise AudioFileError(path, "audio holds NaN or infinite samples", _READ_FIX)
    return RawAudio(path, data, sr, channels, fmt, subtype, total)


def to_mono(data: np.ndarray) -> np.ndarray:
    """Average the channels of (frames, channels) samples into (frames,) float32."""
    if data.ndim == 1:
        return data.astype(np.float32, copy=False)
    return data.mean(axis=1, dtype=np.float64).astype(np.float32)


def resample(mono: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """Resample (frames,) float32 from `orig_rate` to `new_rate` Hz with torchaudio defaults.

    Raises AudioStackError (one sentence with the fix) when torchaudio's library cannot load.
    """
    if orig_rate == new_rate:
        return mono
    check_audio_stack().raise_if_broken()  # one sentence naming the torch/torchaudio pair
    import torch
    import torchaudio.functional as AF

    out = AF.resample(torch.from_numpy(np.ascontiguousarray(mono)), orig_rate, new_rate)
    return out.numpy().astype(np.float32, copy=False)


def fit_length(mono: np.ndarray, num_samples: int) -> np.ndarray:
    """Keep the first `num_samples` samples or right-pad with zeros to exactly that length."""
    if mono.shape[0] >= num_samples:
        return np.ascontiguousarray(mono[:num_samples], dtype=np.float32)
    out = np.zeros(num_samples, dtype=np.float32)
    out[: mono.shape[0]] = mono
    return out


def load_audio(path: Path | str, sampling_rate: int, num_samples: int,
               root: Path | str | None = None) -> np.ndarray:
    """Load a clip's audio as the model sees it: mono float32 of exactly `num_samples`.

    Reads with soundfile (any bit depth, rate and channel count), averages channels, resamples
    to `sampling_rate` Hz, then cuts or zero-pads to `num_samples` (128000 at 16k, 353280 at
    44k for 8 s). No loudness normalisation. The file must really lie inside `root`, by
    default its own directory (a clip's audio is read from its dataset only: a link out of
    it is refused unread). Raises `AudioFileError` for unreadable, empty or non-audio files
    (and the errors of `read_audio`). Returns an array of shape (num_samples,).
    """
    path = Path(path)
    # Read a little beyond the kept length so the resampler's window sees real samples.
    raw = read_audio(path, max_seconds=num_samples / float(sampling_rate) + 0.25,
                     root=path.parent if root is None else root)
    mono = resample(to_mono(raw.data), raw.sampling_rate, int(sampling_rate))
    return fit_length(mono, int(num_samples))
