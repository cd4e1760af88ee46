"""`selvad demo [DIR]`: the whole service on one machine in about a minute, no downloads.

Writes into DIR (default ./selvad-demo): tiny SelVA weights (`selva_engine.weights.tiny.make_tiny`;
with real weights, `--weights DIR --variant V` or $SELVA_DIR, the real model trains), a few
synthetic clips (tones with random visual features, made in code) in a staging folder, a
daemon config and a job file. It then starts the real daemon (`python -m selvad.cli run`),
copies the clips into the watched dataset folder in chunks, as a slow upload would, and
narrates the daemon's log: settling, validation, extraction, training progress (the same
bar as `selvad status`), checkpoints. When the run is done it stops the daemon with SIGTERM
and prints the output tree. Exit 0 when the run finished with every output present.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["EXPECTED_OUTPUTS", "DemoStopped", "copy_slowly", "free_listen", "make_dataset",
           "missing_outputs", "print_page_link", "run_demo", "write_clip", "write_demo_video",
           "write_demo_videos"]

MARKER = ".selvad-demo"  # marks a directory this command created (safe to recreate)
EXPECTED_OUTPUTS = ("run.toml", "validation.toml", "adapter_step*.pt", "adapter_final.pt",
                    "meta.json", "sample_step*.wav", "loss_raw.png", "loss_smoothed.png",
                    "progress.jsonl")
PR_SET_PDEATHSIG = 1  # linux/prctl.h
PROMPTS = ("a soft sine tone", "a low hum", "a bright whistle", "a warbling tone")


def write_clip(directory: Path, stem: str, *, index: int, variant: str = "tiny_16k",
               seed: int = 0, prompt: str | None = None) -> tuple[Path, Path]:
    """Write one synthetic clip `stem.wav` + `stem.npz` for `variant` into `directory`.

    The audio is an 8 s amplitude-modulated tone (its pitch depends on `index`) over a faint
    noise floor at the variant's sampling rate, 16-bit PCM; the features are random CLIP (1, 64, 1024) and
    sync (1, 192, 768) arrays with the prompt stored in the .npz. Returns (npz, wav).
    """
    import soundfile as sf

    from selva_engine.model.variants import get_variant

    v = get_variant(variant)
    seq = v.sequence()
    sr = seq.sampling_rate
    t = np.arange(int(seq.duration * sr)) / sr  # seconds
    freq = 220.0 * (1.25 ** (index % 6))  # Hz, 220-671: below the 1-5 kHz band the codec check weighs
    wave = 0.3 * np.sin(2 * np.pi * freq * t) * (0.55 + 0.45 * np.sin(2 * np.pi * 0.5 * t))
    # a faint room-noise floor (-60 dBFS) so the clip is full-band, as a recording is: the
    # Inspector would flag a bare tone's empty 15-20 kHz band as a codec shelf
    wave += 1e-3 * np.random.default_rng([seed, index, 1]).standard_normal(t.size)
    rng = np.random.default_rng(seed * 1000 + index)
    directory.mkdir(parents=True, exist_ok=True)
    wav = directory / f"{stem}.wav"
    npz = directory / f"{stem}.npz"
    sf.write(wav, wave.astype(np.float32), sr, subtype="PCM_16")
    np.savez(npz,
             clip_features=rng.standard_normal((1, seq.clip_seq_len, v.clip_dim)).astype(np.float32),
             sync_features=rng.standard_normal((1, seq.sync_seq_len, v.sync_dim)).astype(np.float32),
             prompt=np.array(prompt or PROMPTS[index % len(PROMPTS)]),
             duration=np.array(seq.duration))
    return npz, wav


def _video_frame(i: int, width: int, height: int, hue: int) -> np.ndarray:
    """Frame i of a demo video: a gradient with a box moving left to right, uint8 (H, W, 3)."""
    y, x = np.mgrid[0:height, 0:width]
    img = np.stack([(x * 4 + hue) % 256, (y * 5 + 3 * i) % 256, np.full_like(x, (hue + 9 * i) % 256)], axis=-1)
    left = (3 * i) % max(1, width - 12)
    img[height // 3:height // 3 + 12, left:left + 12] = 255
    return img.astype(np.uint8)


def write_demo_video(path: Path, *, seconds: float, freq: float, with_audio: bool, fps: int = 12,
                     width: int = 96, height: int = 64, rate: int = 16000) -> Path:
    """A small H.264 video made with PyAV (FFmpeg in its wheel): a moving box, and optionally an
    AAC track with a `freq` Hz tone pulsing twice a second (the sound the box makes)."""
    import av

    with av.open(str(path), "w") as out:
        video = out.add_stream("libx264", rate=fps)
        video.width, video.height, video.pix_fmt = width, height, "yuv420p"
        video.options = {"preset": "ultrafast", "crf": "23"}
        audio = out.add_stream("aac", rate=rate, layout="mono") if with_audio else None
        for i in range(round(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(_video_frame(i, width, height, int(freq) % 256), format="rgb24")
            out.mux(video.encode(frame))
        out.mux(video.encode(None))
        if audio is not None:
            t = np.arange(int(seconds * rate)) / rate
            wave = (0.3 * np.sin(2 * np.pi * freq * t) * (0.5 + 0.5 * np.sin(2 * np.pi * 2 * t))).astype(np.float32)
            for lo in range(0, wave.size, 1024):
                block = av.AudioFrame.from_ndarray(wave[None, lo:lo + 1024].copy(), format="fltp", layout="mono")
                block.sample_rate, block.pts = rate, lo
                out.mux(audio.encode(block))
            out.mux(audio.encode(None))
    return path


def write_demo_videos(directory: Path, variant: str = "tiny_16k") -> list[Path]:
    """Two short synthetic videos for the video path: `door_slam.mp4` with its clean recording
    `door_slam.wav` beside it (the guide's way), and `engine_idle.mp4` whose own sound track is
    used (the daemon warns that clean recordings are better). Returns every file written."""
    import soundfile as sf

    from selva_engine.model.variants import get_variant

    directory.mkdir(parents=True, exist_ok=True)
    sr = get_variant(variant).sequence().sampling_rate
    door = write_demo_video(directory / "door_slam.mp4", seconds=3.0, freq=180.0, with_audio=False)
    t = np.arange(3 * sr) / sr
    thud = 0.5 * np.sin(2 * np.pi * 90 * t) * np.exp(-6 * (t % 1.5))
    sf.write(directory / "door_slam.wav", thud.astype(np.float32), sr, subtype="PCM_16")
    engine = write_demo_video(directory / "engine_idle.mp4", seconds=4.0, freq=110.0, with_audio=True)
    (directory / "prompts.txt").write_text("door_slam.mp4: a heavy door slams\n"
                                           "engine_idle.mp4: an engine idling\n")
    return [door, directory / "door_slam.wav", engine, directory / "prompts.txt"]


def make_dataset(directory: Path, n: int, variant: str = "tiny_16k", seed: int = 0,
                 prefix: str = "clip") -> list[Path]:
    """Write `n` synthetic clips (see write_clip) named `<prefix>NN`; returns every file."""
    files: list[Path] = []
    for i in range(n):
        files.extend(write_clip(directory, f"{prefix}{i:02d}", index=i, variant=variant, seed=seed))
    return files


def copy_slowly(src: Path, dst: Path, chunk: int = 128 * 1024, pause: float = 0.05,
                names: list[str] | None = None) -> list[Path]:
    """Copy the files of `src` (or only `names`) into `dst` in `chunk`-byte writes with
    `pause` seconds between them, under their final names, the way a slow upload or a
    network copy lands. Returns the destination paths."""
    dst.mkdir(parents=True, exist_ok=True)
    out = []
    for name in names or sorted(p.name for p in src.iterdir() if p.is_file()):
        target = dst / name
        with open(src / name, "rb") as fin, open(target, "wb") as fout:
            while block := fin.read(chunk):
                fout.write(block)
                fout.flush()
                time.sleep(pause)
        out.append(target)
    return out


def missing_outputs(run_dir: Path) -> list[str]:
    """The EXPECTED_OUTPUTS patterns that match no file in `run_dir`."""
    return [pat for pat in EXPECTED_OUTPUTS if not any(run_dir.glob(pat))]


def _config_text(weights: Path, settle: float, listen: str) -> str:
    # [logging] format stays "auto": JSON into the demo's log file (which the narrator reads),
    # readable lines when the user runs the daemon in a terminal as the closing lines say
    return (f'# selvad demo config (written by `selvad demo`)\n[paths]\n'
            f'dataset_roots = ["datasets"]\njobs_dir = "jobs"\noutput_root = "output"\n'
            f'state_dir = "state"\nweights_dir = {json.dumps(str(weights))}\nrender_root = "render"\n\n'
            f'[watch]\nsettle_seconds = {settle}\nuse_polling = false\nrescan_minutes = 0\n\n'
            f'[web]\nlisten = "{listen}"\n\n[logging]\nlevel = "info"\n')


def free_listen(host: str = "127.0.0.1", preferred: int = 8765) -> str:
    """`host:preferred` when nothing listens there, else `host:0` (the daemon then takes a
    free port and logs the URL it really serves, which the demo prints)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, preferred))
        except OSError:
            return f"{host}:0"
    return f"{host}:{preferred}"


