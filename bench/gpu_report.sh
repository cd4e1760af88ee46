#!/usr/bin/env bash
# Every GPU measurement of issue 14 in one command, on the lent device machine:
#   source .whl/env.sh && bash bench/gpu_report.sh [all|main|compile|profile|extract|render|golden]
# (call the device with carry [".whl", ".golden"]; ../shared/tools/device-prep.sh makes them).
#   main     before (the faithful ComfyUI-SelVA loop) and after (ours), with and without
#            activation checkpointing, at small_16k@16, large_44k@4, large_44k@16: step ms,
#            samples/s, TFLOP/step, TFLOP/s, MFU vs the measured bf16 matmul ceiling, peak
#            allocated / reserved memory; last line `speedup: X.XX` (large_44k@16)
#   compile  ours eager and with torch.compile'd blocks (row ours+compile) at large_44k@16
#            and @4 (compile time in a note)
#   profile  the top kernels of ours at large_44k@16 (torch.profiler, 3 steps)
#   golden   the conformance goldens on the GPU's stack (.golden)
#   extract  video feature extraction, the node's path vs ours (bench/extract_throughput.py):
#            clips/s, ms per clip by stage, peak memory; 1080p 8-s clips and 30-s videos
#            of which 8 s are encoded; last line `speedup: X.XX`
#   render   one render (features -> waveform), the Sampler node's loop vs ours
#            (bench/render_throughput.py): renders/s and ms per stage; large_44k at 8 s with
#            the real weights in $SELVA_DIR, else the tiny model; last line `speedup: X.XX`
# Each stage runs under its own time limit (STAGE_TIMEOUT seconds, default 540) so that one
# device call of at most 10 minutes can run one stage; `all` runs them in turn.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ -z "${SELVA_GOLDEN_DIR:-}" ] && [ -f .whl/env.sh ]; then source .whl/env.sh; fi
PY=${PYTHON:-python3}
STEPS=${STEPS:-10}
ROUNDS=${ROUNDS:-3}
LIMIT=${STAGE_TIMEOUT:-540}
"$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else "no CUDA GPU visible: run this on the lent device machine")'
"$PY" -c 'import torch; p = torch.cuda.get_device_properties(0); print(f"GPU {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, CUDA {torch.version.cuda}")'

stage() {
  echo; echo "== $1"; shift
  timeout "$LIMIT" "$@" || echo "(stage exited with $?)"
}

run_main() {
  stage "before (faithful) vs after (ours), with/without activation checkpointing" \
    "$PY" bench/train_throughput.py --steps "$STEPS" --rounds "$ROUNDS" --gradient_checkpointing
}
run_compile() {
  for b in 16 4; do
    stage "ours with torch.compile, large_44k@$b" \
      "$PY" bench/train_throughput.py --variant large_44k --batch "$b" --compile --steps "$STEPS" --rounds 2
  done
}
run_profile() {
  stage "profile of ours, large_44k@16" \
    "$PY" bench/train_throughput.py --variant large_44k --batch 16 --steps 3 --rounds 1 --profile
}
run_extract() {
  stage "extract: 8 clips of 8 s at 1920x1080, batch 8" \
    "$PY" bench/extract_throughput.py --clips 8 --seconds 8 --duration 8 --width 1920 --height 1080 --batch 8 \
    ${SELVA_DIR:+--selva_dir "$SELVA_DIR"}
  stage "extract: 2 videos of 30 s at 1920x1080, 8 s encoded each (memory must not grow with length)" \
    "$PY" bench/extract_throughput.py --clips 2 --seconds 30 --duration 8 --width 1920 --height 1080 --batch 2 \
    --rounds 1 ${SELVA_DIR:+--selva_dir "$SELVA_DIR"}
}
run_render() {
  if [ -n "${SELVA_DIR:-}" ]; then set -- --selva_dir "$SELVA_DIR" --variant large_44k; else set -- --variant tiny_16k; fi
  stage "render: the Sampler node's loop vs ours, 8 s, 25 steps, CFG 4.5" \
    "$PY" bench/render_throughput.py --duration 8 --rounds "$ROUNDS" --device cuda "$@"
}
run_golden() {
  stage "goldens" "$PY" -m selva_engine.conformance "${SELVA_GOLDEN_DIR:-.golden}"
}

case "${1:-all}" in
  main) run_main ;;
  compile) run_compile ;;
  profile) run_profile ;;
  golden) run_golden ;;
  extract) run_extract ;;
  render) run_render ;;
  all) run_main; run_compile; run_profile; run_extract; run_render; run_golden ;;
  *) echo "usage: bench/gpu_report.sh [all|main|compile|profile|extract|render|golden]" >&2; exit 2 ;;
esac
