"""End-to-end: the page stays responsive while the real daemon validates a 5,000-clip dataset.

5,000 small synthetic clips (a 0.25 s tone and a one-frame .npz each: valid, with four
warnings apiece) are written into a watched dataset of a job; while the daemon settles,
hashes and validates them, a client thread fetches `/` and `/api/status` every 0.1 s and
keeps each latency. The bar: p95 < 0.5 s and max < 2 s for each, measured over the whole
busy time (from the first file written until the daemon logs `dataset.valid`). The figures
are printed (`pytest -s`) and recorded as the test's properties. `Latencies` is reused by
the browser test, which measures the same while a run trains.
"""

from __future__ import annotations

import io
import threading
import time
import urllib.request
from typing import Any

import numpy as np
import pytest
import soundfile as sf

from .conftest import DaemonTree

pytestmark = [pytest.mark.e2e]

CLIPS = 5000
P95_LIMIT, MAX_LIMIT = 0.5, 2.0  # seconds


class Latencies:
    """A thread fetching each of `paths` under `url` in turn every `pause` seconds until
    `stop()`, with the page's `token`; `seconds[path]` holds each response time (a failed
    request counts as 99 s)."""

    def __init__(self, url: str, token: str, paths: tuple[str, ...] = ("", "api/status"),
                 pause: float = 0.1) -> None:
        self.url, self.paths, self.pause = url, paths, pause
        self.headers = {"authorization": f"Bearer {token}"}
        self.seconds: dict[str, list[float]] = {p: [] for p in paths}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Latencies:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            for path in self.paths:
                t0 = time.monotonic()
                try:
                    request = urllib.request.Request(self.url + path, headers=self.headers)
                    with urllib.request.urlopen(request, timeout=30) as r:
                        r.read()
                        took = time.monotonic() - t0 if r.status == 200 else 99.0
                except OSError:
                    took = 99.0
                self.seconds[path].append(took)
                self._stop.wait(self.pause)

    def stop(self) -> dict[str, dict[str, float]]:
        """End the thread; {path: {"n", "p50", "p95", "max"}} (seconds)."""
        self._stop.set()
        self._thread.join(35)
        return {"/" + p: {"n": len(v), "p50": float(np.percentile(v, 50)),
                          "p95": float(np.percentile(v, 95)), "max": max(v)}
                for p, v in self.seconds.items() if v}

    @staticmethod
    def check(figures: dict[str, dict[str, float]], what: str, min_n: int = 10) -> None:
        """Print `figures` and assert the bar for each path."""
        for path, f in figures.items():
            print(f"{what}: GET {path}: {int(f['n'])} requests, p50 {f['p50'] * 1000:.0f} ms, "
                  f"p95 {f['p95'] * 1000:.0f} ms, max {f['max'] * 1000:.0f} ms")
        for path, f in figures.items():
            assert f["n"] >= min_n, f"{what}: only {f['n']} requests of {path}"
            assert f["p95"] < P95_LIMIT and f["max"] < MAX_LIMIT, (what, path, f)


def _clip_bytes() -> tuple[bytes, bytes]:
    """One short tiny_16k clip: (wav, npz) bytes."""
    from selva_engine.model.variants import get_variant

    v = get_variant("tiny_16k")
    sr = v.sequence().sampling_rate
    t = np.arange(sr // 4) / sr
    wav, npz = io.BytesIO(), io.BytesIO()
    sf.write(wav, (0.3 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), sr, format="WAV",
             subtype="PCM_16")
    rng = np.random.default_rng(0)
    np.savez(npz, clip_features=rng.standard_normal((1, 1, v.clip_dim)).astype(np.float32),
             sync_features=rng.standard_normal((1, 1, v.sync_dim)).astype(np.float32),
             prompt=np.array("a short tone"), duration=np.array(0.25))
    return wav.getvalue(), npz.getvalue()


def _validated(tree: DaemonTree) -> dict[str, Any] | None:
    return next((e for e in tree.events() if e.get("event") in ("dataset.valid", "dataset.invalid")
                 and e.get("dataset") == "big" and e.get("clips") == CLIPS), None)


@pytest.mark.slow
def test_page_stays_responsive_while_5000_clips_validate(tree: DaemonTree,
                                                         record_property: Any) -> None:
    big = tree.dataset("big")
    big.mkdir(parents=True)
    tree.write_job("big", "big", on_change=False)
    tree.start(notify=True)
    url = tree.web_url()
    tree.wait_for(lambda: any(e.get("event") == "dataset.invalid" for e in tree.events()), 30,
                  "the empty dataset's first check")
    wav, npz = _clip_bytes()
    probe = Latencies(url, tree.web_token()).start()
    t0 = time.monotonic()
    for i in range(CLIPS):
        (big / f"c{i:04d}.wav").write_bytes(wav)
        (big / f"c{i:04d}.npz").write_bytes(npz)
    written = time.monotonic() - t0
    event = tree.wait_for(lambda: _validated(tree), 240, f"the {CLIPS}-clip dataset's validation")
    busy = time.monotonic() - t0
    figures = probe.stop()
    validating = [m for m in tree.notify.drain() if "validating big: " in m and f"/{CLIPS}" in m]
    print(f"{CLIPS} clips written in {written:.1f} s, validated {busy:.1f} s after the first "
          f"file; STATUS 'validating' notes seen: {len(validating)}")
    for path, f in figures.items():
        for k, v in f.items():
            record_property(f"{path} {k}", round(v, 4))
    assert event["event"] == "dataset.valid" and validating, (event, validating[-3:])
    Latencies.check(figures, f"while {CLIPS} clips validate", min_n=max(10, int(busy)))
    # the dashboard lists the dataset with the warnings the daemon just found
    status, body = tree.web_get("")
    assert status == 200
    home = body.decode()
    row = home.split('id="datasets"', 1)[1].split("</table>", 1)[0]
    # short audio, short clip and sync features, and the Inspector's SNR (a steady sine)
    assert f'data-warnings="{4 * CLIPS}"' in row
    assert "zero-padded" in row and f"… and {CLIPS - 5:,} more like this" in row
