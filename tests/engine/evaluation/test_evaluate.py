"""Recommendation rule, evaluator (deterministic for a seed) and sweep summaries."""

from __future__ import annotations

import json

import pytest

from selva_engine.evaluation.evaluate import main as eval_main
from selva_engine.evaluation.recommend import Candidate, noise_symptom, recommend
from selva_engine.evaluation.sweep import write_sweep_summary
from selva_engine.training.options import TrainConfig
from selva_engine.training.trainer import train


def test_recommend_prefers_low_val_loss_without_noise():
    cands = [Candidate("a", "a.pt", 100, 0.50, 0.4, {"hf_energy_ratio": 0.60}),
             Candidate("b", "b.pt", 200, 0.55, 0.3, {"hf_energy_ratio": 0.05}),
             Candidate("c", "c.pt", 300, 0.70, 0.2, {"hf_energy_ratio": 0.04})]
    rec = recommend(cands, reference_hf=0.05)
    assert rec.id == "b" and "sounds noisy" in rec.reason and len(rec.rejected) == 1
    assert rec.strength_range == (0.5, 0.9)
    clean = recommend(cands[1:], reference_hf=0.05)
    assert clean.id == "b" and clean.strength_range == (0.7, 1.1)
    assert recommend([], reference_hf=0.1).id is None
    assert recommend(cands[:1], reference_hf=0.05).id is None
    assert noise_symptom({"hf_energy_ratio": 0.3}, 0.1) and not noise_symptom({"hf_energy_ratio": 0.12}, 0.1)
    # without validation clips the training-clip probe decides
    rec = recommend([Candidate("x", "x", 1, None, 0.9), Candidate("y", "y", 2, None, 0.8)])
    assert rec.id == "y" and "training clips" in rec.reason


def test_recommend_rejects_a_checkpoint_whose_audition_render_is_noisy_and_says_what_it_used():
    clean, noisy = {"hf_energy_ratio": 0.05}, {"hf_energy_ratio": 0.40}
    cands = [Candidate("a", "a.pt", 100, 0.50, 0.4, clean, {"street": clean, "rain": noisy}),
             Candidate("b", "b.pt", 200, 0.55, 0.3, clean, {"street": clean, "rain": clean})]
    rec = recommend(cands, reference_hf=0.05)
    assert rec.id == "b" and "sounds noisy" in rec.reason
    assert rec.rejected == ["a: audition video rain shows the white-noise symptom (hf ratio 0.400 vs reference 0.050)"]
    assert rec.used == ["validation loss on held-out clips", "hf energy ratio of the training-clip sample",
                        "hf energy ratio of the audition renders (rain, street)"]
    assert rec.to_dict()["used"] == rec.used
    plain = recommend([Candidate("a", "a.pt", 100, 0.50, 0.4, clean)], reference_hf=0.05)
    assert plain.id == "a" and plain.used == ["validation loss on held-out clips",
                                              "hf energy ratio of the training-clip sample"]


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory, make_clips, tiny_weights):
    root = tmp_path_factory.mktemp("evalrun")
    data = make_clips(root / "data", 3)
    cfg = TrainConfig(data_dir=str(data), output_dir=str(root / "run"), variant="tiny_16k",
                      selva_dir=str(tiny_weights), steps=6, save_every=3, log_every=3, batch_size=2,
                      lr=5e-3, warmup_steps=0, sample_steps=2, precision="fp32", device="cpu")
    events = []
    train(cfg, events=events.append)
    return root, data, cfg, events


def test_run_names_a_recommendation(trained_run):
    root, _, _, events = trained_run
    rec = next(e for e in events if e["event"] == "recommendation")
    meta = json.loads((root / "run" / "meta.json").read_text())
    assert meta["recommendation"]["id"] == rec["id"]
    # the references are pure tones (no energy above 4 kHz) while a 6-step adapter on random
    # tiny weights still produces broadband noise: both checkpoints show the symptom
    assert meta["sample_reference_metrics"]["hf_energy_ratio"] < 1e-3
    assert rec["id"] is None and len(rec["rejected"]) == 2 and "white-noise" in rec["reason"]
    assert rec["strength_range"] == [0.6, 0.7] and "strength 0.6-0.7" in rec["reason"]


def test_evaluator_outputs_and_determinism(trained_run, tiny_weights, tmp_path):
    root, data, _, _ = trained_run
    args = ["--data_dir", str(data), "--variant", "tiny_16k", "--selva_dir", str(tiny_weights),
            "--run_dir", str(root / "run"), "--clips", "2", "--steps", "2", "--seed", "7", "--device", "cpu"]
    assert eval_main(args + ["--output_dir", str(tmp_path / "e1")]) == 0
    assert eval_main(args + ["--output_dir", str(tmp_path / "e2")]) == 0
    s1 = json.loads((tmp_path / "e1" / "eval_summary.json").read_text())
    s2 = json.loads((tmp_path / "e2" / "eval_summary.json").read_text())
    ids = [a["id"] for a in s1["adapters"]]
    assert ids == ["baseline", "step00003", "step00006", "final"]
    assert all(a["status"] == "ok" for a in s1["adapters"])
    for a, b in zip(s1["adapters"], s2["adapters"], strict=True):
        assert a["avg_metrics"] == b["avg_metrics"]
    assert (tmp_path / "e1" / "baseline" / "clip00.wav").is_file()
    assert (tmp_path / "e1" / "reference" / "clip01.wav").is_file()
    assert (tmp_path / "e1" / "metric_comparison.png").is_file()
    assert s1["ranking"]["by_validation_loss"][0] in ("step00003", "step00006")
    assert s1["recommendation"]["reason"] == s2["recommendation"]["reason"]
    assert "white-noise" in s1["recommendation"]["reason"]  # see test_run_names_a_recommendation


