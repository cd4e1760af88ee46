"""`selva-weights check DIR` (which variants can run from a directory) and `make-tiny DIR`."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from selva_engine.model.variants import get_variant, variant_names
from selva_engine.weights.locate import check_variant, fix_hint
from selva_engine.weights.tiny import make_tiny

__all__ = ["main"]


def main(argv: list[str] | None = None) -> int:
    """`selva-weights check DIR [--variant V]... [--md5]` | `make-tiny DIR [--variant V] [--seed N]`.

    check: prints one line per file and variant; exit 1 when a named variant cannot run (or,
    without --variant, when no variant can, tiny ones included). make-tiny: writes a tiny directory (exit 0).
    """
    parser = argparse.ArgumentParser(prog="selva-weights", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    chk = sub.add_parser("check", help="report present / missing / wrong files per variant")
    chk.add_argument("dir", type=Path)
    chk.add_argument("--variant", action="append", choices=variant_names(), default=None)
    chk.add_argument("--md5", action="store_true", help="also verify published md5s (slow)")
    tiny = sub.add_parser("make-tiny", help="write a tiny weights directory for tests and demos")
    tiny.add_argument("dir", type=Path)
    tiny_names = [n for n in variant_names(include_tiny=True) if get_variant(n).tiny]
    tiny.add_argument("--variant", choices=[*tiny_names, "all"], default="tiny_16k")
    tiny.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.cmd == "make-tiny":
        names = tiny_names if args.variant == "all" else [args.variant]
        for name in names:
            w = make_tiny(args.dir, name, seed=args.seed)
            print(f"{name}: written to {w.selva_dir}")
        return 0
    names = args.variant or variant_names(include_tiny=False)
    runnable = []
    for name in names:
        checks = check_variant(args.dir, name, md5=args.md5)
        ok = all(c.status == "ok" for c in checks if c.required)
        runnable += [name] if ok else []
        print(f"{name}: {'OK' if ok else 'CANNOT RUN'}")
        for c in checks:
            print(f"  {c.describe()}" + ("" if c.required else " [optional]"))
        if not ok:
            print(f"  fix: {fix_hint(Path(args.dir), get_variant(name))}")
    tiny = [] if args.variant else _runnable_tiny(args.dir)
    print(_summary(runnable, tiny, checked_real_only=not args.variant))
    if args.variant:
        return 0 if len(runnable) == len(names) else 1
    return 0 if runnable or tiny else 1


def _runnable_tiny(directory: Path) -> list[str]:
    """The tiny test variants whose files are all in `directory`."""
    return [n for n in variant_names(include_tiny=True) if get_variant(n).tiny and all(
        c.status == "ok" for c in check_variant(directory, n) if c.required)]


def _summary(runnable: list[str], tiny: list[str], checked_real_only: bool) -> str:
    """The closing line of `check`: which variants can run from the directory."""
    if not checked_real_only:
        return f"can run: {', '.join(runnable) if runnable else 'none of the variants checked'}"
    real = ", ".join(runnable) if runnable else "none of the real variants"
    line = f"can run: {real}"
    if tiny:
        line += f"; tiny variants can run: {', '.join(tiny)} (random test weights, for the demo)"
    return line


if __name__ == "__main__":
    sys.exit(main())
