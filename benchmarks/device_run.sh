#!/usr/bin/env bash
# The one prepared run for a lent GPU (issue #14), to be started once through the device tool:
#
#     run(command="bash benchmarks/device_run.sh", timeout_s=540)
#
# The device has torch and transformers but no lm-eval and no network; these two benchmarks
# need neither (the working tree is copied there, and PYTHONPATH=. makes relspec_lmeval
# importable). Each step has its own time limit so one slow step cannot eat the others.
# Results land in $OUT (fetched back) as text and JSON; copy them to benchmarks/results/.
set -u
OUT=${OUT:-/tmp/device-out}
mkdir -p "$OUT"
export PYTHONPATH=.
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv > "$OUT/gpu.txt" 2>&1
python -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, 'cuda', torch.version.cuda)" >> "$OUT/gpu.txt" 2>&1
# identification at Llama-2-7B's exact shape: statistics pass + AP over 2,500 prompts, and the filter
timeout 300 python benchmarks/identify_throughput.py --shape 7b --device cuda --dtype bfloat16 --prompts 2500 \
    --repeats 3 --budget-gb 40 --out "$OUT/identify_throughput_7b_cuda.json" > "$OUT/identify_throughput_7b_cuda.txt" 2>&1
echo "identify_throughput rc=$?" >> "$OUT/gpu.txt"
# the forward-pass cost of a 0.36% set switched off by weight edits and by hooks
timeout 150 python benchmarks/ablation_forward.py --shape 7b --device cuda --dtype bfloat16 --batch-size 16 --tokens 256 \
    --out "$OUT/ablation_forward_7b_cuda.json" > "$OUT/ablation_forward_7b_cuda.txt" 2>&1
echo "ablation_forward rc=$?" >> "$OUT/gpu.txt"
cat "$OUT"/*.txt
