#!/usr/bin/env bash
# The GPU rows of BENCHMARKS.md in one go, on a CUDA machine with sdvideo's requirements installed:
#   bash benchmarks/gpu.sh [RESULTS_DIR] [SECONDS]   (defaults: benchmarks/results, 560; ~9 min on an H100)
# 1. real-size SD2.1 + ControlNet (random weights), bf16, 512x512: (a)-(e) side by side; then the
#    few-step path (h)-(k) and the attention techniques (l)-(o) against (b) and (c);
# 2. every technique of demo/toy_sweep.yaml on the toy model, on CUDA (results.csv: compare with the
#    CPU table in BENCHMARKS.md: the same techniques should rank the same);
# 3. sdvideo's speed options on the real-size model (8 frames; per-frame figures, compile included),
#    in whatever time is left of SECONDS (its table is written row by row).
# Each step is limited in time and logged to RESULTS_DIR; a failed step does not stop the next.
set -u
out=${1:-benchmarks/results}
deadline=$(( $(date +%s) + ${2:-560} ))
mkdir -p "$out"
export PYTHONUNBUFFERED=1 TRANSFORMERS_VERBOSITY=error
python3 -c "import torch, diffusers, transformers; print('torch', torch.__version__, 'diffusers', diffusers.__version__,
'transformers', transformers.__version__, torch.cuda.get_device_name())"

echo "== 1. real-size model, (a)-(e)"
timeout 250 python3 benchmarks/bench.py --arch full --dtype bf16 --height 512 --width 512 --batch-size 16 \
    --out "$out/gpu-full-bf16" > "$out/gpu-full-bf16.log" 2>&1
tail -12 "$out/gpu-full-bf16.log"

echo "== 1b. real-size model: the few-step path (SD-Turbo's setting, 4 and 1 steps) and the attention techniques"
timeout 150 python3 benchmarks/bench.py --arch full --dtype bf16 --height 512 --width 512 --batch-size 16 \
    --configs cbhijklmno --out "$out/gpu-full-bf16-fewstep" > "$out/gpu-full-bf16-fewstep.log" 2>&1
tail -16 "$out/gpu-full-bf16-fewstep.log"

echo "== 2. toy sweep on CUDA"
sweep=demo/.gpu_sweep.yaml
sed "s#^out: .*#out: /tmp/sdvideo-gpu-sweep#" demo/toy_sweep.yaml > "$sweep"
start=$(date +%s)
timeout 130 python3 sdvideo.py sweep "$sweep" --quiet > "$out/gpu-toy-sweep.log" 2>&1
echo "sweep: exit $?, $(( $(date +%s) - start )) s"
tail -5 "$out/gpu-toy-sweep.log"
cp /tmp/sdvideo-gpu-sweep/results.csv "$out/gpu-toy-sweep.csv" 2>/dev/null
rm -f "$sweep"

echo "== 3. speed options"
left=$(( deadline - $(date +%s) ))
timeout $(( left > 10 ? left : 10 )) python3 benchmarks/bench.py --arch full --dtype bf16 --height 512 --width 512 \
    --batch-size 8 --frames 8 --options --out "$out/gpu-full-options" > "$out/gpu-full-options.log" 2>&1
tail -15 "$out/gpu-full-options.log"
