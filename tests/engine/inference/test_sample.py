"""selva-sample: baseline and adapter generation through the real loading path."""

from __future__ import annotations

import numpy as np
import soundfile as sf

from selva_engine.cli import sample_main
from selva_engine.model.variants import get_variant
from selva_engine.training.options import TrainConfig
from selva_engine.training.trainer import train


def test_sample_baseline_and_adapter(tmp_path, make_clips, tiny_weights):
    data = make_clips(tmp_path / "data", 2)
    cfg = TrainConfig(data_dir=str(data), output_dir=str(tmp_path / "run"), variant="tiny_16k",
                      selva_dir=str(tiny_weights), steps=4, save_every=4, log_every=2, batch_size=2,
                      lr=5e-3, warmup_steps=0, sample_steps=2, precision="fp32", device="cpu")
    train(cfg)
    common = ["--npz", str(data / "clip00.npz"), "--variant", "tiny_16k", "--selva_dir", str(tiny_weights),
              "--steps", "3", "--seed", "1", "--device", "cpu"]
    assert sample_main(common + ["--output", str(tmp_path / "base.wav")]) == 0
    assert sample_main(common + ["--output", str(tmp_path / "again.wav")]) == 0
    assert sample_main(common + ["--output", str(tmp_path / "lora.wav"), "--adapter",
                                 str(tmp_path / "run" / "adapter_final.pt"), "--strength", "1.0"]) == 0
    assert sample_main(common + ["--output", str(tmp_path / "s0.wav"), "--adapter",
                                 str(tmp_path / "run" / "adapter_final.pt"), "--strength", "0"]) == 0
    base, sr = sf.read(tmp_path / "base.wav")
    assert sr == 16000 and base.shape == (128000,)
    assert np.array_equal(base, sf.read(tmp_path / "again.wav")[0])  # fixed seed: deterministic
    assert not np.array_equal(base, sf.read(tmp_path / "lora.wav")[0])
    assert np.array_equal(base, sf.read(tmp_path / "s0.wav")[0])  # strength 0 = base model
    # a variant whose weights are not in selva_dir is a clear error, exit 2
    assert sample_main(["--npz", str(data / "clip00.npz"), "--variant", "tiny_44k", "--selva_dir",
                        str(tiny_weights), "--output", str(tmp_path / "x.wav")]) == 2


def test_sample_takes_variant_from_the_adapter_and_duration_from_the_npz(
        tmp_path, make_clips, tiny_weights, monkeypatch):
    """The README's example: no --variant (the adapter's meta says tiny_16k), no --duration
    (the .npz says 5 s), weights from $SELVA_DIR."""
    data = make_clips(tmp_path / "data", 2)
    cfg = TrainConfig(data_dir=str(data), output_dir=str(tmp_path / "run"), variant="tiny_16k",
                      selva_dir=str(tiny_weights), steps=2, save_every=2, log_every=2,
                      batch_size=2, warmup_steps=0, sample_steps=2, precision="fp32",
                      device="cpu")
    train(cfg)
    with np.load(data / "clip01.npz", allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    arrays["duration"] = np.array(5.0)
    np.savez(tmp_path / "short.npz", **arrays)
    monkeypatch.setenv("SELVA_DIR", str(tiny_weights))
    from selva_engine.cli import sample_main as fresh_main  # reads $SELVA_DIR at parse time

    assert fresh_main(["--npz", str(tmp_path / "short.npz"), "--adapter",
                       str(tmp_path / "run" / "adapter_final.pt"), "--strength", "0.8",
                       "--output", str(tmp_path / "out.wav"), "--steps", "2",
                       "--device", "cpu"]) == 0
    wave, sr = sf.read(tmp_path / "out.wav")
    frames = get_variant("tiny_16k").sequence(5.0).num_audio_frames  # 5 s in whole latents
    assert sr == 16000 and wave.shape == (frames,) and 80000 <= frames < 80000 + 1024
