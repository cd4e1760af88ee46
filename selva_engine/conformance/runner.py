"""Conformance runner: checks our implementation against reference goldens.

`python -m selva_engine.conformance DIR [--only KIND,...]` runs every golden sidecar
(`*.json` with a `kind` field) in DIR and its subfolders, computes the golden's outputs with our code from
the sidecar's own config (dims, lengths, targets, strengths, cfg, steps: nothing is
assumed), compares every `output.*` array (and every `debug.*` array we produce) with the
sidecar's suggested tolerances, prints one line per golden and ends with
`N passed, M failed`. Exit status 1 on any failure or unknown kind.
"""

from __future__ import annotations

import argparse
import fnmatch
import importlib
import json
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["GoldenResult", "KINDS", "compare", "compare_cosine", "main", "run_dir", "run_golden", "tolerance_for"]

# kind -> "module:function"; each function takes (sidecar, golden_dir, io_arrays) and returns
# computed arrays keyed like the golden's arrays.
KINDS: dict[str, str] = {
    "generator": "selva_engine.conformance.engine:run_generator",
    "lora": "selva_engine.conformance.engine:run_lora",
    "flow_matching": "selva_engine.conformance.engine:run_flow_matching",
    "mel": "selva_engine.conformance.audio:run_mel",
    "vae": "selva_engine.conformance.audio:run_vae",
    "bigvgan_v1": "selva_engine.conformance.audio:run_bigvgan_v1",
    "bigvgan_v2": "selva_engine.conformance.audio:run_bigvgan_v2",
    "t5_tokenizer": "selva_engine.conformance.video:run_t5_tokenizer",
    "t5": "selva_engine.conformance.video:run_t5",
    "clip_vision": "selva_engine.conformance.video:run_clip_vision",
    "textsynch": "selva_engine.conformance.video:run_textsynch",
    "frame_select": "selva_engine.conformance.video_node:run_frame_select",
    "resize": "selva_engine.conformance.video_node:run_resize",
    "video_extractor": "selva_engine.conformance.video_node:run_video_extractor",
}

# Computed arrays with this prefix are compared with the sidecar's `node_output_file` (the
# file the ComfyUI node wrote): every key, dtype and value.
NODE_PREFIX = "node."

# Computed arrays with this prefix are compared with the sidecar's `effective_weights_file`.
EFFECTIVE_PREFIX = "effective."
_ALL = ("all", "all outputs", "*")


def _parse_tolerances(spec: dict) -> list[tuple[list[str], list[str], float, float, int]]:
    """Sidecar tolerance keys -> (patterns, exclusions, atol, rtol, specificity)."""
    rules = []
    for key, tol in spec.items():
        if not isinstance(tol, dict) or "atol" not in tol:
            continue
        include, exclude = [], []
        for alt in key.split(" / "):
            alt = alt.strip()
            if " except " in alt:
                alt, _, ex = alt.partition(" except ")
                exclude += [e.strip() for e in ex.split(",")]
            alt = alt.strip()
            if alt.lower() in _ALL:
                alt = "*"
            include.append(alt)
        literal = max(len(p.split("*")[0]) for p in include)
        exact = all("*" not in p for p in include)
        rules.append((include, exclude, float(tol["atol"]), float(tol.get("rtol", 0.0)),
                      (2 if exact else 1) * 1000 + literal))
    return rules


def tolerance_for(name: str, spec: dict) -> tuple[float, float] | None:
    """(atol, rtol) for array `name` from a sidecar's `suggested_tolerance`, or None.

    Exact names beat globs; among globs the longest literal prefix wins; `X except Y`
    excludes Y; "all" / "all outputs" match everything.
    """
    best = None
    for include, exclude, atol, rtol, spec_rank in _parse_tolerances(spec):
        if any(fnmatch.fnmatchcase(name, e) for e in exclude):
            continue
        if any(fnmatch.fnmatchcase(name, p) for p in include):
            if best is None or spec_rank > best[0]:
                best = (spec_rank, atol, rtol)
    return None if best is None else (best[1], best[2])


@dataclass
class ArrayCheck:
    name: str
    ok: bool
    max_abs: float
    ratio: float  # worst |a - e| / (atol + rtol |e|); <= 1 passes
    detail: str = ""


