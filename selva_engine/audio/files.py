"""Audio reading for clip datasets: soundfile only, mono, resampled, exact length.

`torchaudio.load` needs FFmpeg, so every read goes through soundfile (libsndfile: WAV, FLAC,
OGG, AIFF, MP3 with libsndfile >= 1.1). Resampling uses `torchaudio.functional.resample`
with its defaults (Hann-windowed sinc, 6 zero crossings, rolloff 0.99), as the original
trainer does; torch is imported only when a resample is needed.
"""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from selva_engine.audio.stack import check_audio_stack
from selva_engine.errors import AudioFileError, open_error
from selva_engine.io import open_regular

__all__ = ["CLIP_LEVEL", "MAX_SAMPLING_RATE", "AudioScan", "RawAudio", "fit_length", "load_audio",
           "read_audio", "resample", "scan_audio", "to_mono"]

_READ_FIX = "re-export the clip as 16/24-bit PCM WAV or FLAC"
MAX_SAMPLING_RATE = 768_000  # Hz; the highest rate of any recording format in use
CLIP_LEVEL = 0.999  # |x| at or above this counts as clipped (full scale = 1.0)
SCAN_BLOCK_BYTES = 1 << 20  # float32 samples read per block by scan_audio


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


@contextlib.contextmanager
def _open_sound(path: Path, root: Path | str | None) -> Iterator[sf.SoundFile]:
    """The libsndfile handle of a regular, non-empty audio file inside `root`.

    Raises `AudioFileError` (missing, empty, not audio) or the errors of `open_regular`
    mapped by `open_error`; a libsndfile failure while reading inside the block is mapped to
    `AudioFileError` as well.
    """
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
                yield snd
        except AudioFileError:
            raise
        except Exception as exc:  # libsndfile raises several types for bad input
            first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
            raise AudioFileError(path, f"not a readable audio file ({first})", _READ_FIX) from exc


def _check_header(path: Path, snd: sf.SoundFile) -> tuple[int, int]:
    """(rate, channels) of an open file; AudioFileError for a rate no recording has."""
    sr, channels = int(snd.samplerate), int(snd.channels)
    if sr <= 0 or sr > MAX_SAMPLING_RATE:
        raise AudioFileError(path, f"invalid sample rate {sr} Hz (at most "
                             f"{MAX_SAMPLING_RATE} Hz is accepted)", _READ_FIX)
    if channels < 1:
        raise AudioFileError(path, "audio file holds no samples", _READ_FIX)
    return sr, channels


def read_audio(path: Path | str, max_seconds: float | None = None,
               root: Path | str | None = None) -> RawAudio:
    """Read an audio file once (header + samples) with soundfile, keeping all channels.

    Returns a `RawAudio` with float32 samples of shape (frames, channels); with `max_seconds`
    only that many seconds from the start are read (training uses the first 8 s, so an
    hour-long file costs no more than a clip). Only a regular file is opened (a FIFO or
    device would block or never end), and with `root` only one whose real path lies inside
    that directory. Raises `AudioFileError` naming the file when it is missing, not audio,
    unreadable, holds no samples or declares a rate above 768 kHz; `NotRegularFileError`,
    `LinkOutsideError` or `UnreadableFileError` when it is not opened. Any bit depth or rate
    libsndfile understands is accepted.
    """
    path = Path(path)
    with _open_sound(path, root) as snd:
        sr, channels = _check_header(path, snd)
        fmt, subtype, total = str(snd.format), str(snd.subtype), int(snd.frames)
        count = -1 if max_seconds is None else max(1, math.ceil(max_seconds * sr))
        data = snd.read(frames=count, dtype="float32", always_2d=True)  # (frames, ch)
    if data.shape[0] == 0:
        raise AudioFileError(path, "audio file holds no samples", _READ_FIX)
    if not np.isfinite(data).all():
        raise AudioFileError(path, "audio holds NaN or infinite samples", _READ_FIX)
    return RawAudio(path, data, sr, channels, fmt, subtype, total)


@dataclass(frozen=True)
class AudioScan:
    """Figures of the part of a file that is trained on, gathered block by block.

    `mono` is the channel average of that part at the file's own rate, (read_frames,)
    float32; `peak`, `clipped` and `over` cover every channel (`clipped`: samples at
    |x| >= CLIP_LEVEL, `over`: samples at |x| > 1, only float files hold any);
    `channel_rms` is the RMS over all channels' samples. `frames` is the whole file.
    """

    path: Path
    mono: np.ndarray  # (read frames,) float32
    sampling_rate: int  # Hz
    channels: int
    format: str
    subtype: str
    frames: int  # whole file
    peak: float  # max |x|, full scale = 1.0
    clipped: int  # samples at |x| >= CLIP_LEVEL
    over: int  # samples at |x| > 1.0
    samples: int  # samples read, all channels
    channel_rms: float

    @property
    def duration(self) -> float:
        """Length of the whole file in seconds."""
        return self.frames / float(self.sampling_rate)

    @property
    def mono_rms(self) -> float:
        """RMS of the channel average (what the model is trained on)."""
        return float(np.sqrt(np.mean(np.square(self.mono, dtype=np.float64))))


def scan_audio(path: Path | str, max_seconds: float,
               root: Path | str | None = None) -> AudioScan:
    """Read the first `max_seconds` of an audio file block by block into an `AudioScan`.

    Memory is bounded whatever the channel count: blocks of at most `SCAN_BLOCK_BYTES` of
    float32 samples are read, and only the mono average of the part is kept (at most
    `max_seconds` x 768 kHz samples). Opens only a regular file inside `root`. Raises what
    `read_audio` raises, also for NaN/inf samples.
    """
    path = Path(path)
    with _open_sound(path, root) as snd:
        sr, channels = _check_header(path, snd)
        fmt, subtype, total = str(snd.format), str(snd.subtype), int(snd.frames)
        want = max(1, math.ceil(max_seconds * sr))
        if total > 0:
            want = min(want, total)
        mono = np.empty(want, dtype=np.float32)
        block = max(1, SCAN_BLOCK_BYTES // (4 * channels))
        done = clipped = over = 0
        peak = sq = 0.0
        while done < want:
            data = snd.read(frames=min(block, want - done), dtype="float32", always_2d=True)
            if data.shape[0] == 0:
                break
            if not np.isfinite(data).all():
                raise AudioFileError(path, "audio holds NaN or infinite samples", _READ_FIX)
            mag = np.abs(data)
            peak = max(peak, float(mag.max()))
            clipped += int(np.count_nonzero(mag >= CLIP_LEVEL))
            over += int(np.count_nonzero(mag > 1.0))
            sq += float(np.square(data, dtype=np.float64).sum())
            mono[done:done + data.shape[0]] = to_mono(data)
            done += data.shape[0]
    if done == 0:
        raise AudioFileError(path, "audio file holds no samples", _READ_FIX)
    samples = done * channels
    return AudioScan(path, mono[:done], sr, channels, fmt, subtype, total, peak, clipped, over,
                     samples, float(np.sqrt(sq / samples)))


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