class DemoStopped(Exception):
    """SIGTERM or SIGHUP reached the demo: it stops its daemon and exits 128 + signal."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_stopped(signum: int, _frame: Any) -> None:
    for sig in (signal.SIGTERM, signal.SIGHUP):  # a second signal must not cut the cleanup
        signal.signal(sig, signal.SIG_IGN)
    raise DemoStopped(signum)


def _die_with_parent() -> None:  # runs in the child between fork and exec
    """Linux: the daemon gets SIGTERM when the demo process dies, even by SIGKILL."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the demo's own handlers still stop it
        return
    if os.getppid() == 1:  # the demo died before prctl took effect
        os.kill(os.getpid(), signal.SIGTERM)


def _job_text(variant: str, steps: int, tiny: bool) -> str:
    save_every = max(1, steps // 2)
    lines = ['dataset = "demo"', f'variant = "{variant}"', "", "[lora]", "rank = 8", "",
             "[train]", f"steps = {steps}", f"save_every = {save_every}",
             f"log_every = {max(1, min(10, steps // 5))}", "warmup_steps = 5", "lr = 1e-3"]
    if tiny:
        lines.append('precision = "fp32"')
    lines += ["", "[sample]", "steps = 8", "", "[trigger]", "on_change = true",
              "settle_minutes = 0.02", ""]
    return "\n".join(lines)


def _prepare(root: Path, keep: bool) -> str | None:
    if root.exists() and any(root.iterdir()):
        if not (root / MARKER).exists() and not keep:
            return (f"{root} exists and was not made by `selvad demo`; choose another "
                    "directory or pass --keep to reuse it")
        for sub in ("datasets", "jobs", "output", "state", "staging"):
            shutil.rmtree(root / sub, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)
    (root / MARKER).write_text("made by `selvad demo`; safe to delete\n")
    return None


class _Narrator:
    """Turns the daemon's JSON log lines into short human lines."""

    def __init__(self, log_path: Path, queue_path: Path) -> None:
        self.log_path, self.queue_path = log_path, queue_path
        self.offset = 0

    def poll(self) -> None:
        try:
            with open(self.log_path, "rb") as f:
                f.seek(self.offset)
                data = f.read()
        except OSError:
            return
        end = data.rfind(b"\n") + 1
        self.offset += end
        for raw in data[:end].splitlines():
            try:
                ev = json.loads(raw)
            except json.JSONDecodeError:
                continue
            line = self.describe(ev)
            if line:
                print(line, flush=True)

    def describe(self, ev: dict[str, Any]) -> str | None:
        name = ev.get("event")
        if name == "daemon.ready":
            return "daemon: ready, watching " + ", ".join(ev.get("dataset_roots", []))
        if name == "web.ready":
            return (f"page: served at {ev.get('url')} (open it through the link with its "
                    "token, which `selvad web-url` prints)")
        if name == "daemon.companion_failed":
            return f"page: not served: {ev.get('message')}"
        if name == "job.loaded":
            return f"daemon: job {ev['job']!r} loaded (dataset {ev['dataset']}, {ev['variant']})"
        if name == "dataset.changed":
            return f"daemon: dataset {ev['dataset']!r} settled: {ev['changed']} file(s) changed"
        if name in ("dataset.valid", "dataset.invalid"):
            head = "valid" if name == "dataset.valid" else "INVALID"
            out = [f"validation: {head}, {ev.get('clips')} clip(s), {ev.get('error_count')} "
                   f"error(s), {ev.get('warning_count')} warning(s)"]
            out += [f"  error: {e}" for e in ev.get("errors", [])]
            out += [f"  warning: {w}" for w in ev.get("warnings", [])]
            out += [f"  advice: {a}" for a in ev.get("advice", [])]
            return "\n".join(out)
        if name == "run.state":
            extra = f" ({ev['reason']})" if ev.get("reason") else ""
            err = f": {ev['error']}" if ev.get("error") else ""
            return f"run {ev.get('run_id')} [{ev.get('kind', '')}]: {ev.get('state')}{extra}{err}"
        if name == "run.video_extract_done":
            return (f"videos: {ev.get('videos_encoded', 0)} clip(s) encoded from their frames, "
                    f"{ev.get('videos_cached', 0)} from the cache, {ev.get('videos_failed', 0)} failed")
        if name == "run.extract_done":
            return (f"extraction: {ev.get('audio_encoded', 0)} audio + {ev.get('text_encoded', 0)} "
                    f"prompt(s) encoded, {ev.get('audio_cached', 0)} from the cache")
        if name == "run.progress":
            return self.progress()
        if name == "run.checkpoint":
            return f"checkpoint: step {ev.get('step')} -> {Path(str(ev.get('path'))).name}"
        if name in ("run.warning", "job.invalid", "run.child_error"):
            return f"{name}: {ev.get('message') or ev.get('problems') or ev.get('error')}"
        return None

    def progress(self) -> str | None:
        from selvad.display import eta_text, progress_bar
        from selvad.runs.queue import RunQueue

        runs = RunQueue(self.queue_path).list_runs(states=["training"])
        if not runs:
            return None
        r = runs[-1]
        loss = f"  train loss (smoothed) {r.loss:.4f}" if r.loss is not None else ""
        return (f"training: {progress_bar(r.step, r.total_steps)}  step {r.step}/{r.total_steps}"
                f"{loss}  {eta_text(r.step, r.total_steps, r.eta_s)}")


def _tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        rel = path.relative_to(root)
        if path.is_symlink():
            print(f"  {rel} -> {os.readlink(path)}")
        elif path.is_file():
            print(f"  {rel}  ({path.stat().st_size:,} bytes)")


def print_page_link(config: Path, wait: float = 15.0) -> None:
    """Print the link to the demo daemon's page, token included (what `selvad web-url`
    prints), once the daemon says which URL it serves (`wait` seconds at most)."""
    from selvad.config.daemon import load_config
    from selvad.web.access import URL_FILE, ensure_token, page_link, served_url

    cfg = load_config(config)
    deadline = time.monotonic() + wait
    while not (cfg.paths.state_dir / URL_FILE).exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    try:
        link = page_link(served_url(cfg), ensure_token(cfg))
    except OSError as exc:
        print(f"the web page's link is unknown ({exc})", flush=True)
        return
    print(f"open {link} in a browser to follow the run and listen to its checkpoints "
          "(the link carries the page's token; `selvad web-url` prints it again)", flush=True)


def _stop(proc: subprocess.Popen[bytes], timeout: float = 120.0) -> int | None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)
    return proc.returncode


