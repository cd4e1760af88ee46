"""selva-sample: baseline and adapter generation through the real loading path."""

from __future__ import annotations

import numpy as np
import soundfile as sf

from selva_engine.cli import sample_main
from selva_engine.model.variants import get_variant
from selva_engine.training.options import TrainConfig
from selva_engine.training.trainer import train


def test_sample_baseline_and_adapter(tmp_path, make_clips, tiny_weights, capsys):
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
    # an adapter whose meta names another variant of the same shapes: refused, with the flag
    # that loads it; with the flag it is the same adapter
    from selva_engine.model.lora import load_adapter, save_adapter

    trained = load_adapter(tmp_path / "run" / "adapter_final.pt")
    other = save_adapter(tmp_path / "other.pt", trained.state_dict, {**trained.meta, "variant": "small_16k"})
    capsys.readouterr()
    assert sample_main(common + ["--output", str(tmp_path / "o.wav"), "--adapter", str(other)]) == 2
    said = capsys.readouterr().err
    assert "trained for variant 'small_16k', not 'tiny_16k'" in said and "--allow-other-variant" in said
    assert not (tmp_path / "o.wav").exists()
    assert sample_main(common + ["--output", str(tmp_path / "o.wav"), "--adapter", str(other),
                                 "--allow-other-variant"]) == 0
    assert np.array_equal(sf.read(tmp_path / "lora.wav")[0], sf.read(tmp_path / "o.wav")[0])
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


def test_a_pissa_adapter_leaves_the_next_adapter_the_untouched_base(tmp_path, tiny_weights):
    """selva-eval with P (PiSSA) then S (standard): S sounds exactly as S alone, and the
    baseline after P is the baseline."""
    import torch

    from selva_engine.data.dataset import load_features
    from selva_engine.inference.synth import Synthesizer
    from selva_engine.model.generator import load_generator
    from selva_engine.model.lora import apply_lora, lora_layers, lora_state_dict, save_adapter
    from selva_engine.weights.locate import resolve
    from tests.conftest import write_clip

    variant = get_variant("tiny_16k")
    paths = {}
    for name, mode in (("P", "pissa"), ("S", "standard")):
        model = load_generator(resolve(tiny_weights, "tiny_16k").generator, variant)
        apply_lora(model, rank=4, init_mode=mode)
        g = torch.Generator().manual_seed(len(name) + (mode == "pissa"))
        with torch.no_grad():
            for layer in lora_layers(model).values():
                layer.lora_B.add_(0.2 * torch.randn(layer.lora_B.shape, generator=g))
        paths[name] = save_adapter(tmp_path / f"{name}.pt", lora_state_dict(model),
                                   {"rank": 4, "variant": "tiny_16k", "init_mode": mode})
    write_clip(tmp_path / "d", "c", freq=440.0, seed=3)
    feats = load_features(tmp_path / "d" / "c.npz", variant)
    synth = Synthesizer("tiny_16k", tiny_weights, device="cpu")

    def sound(adapter):
        synth.set_adapter(adapter)
        return synth.generate(feats.clip, feats.sync, "x", steps=2, seed=1)

    base, s_alone = sound(None), sound(paths["S"])
    p = sound(paths["P"])
    assert not np.array_equal(p, base)
    assert np.array_equal(sound(None), base)
    sound(paths["P"])
    assert np.array_equal(sound(paths["S"]), s_alone)