def test_eval_takes_the_variant_from_the_run_and_never_prints_none(trained_run, tiny_weights,
                                                                     tmp_path, capsys):
    root, data, _, _ = trained_run
    assert eval_main(["--data_dir", str(data), "--selva_dir", str(tiny_weights), "--run_dir",
                      str(root / "run"), "--clips", "1", "--steps", "2", "--device", "cpu",
                      "--no_baseline", "--output_dir", str(tmp_path / "e")]) == 0
    out = capsys.readouterr().out
    assert "variant: tiny_16k (the one the runs/adapters were trained for)" in out, out
    assert "None" not in out and "recommendation: none (" in out, out
    summary = json.loads((tmp_path / "e" / "eval_summary.json").read_text())
    assert summary["variant"] == "tiny_16k"
    with pytest.raises(SystemExit):
        eval_main(["--help"])
    text = capsys.readouterr().out
    assert "None" not in text and "(default: 25)" in text and "tiny_16k" in text


def test_metric_chart_has_labels_directions_and_distance_panels(tmp_path):
    from selva_engine.evaluation import evaluate as ev

    labels = ["reference", "a", "b"]
    rows = [{"hf_energy_ratio": 0.1}, {"hf_energy_ratio": 0.2, "log_spectral_distance_db": 3.0,
                                       "mel_cepstral_distortion": 4.0},
            {"hf_energy_ratio": 0.3, "log_spectral_distance_db": 5.0,
             "mel_cepstral_distortion": 6.0}]
    captured = {}
    import matplotlib.figure

    real = matplotlib.figure.Figure.savefig

    def keep(fig, *args, **kwargs):
        captured["axes"] = [(a.get_title(), a.get_ylabel(), a.get_xlabel(),
                             [t.get_text() for t in a.get_xticklabels()]) for a in fig.axes]
        return real(fig, *args, **kwargs)

    matplotlib.figure.Figure.savefig = keep
    try:
        ev._bar_chart(tmp_path / "m.png", labels, rows)
    finally:
        matplotlib.figure.Figure.savefig = real
    axes = {title.split("\n")[0]: (title, y, x, ticks) for title, y, x, ticks in captured["axes"]}
    assert set(axes) == set(ev._CHART)
    assert axes["log_spectral_distance_db"][0].endswith("(lower is better)")
    assert axes["mel_cepstral_distortion"][3] == ["a", "b"]  # no reference bar
    assert axes["hf_energy_ratio"][3] == labels and "reference" in axes["hf_energy_ratio"][0]
    assert all(y and x == "adapter" for _, y, x, _ in axes.values())
    assert (tmp_path / "m.png").stat().st_size > 1000


def test_sweep_summary(trained_run, tmp_path):
    root, _, cfg, _ = trained_run
    runs = [{"id": "base", "run_id": "r1", "status": "done", "config": cfg.to_dict(),
             "output_dir": str(root / "run"), "started_at": 10.0, "finished_at": 25.0},
            {"id": "bigger", "run_id": "r2", "status": "failed", "config": {}, "output_dir": None,
             "error": "boom"}]
    summary = write_sweep_summary(tmp_path, "demo", runs)
    assert (tmp_path / "loss_comparison.png").is_file()
    on_disk = json.loads((tmp_path / "sweep_summary.json").read_text())
    assert on_disk["experiments"][0]["results"]["final_loss"] == summary["experiments"][0]["results"]["final_loss"]
    res = on_disk["experiments"][0]["results"]
    assert set(res["loss_at_steps"]) == {"3", "6"} and res["adapter_path"].endswith("adapter_final.pt")
    assert on_disk["experiments"][0]["duration_seconds"] == 15.0
    assert on_disk["experiments"][1]["error"] == "boom"
    assert len(on_disk["recommendation"]["rejected"]) == 2  # both checkpoints of run "base"
    assert all(r.startswith("base@") for r in on_disk["recommendation"]["rejected"])
    assert "torch_version" in on_disk["system"]