@dataclass
class GoldenResult:
    """Outcome of one golden: its name, kind, per-array checks and any error."""

    name: str
    kind: str
    checks: list[ArrayCheck] = field(default_factory=list)
    error: str = ""

    @property
    def ok(self) -> bool:
        return not self.error and bool(self.checks) and all(c.ok for c in self.checks)

    def line(self) -> str:
        if self.error:
            return f"FAIL {self.name} [{self.kind}]: {self.error}"
        worst = max(self.checks, key=lambda c: c.ratio)
        failed = [c.name for c in self.checks if not c.ok]
        status = "PASS" if self.ok else "FAIL"
        extra = f"; failing: {', '.join(failed[:6])}" if failed else ""
        return (f"{status} {self.name} [{self.kind}]: {len(self.checks)} arrays, worst {worst.name} "
                f"max|err| {worst.max_abs:.3g} ({worst.ratio:.2f} of tolerance){extra}")


def compare_cosine(name: str, actual: np.ndarray, expected: np.ndarray, min_cosine: float) -> ArrayCheck:
    """Cosine similarity of every row (last axis) >= min_cosine (for bf16 results)."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    if a.shape != e.shape:
        return ArrayCheck(name, False, float("inf"), float("inf"), f"shape {a.shape} != expected {e.shape}")
    a2, e2 = a.reshape(-1, a.shape[-1]), e.reshape(-1, e.shape[-1])
    cos = (a2 * e2).sum(-1) / np.maximum(np.linalg.norm(a2, axis=-1) * np.linalg.norm(e2, axis=-1), 1e-30)
    worst = float(cos.min()) if cos.size else 1.0
    ratio = (1.0 - worst) / max(1.0 - min_cosine, 1e-30)
    return ArrayCheck(name, bool(np.isfinite(a).all() and worst >= min_cosine), float(np.abs(a - e).max()),
                      ratio, f"min cosine {worst:.6f}")


def compare(name: str, actual: np.ndarray, expected: np.ndarray, atol: float, rtol: float) -> ArrayCheck:
    """Element-wise |actual - expected| <= atol + rtol * |expected| (numpy.allclose rule).

    Strings compare equal or not; a `node.` array (the node's file) must also keep its dtype.
    """
    if np.asarray(expected).dtype.kind in "US" or np.asarray(actual).dtype.kind in "US":
        same = np.asarray(actual).shape == np.asarray(expected).shape and bool(np.all(actual == expected))
        return ArrayCheck(name, same, 0.0 if same else float("inf"), 0.0 if same else float("inf"),
                          "" if same else f"{actual!r} != expected {expected!r}")
    if name.startswith(NODE_PREFIX) and np.asarray(actual).dtype != np.asarray(expected).dtype:
        return ArrayCheck(name, False, float("inf"), float("inf"),
                          f"dtype {np.asarray(actual).dtype} != expected {np.asarray(expected).dtype}")
    actual = np.asarray(actual, dtype=np.float64)
    expected = np.asarray(expected, dtype=np.float64)
    if actual.shape != expected.shape:
        return ArrayCheck(name, False, float("inf"), float("inf"),
                          f"shape {actual.shape} != expected {expected.shape}")
    if expected.size == 0:
        return ArrayCheck(name, True, 0.0, 0.0)
    err = np.abs(actual - expected)
    bound = atol + rtol * np.abs(expected)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(bound > 0, err / bound, np.where(err > 0, np.inf, 0.0))
    finite = np.isfinite(actual).all()
    worst = float(np.nanmax(ratio)) if finite else float("inf")
    return ArrayCheck(name, bool(finite and worst <= 1.0), float(np.nanmax(err)), worst)


def _load_fn(kind: str) -> Callable:
    module, _, fn = KINDS[kind].partition(":")
    return getattr(importlib.import_module(module), fn)


def _npz(path: Path) -> dict[str, np.ndarray]:
    with np.load(path, allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def run_golden(sidecar_path: Path) -> GoldenResult:
    """Run one golden described by its JSON sidecar; never raises (errors are reported)."""
    sidecar = json.loads(sidecar_path.read_text())
    name = sidecar.get("golden", sidecar_path.stem)
    kind = sidecar.get("kind", "?")
    result = GoldenResult(name, kind)
    if kind not in KINDS:
        result.error = f"unknown golden kind {kind!r} (known: {', '.join(KINDS)})"
        return result
    golden_dir = sidecar_path.parent
    try:
        io_name = (sidecar.get("io_file") or sidecar.get("file") or sidecar.get("debug_file")
                   or f"{name}.npz")
        if not (golden_dir / io_name).is_file() and (golden_dir / f"{name}.io.npz").is_file():
            io_name = f"{name}.io.npz"  # the video goldens' naming
        io = _npz(golden_dir / io_name)
        produced = _load_fn(kind)(sidecar, golden_dir, io)
        tolerances = sidecar.get("suggested_tolerance") or _kind_tolerances(kind, sidecar)
        expected = {k: v for k, v in io.items() if k.startswith(("output.", "debug."))}
        if sidecar.get("node_output_file"):
            node = _npz(golden_dir / sidecar["node_output_file"])
            expected.update({NODE_PREFIX + k: v for k, v in node.items()})
            extra = sorted(k for k in produced if k.startswith(NODE_PREFIX) and k not in expected)
            result.checks += [ArrayCheck(k, False, float("inf"), float("inf"), "key not in the node's file")
                              for k in extra]
        effective = {}
        if sidecar.get("effective_weights_file") and any(
            k.startswith(EFFECTIVE_PREFIX) for k in produced
        ):
            eff = _npz(golden_dir / sidecar["effective_weights_file"])
            effective = {EFFECTIVE_PREFIX + k: v for k, v in eff.items()}
        for key in sorted(expected):
            if key not in produced:
                if key.startswith("output."):
                    result.checks.append(ArrayCheck(key, False, float("inf"), float("inf"), "not produced"))
                continue
            cosine = tolerances.get(key, {}).get("min_cosine") if isinstance(tolerances.get(key), dict) else None
            if cosine is not None:
                result.checks.append(compare_cosine(key, produced[key], expected[key], float(cosine)))
                continue
            tol = tolerance_for(key, tolerances)
            if tol is None:
                result.error = f"no tolerance for {key} in the sidecar"
                return result
            result.checks.append(compare(key, produced[key], expected[key], *tol))
        for key in sorted(effective):
            if key not in produced:
                result.checks.append(ArrayCheck(key, False, float("inf"), float("inf"), "not produced"))
                continue
            tol = tolerance_for("effective weights", tolerances) or tolerance_for(key, tolerances)
            if tol is None:
                result.error = "no tolerance for the effective weights in the sidecar"
                return result
            result.checks.append(compare(key, produced[key], effective[key], *tol))
        if not result.checks:
            result.error = "golden has no output.* arrays"
    except Exception as exc:  # one broken golden must not stop the run
        last = traceback.extract_tb(exc.__traceback__)[-1]
        result.error = f"{type(exc).__name__}: {exc} (at {Path(last.filename).name}:{last.lineno})"
    return result


def _kind_tolerances(kind: str, sidecar: dict) -> dict:
    """Tolerances for a sidecar without `suggested_tolerance`: the kind's module may define
    `suggested_tolerance(sidecar)` (its goldens state them in their own words)."""
    module = importlib.import_module(KINDS[kind].partition(":")[0])
    fn = getattr(module, "suggested_tolerance", None)
    return fn(sidecar) if fn is not None else {}


def _sidecars(golden_dir: Path) -> list[Path]:
    """`*.json` in `golden_dir` and its subfolders (video/, video/e2e_*/), shallow ones first."""
    return sorted(Path(golden_dir).rglob("*.json"), key=lambda p: (len(p.parts), str(p)))


def run_dir(golden_dir: Path, only: list[str] | None = None) -> list[GoldenResult]:
    """Run every golden sidecar under `golden_dir` (optionally only some kinds)."""
    results = []
    for path in _sidecars(golden_dir):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
            results.append(GoldenResult(path.stem, "?", error=f"unreadable sidecar: {exc}"))
            continue
        kind = data.get("kind") if isinstance(data, dict) else None
        if kind is None or (only and kind not in only):
            continue
        results.append(run_golden(path))
    return results


def main(argv: list[str] | None = None) -> int:
    """Command line entry point; returns the exit status."""
    parser = argparse.ArgumentParser(prog="python -m selva_engine.conformance", description=__doc__.split("\n\n")[0])
    parser.add_argument("golden_dir", type=Path)
    parser.add_argument("--only", default="", help="comma-separated kinds to run (default: all)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every array check")
    args = parser.parse_args(argv)
    if not args.golden_dir.is_dir():
        print(f"error: golden directory {args.golden_dir} does not exist", file=sys.stderr)
        return 2
    only = [k.strip() for k in args.only.split(",") if k.strip()] or None
    if only:
        bad = [k for k in only if k not in KINDS]
        if bad:
            print(f"error: unknown kind(s) {', '.join(bad)}; known: {', '.join(KINDS)}", file=sys.stderr)
            return 2
    results = run_dir(args.golden_dir, only)
    for r in results:
        print(r.line())
        if args.verbose:
            for c in r.checks:
                print(f"    {'ok ' if c.ok else 'BAD'} {c.name}: max|err| {c.max_abs:.3g} ratio {c.ratio:.3f} {c.detail}")
    passed = sum(r.ok for r in results)
    failed = len(results) - passed
    print(f"{passed} passed, {failed} failed")
    return 0 if failed == 0 and results else 1


if __name__ == "__main__":
    sys.exit(main())