def run_demo(root: Path, steps: int = 100, weights: str = "", variant: str = "",
             keep: bool = False, clips: int = 4, timeout: float = 1800.0) -> int:
    """Run the demo in `root` (see the module docstring); returns the exit status.

    `weights`/`variant`: a real SelVA weights directory and its variant (default
    small_16k); without `weights` tiny weights are generated. `timeout` bounds the wait
    for the run in seconds. SIGTERM and SIGHUP (a closed terminal) stop it like Ctrl-C:
    its daemon is stopped and the exit status is 128 + the signal.
    """
    root = root.absolute()
    problem = _prepare(root, keep)
    if problem:
        print(f"selvad demo: {problem}", file=sys.stderr)
        return 1
    main = threading.current_thread() is threading.main_thread()  # handlers: main only
    previous = {sig: signal.signal(sig, _raise_stopped)
                for sig in (signal.SIGTERM, signal.SIGHUP)} if main else {}
    try:
        return _run_demo(root, steps, weights, variant, clips, timeout)
    except DemoStopped as stop:
        print(f"selvad demo: stopped by {stop}", file=sys.stderr, flush=True)
        return 128 + stop.signum
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run_demo(root: Path, steps: int, weights: str, variant: str, clips: int,
              timeout: float) -> int:
    """The demo's steps after its directory is prepared; the daemon it starts is stopped on
    every way out (its end, an error, DemoStopped, and the demo's death: PR_SET_PDEATHSIG)."""
    from selvad.runs.queue import RunQueue

    tiny = not weights
    variant = variant or ("tiny_16k" if tiny else "small_16k")
    if tiny:
        from selva_engine.weights.tiny import make_tiny

        print(f"writing tiny SelVA weights to {root / 'weights'} (no download)", flush=True)
        make_tiny(root / "weights", variant)
        weights_dir = root / "weights"
    else:
        weights_dir = Path(weights).absolute()
        print(f"training the real model: {variant} from {weights_dir}", flush=True)
    print(f"writing {clips} synthetic clips to {root / 'staging'}", flush=True)
    make_dataset(root / "staging", clips, variant)
    _add_videos(root / "staging", weights_dir, variant)
    for sub in ("datasets", "jobs", "output", "state", "render/demo"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    config = root / "selvad.toml"
    config.write_text(_config_text(weights_dir, settle=1.0, listen=free_listen()))
    (root / "jobs" / "demo.toml").write_text(_job_text(variant, steps, tiny))
    log_path = root / "selvad.log"
    print(f"starting the daemon: selvad run --config {config}  (log: {log_path})", flush=True)
    with open(log_path, "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "selvad.cli", "run", "--config", str(config)],
                                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                preexec_fn=_die_with_parent)
    narrator = _Narrator(log_path, root / "state" / "queue.sqlite3")
    try:
        deadline = time.monotonic() + 30
        while not (root / "state" / "queue.sqlite3").exists() and time.monotonic() < deadline:
            time.sleep(0.2)
        narrator.poll()
        print_page_link(config)
        print("copying clips into datasets/demo/ in chunks (as a slow upload would)", flush=True)
        copy_slowly(root / "staging", root / "datasets" / "demo", pause=0.02)
        return _wait(proc, narrator, root, RunQueue(root / "state" / "queue.sqlite3"), timeout)
    finally:
        code = _stop(proc)
        narrator.poll()
        print(f"daemon stopped (exit status {code})", flush=True)


def _add_videos(staging: Path, weights_dir: Path, variant: str) -> None:
    """Two synthetic videos beside the clips when the weights hold the video encoders."""
    from selva_engine.weights.locate import MissingWeightsError, resolve

    try:
        found = resolve(weights_dir, variant).video_encoder is not None
    except (MissingWeightsError, ValueError):
        found = False
    if not found:
        print(f"no video encoders in {weights_dir} (`selva-weights check {weights_dir}` says what is "
              "missing): the demo trains on feature files only", flush=True)
        return
    files = write_demo_videos(staging, variant)
    print(f"writing {len([f for f in files if f.suffix == '.mp4'])} synthetic videos (made with PyAV) to "
          f"{staging}: the daemon extracts their features like the SelVA Feature Extractor node", flush=True)


def _wait(proc: subprocess.Popen[bytes], narrator: _Narrator, root: Path, queue: Any,
          timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        narrator.poll()
        if proc.poll() is not None:
            print(f"selvad demo: the daemon exited early (status {proc.returncode}); see "
                  f"{root / 'selvad.log'}", file=sys.stderr)
            return 1
        runs = queue.list_runs(job="demo")
        train = [r for r in runs if r.kind == "train"]
        if any(r.state == "failed" for r in train):
            bad = [r for r in train if r.state == "failed"][-1]
            print(f"selvad demo: run {bad.id} failed: {bad.error}", file=sys.stderr)
            return 1
        done = [r for r in train if r.state == "done"]
        if done:
            run_dir = Path(done[-1].output_dir or root / "output" / "demo" / done[-1].id)
            _stop(proc)
            narrator.poll()
            print(f"\nrun {done[-1].id} is done. Output tree ({root / 'output'}):")
            _tree(root / "output")
            missing = missing_outputs(run_dir)
            if missing:
                print(f"selvad demo: missing outputs in {run_dir}: {', '.join(missing)}",
                      file=sys.stderr)
                return 1
            print(closing_lines(root, run_dir))
            return 0
        time.sleep(0.5)
    print(f"selvad demo: the run did not finish within {timeout:g} s", file=sys.stderr)
    return 1


def closing_lines(root: Path, run_dir: Path) -> str:
    """What the demo says at the end: where the adapter and samples are, that the daemon has
    stopped and the exact commands (with this venv's `selvad`) to start it again on the demo
    tree and look around, and why a tiny model's samples sound like noise."""
    selvad = Path(sys.executable).with_name("selvad")
    exe = str(selvad) if selvad.exists() else f"{sys.executable} -m selvad.cli"
    config = root / "selvad.toml"
    rec = _recommendation(run_dir)
    return "\n".join([
        "",
        f"adapter: {run_dir / 'adapter_final.pt'}",
        f"listen:  {run_dir}/sample_step*.wav"
        + (f"  (recommended: {rec})" if rec else ""),
        "The samples of the tiny demo model are noise by design: its weights are random, so the",
        "demo shows the pipeline, not the sound. With real weights the same run trains SelVA",
        "(SELVA_DIR=/path/to/ComfyUI/models/selva selvad demo --variant small_16k).",
        "",
        "The daemon has stopped. To run it again on the demo tree and look around:",
        f"  {exe} run --config {config}          # then, in another terminal:",
        f"  {exe} status --config {config}",
        f"  {exe} web-url --config {config}   # the page's link, token included",
        f"  edit {root / 'jobs' / 'demo.toml'} (a new run is queued), or drop more clips into "
        f"{root / 'datasets' / 'demo'}",
        f"  drop a video into {root / 'render' / 'demo'}: it is rendered with the job's adapter into "
        f"{root / 'output' / 'demo' / 'renders'} (the video with its new sound)",
    ])


def _recommendation(run_dir: Path) -> str | None:
    """The run's recommendation from its meta.json: "adapter_step00050.pt at strength
    0.6-0.8", or "none: <reason>" (None when meta.json has none)."""
    try:
        rec = json.loads((run_dir / "meta.json").read_text()).get("recommendation") or {}
    except (OSError, ValueError):
        return None
    if not rec:
        return None
    if not rec.get("path"):
        return f"none: {rec.get('reason', 'no checkpoint qualified')}"
    low, high = rec.get("strength_range") or (None, None)
    strength = f" at strength {low:g}-{high:g}" if low is not None else ""
    return f"{Path(rec['path']).name}{strength} ({rec.get('reason', '')})"