def test_training_with_eval_clips_evaluates_every_checkpoint(tmp_path, make_clips, tiny_weights):
    data = make_clips(tmp_path / "data", 2)
    cfg = TrainConfig(data_dir=str(data), output_dir=str(tmp_path / "run"), variant="tiny_16k",
                      selva_dir=str(tiny_weights), steps=4, save_every=2, log_every=2, batch_size=2,
                      warmup_steps=0, sample_steps=2, precision="fp32", device="cpu",
                      eval_clips=1, eval_steps=2)
    events = []
    train(cfg, events=events.append)
    done = next(e for e in events if e["event"] == "eval_done")
    summary = json.loads((tmp_path / "run" / "eval" / "eval_summary.json").read_text())
    assert done["summary"].endswith("eval_summary.json") and summary["clips"] == ["clip00"]
    assert [a["id"] for a in summary["adapters"]] == ["baseline", "step00002", "step00004", "final"]


def test_run_dir_lists_every_adapter_the_anchor_writes(tmp_path):
    """adapter_final_NNN.pt (a re-run), adapter_cancelled_stepNNNNN.pt (a stopped node run)
    and the spectral-surgery variants are found next to the step checkpoints."""
    from selva_engine.evaluation.evaluate import specs_from_run_dir

    for name in ("adapter_final.pt", "adapter_final_001.pt", "adapter_final_surgery.pt",
                 "adapter_cancelled_step00150.pt", "adapter_best.pt", "notes.txt"):
        (tmp_path / name).write_bytes(b"x")
    specs = {s.id: s for s in specs_from_run_dir(tmp_path)}
    assert set(specs) == {"final", "final_001", "final_surgery", "cancelled00150"}
    assert specs["cancelled00150"].step == 150
    assert specs["final_001"].path.name == "adapter_final_001.pt"


def test_their_eval_batch_file_runs_with_from(trained_run, tiny_weights, tmp_path, capsys):
    """ComfyUI-SelVA's LoRA Evaluator file (its docstring's format: an entry without a path
    is the base model) runs as given: same samples as the same options on the command line;
    what has no equivalent is one error naming the key."""
    root, data, _, _ = trained_run
    folder = tmp_path / "evals"
    folder.mkdir()
    batch = {"name": "eval_batch_1", "data_dir": str(data), "output_dir": "batch1",  # relative
             "steps": 2, "seed": 7, "adapters": [
                 {"id": "baseline"}, {"id": "lr_5e3", "path": str(root / "run" / "adapter_final.pt")}]}
    (folder / "eval_batch.json").write_text(json.dumps(batch))
    common = ["--selva_dir", str(tiny_weights), "--clips", "1", "--device", "cpu"]
    assert eval_main(["--from", str(folder / "eval_batch.json"), *common]) == 0
    summary = json.loads((folder / "batch1" / "eval_summary.json").read_text())
    assert [a["id"] for a in summary["adapters"]] == ["baseline", "lr_5e3"]
    assert all(a["status"] == "ok" for a in summary["adapters"])
    assert eval_main(["--data_dir", str(data), "--output_dir", str(tmp_path / "flags"), "--steps", "2",
                      "--seed", "7", "--adapter", f"lr_5e3={root / 'run' / 'adapter_final.pt'}", *common]) == 0
    flags = json.loads((tmp_path / "flags" / "eval_summary.json").read_text())
    assert [a["avg_metrics"] for a in flags["adapters"]] == [a["avg_metrics"] for a in summary["adapters"]]
    capsys.readouterr()
    (folder / "bad.json").write_text(json.dumps({**batch, "dtype": "bf16"}))
    assert eval_main(["--from", str(folder / "bad.json"), *common]) == 2
    assert "'dtype' has no selva-eval equivalent" in capsys.readouterr().err
    (folder / "nodir.json").write_text(json.dumps({"output_dir": "x", "adapters": [{"id": "b"}]}))
    assert eval_main(["--from", str(folder / "nodir.json"), *common]) == 2
    assert "'data_dir' is required" in capsys.readouterr().err
    with pytest.raises(SystemExit) as given_twice:
        eval_main(["--from", str(folder / "eval_batch.json"), "--data_dir", str(data), *common])
    assert given_twice.value.code == 2


def test_without_losses_the_closest_clean_adapter_wins_and_noisy_renders_reject():
    from selva_engine.evaluation.recommend import recommend_closest

    clean, noisy = {"hf_energy_ratio": 0.05}, {"hf_energy_ratio": 0.40}
    cands = [Candidate("near", "near.pt", metrics=clean, audition_metrics={"street": noisy}),
             Candidate("far", "far.pt", metrics=clean, audition_metrics={"street": clean}),
             Candidate("nan", "nan.pt", metrics=clean)]
    rec = recommend_closest(cands, {"near": 0.1, "far": 0.3, "nan": float("nan")}, reference_hf=0.05)
    assert rec.id == "far" and "closest spectral metrics" in rec.reason and "1 closer one(s) sound noisy" in rec.reason
    assert rec.rejected == ["near: audition video street shows the white-noise symptom (hf ratio 0.400 vs "
                            "reference 0.050)"]
    assert rec.used == ["spectral distance of the samples to the reference audio", "hf energy ratio of the samples",
                        "hf energy ratio of the audition renders (street)"]
    none = recommend_closest(cands[:1], {"near": 0.1}, reference_hf=0.05)
    assert none.id is None and none.strength_range == (0.6, 0.7) and "strength 0.6-0.7" in none.reason
