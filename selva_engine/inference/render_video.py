"""`selva-sample --video`: ComfyUI-SelVA's Feature Extractor -> LoRA Loader -> Sampler in one call.

The video is encoded as the Feature Extractor node encodes it (`video.extractor`: the prompt
typed once serves the extractor's T5 and the Sampler's CLIP text, as the Sampler's empty prompt
takes the features' one), the encoders are freed, then the Sampler generates with its node
defaults (`render.synthesize`'s options). The result is a .wav, or the original picture
(stream copied, never re-encoded: `video.mux`) with the generated sound as AAC.

Durations: the video's own (`T / fps`, the node's rule), the first MAX_DURATION (30) seconds of
a longer one (with a note); `--duration D` is the extractor's duration widget (at most 30 s,
and never past the video's end), and the Sampler then generates that length.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from selva_engine.inference.synth import MAX_DURATION, Synthesizer, adapter_variant, check_duration
from selva_engine.model.variants import get_variant
from selva_engine.outputs.report import write_wav
from selva_engine.video.decode import StreamInfo, node_differences, read_stream_info
from selva_engine.video.extractor import NodeFeatures, extract_videos, prepare_frames
from selva_engine.video.mux import CONTAINERS, mux_audio

__all__ = ["AUDIO_SUFFIX", "VideoRequest", "check_output", "generate_for_video", "render_video", "video_features"]

AUDIO_SUFFIX = ".wav"


@dataclass(frozen=True)
class VideoRequest:
    """The Feature Extractor's widgets for one video: the prompt, an optional mask and its strength."""

    video: Path
    prompt: str
    mask: Path | None = None
    mask_strength: float = 1.0   # 1 = background fully grey, 0 = no mask


def _note(message: str) -> None:
    print(f"selva-sample: note: {message}", file=sys.stderr)


def check_output(output: Path, *, with_video: bool) -> bool:
    """Whether `output` is a video file (True) or a .wav (False); ValueError naming it otherwise.

    A video suffix (.mp4/.m4v/.mov/.mkv) needs the source video, so it is refused without one.
    """
    suffix = output.suffix.lower()
    if suffix == AUDIO_SUFFIX:
        return False
    if suffix in CONTAINERS and with_video:
        return True
    if suffix in CONTAINERS:
        raise ValueError(f"{output}: a video output needs --video (the picture comes from it); "
                         f"name the output {AUDIO_SUFFIX} or pass --video")
    allowed = AUDIO_SUFFIX + (" or " + " / ".join(CONTAINERS) if with_video else "")
    raise ValueError(f"{output}: selva-sample cannot write a {suffix or 'suffix-less'!r} file; name the "
                     f"output {allowed}")


def _check_request(req: VideoRequest) -> None:
    if not req.prompt.strip():
        raise ValueError("--video needs --prompt saying what the sound is (the Feature Extractor encodes it "
                         "with the frames); pass e.g. --prompt \"a dog barking\"")
    if not 0.0 <= req.mask_strength <= 1.0:
        raise ValueError(f"--mask_strength must be between 0 and 1 (got {req.mask_strength}); pass a value in "
                         "that range")
    for path in (req.video, *([req.mask] if req.mask else [])):
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist or is not a file; check the path")


def _extract_duration(info: StreamInfo, duration: float | None) -> float:
    """The extractor's duration widget: `duration` if given (checked), else the video's own
    length capped at MAX_DURATION (0 = the whole video, as the node's widget)."""
    if duration is not None:
        return check_duration(duration)
    length = info.frame_count / info.fps  # seconds, the node's T / fps
    if length > MAX_DURATION:
        _note(f"{info.path} is {length:g} s long; generating its first {MAX_DURATION:g} s")
        return MAX_DURATION
    return 0.0


def video_features(req: VideoRequest, selva_dir: str | Path, *, device: str = "auto",
                   duration: float | None = None) -> NodeFeatures:
    """The Feature Extractor node's features of `req` (frames decoded and checked before the
    encoders load; the encoders are freed before returning). Raises DecodeError for a file
    that is not a readable video, FileNotFoundError / ValueError for missing encoder weights."""
    from selva_engine.device import resolve_device
    from selva_engine.video.encoders import load_video_encoders

    _check_request(req)
    info = read_stream_info(req.video)  # DecodeError for a file that is no video
    prepared = prepare_frames(req.video, duration=_extract_duration(info, duration), mask=req.mask,
                              mask_strength=req.mask_strength)
    for note in node_differences(info):
        _note(note)
    dev = resolve_device(device)
    encoders = load_video_encoders(selva_dir, device=dev)  # bf16 on a GPU, fp32 on the CPU: the node's
    try:
        return extract_videos([(prepared, req.prompt)], encoders)[0]
    finally:
        encoders.free()


def _fit(arr: np.ndarray, rows: int) -> np.ndarray:
    """(1, T, D) features -> (rows, D) float32, cut or zero-padded (the node's lengths already match)."""
    out = np.zeros((rows, arr.shape[-1]), np.float32)
    n = min(rows, arr.shape[1])
    out[:n] = arr[0, :n]
    return out


def generate_for_video(*, req: VideoRequest, variant: str | None, selva_dir: str | Path,
                       adapter: str | Path | None = None, strength: float = 1.0, negative_prompt: str = "",
                       cfg: float = 4.5, steps: int = 25, seed: int = 0, duration: float | None = None,
                       device: str = "auto", allow_other_variant: bool = False) -> tuple[np.ndarray, int, float]:
    """The chain's sound for `req`: (waveform, sampling rate, seconds generated).

    The variant defaults to the adapter's meta (else large_44k) and its weights are checked
    before anything is encoded; the Sampler's defaults are `synthesize`'s.
    """
    from selva_engine.weights.locate import resolve

    name = variant or adapter_variant(adapter) or "large_44k"
    resolve(selva_dir, get_variant(name).name)  # MissingWeightsError before minutes of encoding
    feats = video_features(req, selva_dir, device=device, duration=duration)
    synth = Synthesizer(name, selva_dir, device=device, duration=feats.duration)
    seq = synth.variant.sequence(feats.duration)
    synth.set_adapter(adapter, strength, allow_other_variant=allow_other_variant)
    wave = synth.generate(_fit(feats.clip_features, seq.clip_seq_len), _fit(feats.sync_features, seq.sync_seq_len),
                          req.prompt, seed=seed, negative_prompt=negative_prompt, cfg=cfg, steps=steps)
    return wave, synth.sampling_rate, float(feats.duration)


def render_video(*, req: VideoRequest, output: Path, **options) -> Path:
    """`selva-sample --video`: a video + prompt (+ adapter) -> `output` (.wav, or the video with
    the generated sound when output is .mp4/.m4v/.mov/.mkv); returns the path written.

    `options` are `generate_for_video`'s (variant, selva_dir, adapter, strength, ...).
    Written atomically.
    """
    as_video = check_output(output, with_video=True)
    wave, rate, _ = generate_for_video(req=req, **options)
    if as_video:
        return mux_audio(req.video, wave, rate, output)
    return write_wav(output, wave, rate)
