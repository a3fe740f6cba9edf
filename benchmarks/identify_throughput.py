"""Cost of identification's statistics pass + AP, relative to plain forward passes.

ratio = (statistics pass over the prompts + AP of every neuron) / (plain forward passes over
the same prompts, same batches, same call arguments, no hooks). Goal: ≤ 1.25. The
correctness filter (greedy 2-token generation, which also collects the means) is timed and
reported separately. Repeats are interleaved (plain, stats, plain, stats …, the order
alternating), after one warm-up of each, and the ratio is taken from the medians.

The model is a random Llama with Llama-2-7B's proportions (intermediate = 2.6875 × hidden,
head dim 128, vocab 32000) scaled down to run on a CPU; ``--shape 7b`` builds Llama-2-7B's
exact shape (for a GPU). The code timed is the pipeline's own (relspec_lmeval.activations,
relspec_lmeval.scoring).

    python benchmarks/identify_throughput.py                      # CPU, small
    python benchmarks/identify_throughput.py --shape 7b --device cuda --dtype bfloat16 --prompts 2500
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

SHAPES = {
    # name: (layers, hidden, intermediate, heads, vocab)
    "small": (8, 256, 688, 2, 32000),
    "7b": (32, 4096, 11008, 32, 32000),
}


def build_model(shape: str, dtype: torch.dtype, device: str, seed: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    layers, hidden, inter, heads, vocab = SHAPES[shape]
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=heads, max_position_embeddings=4096,
        bos_token_id=1, eos_token_id=2, pad_token_id=0,
    )
    torch.manual_seed(seed)
    with torch.device("meta"):
        model = LlamaForCausalLM(config)
    model = model.to_empty(device=device).to(dtype)
    with torch.no_grad():  # random weights, scaled like the usual init
        for name, p in model.named_parameters():
            if "norm" in name:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02)
    # buffers (rotary frequencies) were not materialised by to_empty: rebuild them
    model.model.rotary_emb = type(model.model.rotary_emb)(config).to(device)
    return model.eval()


class FakeTokenizer:
    """What generate_with_means needs of a tokenizer, for random token prompts."""

    bos_token_id, eos_token_id, pad_token_id, unk_token_id = 1, 2, 0, 3

    def decode(self, tokens, skip_special_tokens=True):
        return " ".join(str(t) for t in tokens)


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", choices=sorted(SHAPES), default="small")
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--prompts", type=int, default=160, help="positives + negatives (1 : 4)")
    p.add_argument("--min-len", type=int, default=8)
    p.add_argument("--max-len", type=int, default=20)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1, help="CPU threads (1: stable timings on a shared machine)")
    p.add_argument("--budget-gb", type=float, default=4.0, help="memory budget for AP chunks")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="write the result JSON here")
    args = p.parse_args(argv)

    from relspec_lmeval.identify.activations import activation_matrix, forward_kwargs, generate_with_means
    from relspec_lmeval.identify.methods.chunking import two_class_scores
    from relspec_lmeval.identify.tokens import length_batches, pad_batch
    from relspec_lmeval.modelio.sites import model_shape

    torch.set_num_threads(args.threads)
    dtype = getattr(torch, args.dtype)
    model = build_model(args.shape, dtype, args.device, args.seed)
    layout = model_shape(model)
    g = torch.Generator().manual_seed(args.seed)
    lengths = torch.randint(args.min_len, args.max_len + 1, (args.prompts,), generator=g).tolist()
    encoded = [[1, *torch.randint(4, model.config.vocab_size, (n - 1,), generator=g).tolist()] for n in lengths]
    labels = torch.zeros(args.prompts, dtype=torch.bool)
    labels[: args.prompts // 5] = True
    device = torch.device(args.device)
    matrix_device = device if device.type != "cpu" else "cpu"
    budget = int(args.budget_gb * (1 << 30))
    kwargs = forward_kwargs(model)
    batches = length_batches(encoded, args.batch_size)

    @torch.inference_mode()
    def plain(full_logits: bool = False) -> float:
        sync(args.device)
        t = time.perf_counter()
        for rows in batches:
            ids, mask = pad_batch([encoded[i] for i in rows], 0, "right", device)
            if full_logits:
                model(input_ids=ids, attention_mask=mask, use_cache=False)
            else:
                model(input_ids=ids, attention_mask=mask, **kwargs)
        sync(args.device)
        return time.perf_counter() - t

    def stats() -> tuple[float, float]:
        sync(args.device)
        t = time.perf_counter()
        matrix = activation_matrix(model, encoded, layout, batch_size=args.batch_size, pad_id=0, matrix_device=matrix_device, progress=False)
        sync(args.device)
        t_stats = time.perf_counter() - t
        t = time.perf_counter()
        two_class_scores("ap", matrix, labels, device=device, budget_bytes=budget)
        sync(args.device)
        return t_stats, time.perf_counter() - t

    def filter_pass() -> float:
        sync(args.device)
        t = time.perf_counter()
        generate_with_means(model, FakeTokenizer(), encoded, layout, batch_size=args.batch_size, progress=False)
        sync(args.device)
        return time.perf_counter() - t

    plain(), stats(), plain(True)  # warm-up
    rows = []
    for r in range(args.repeats):
        if r % 2 == 0:
            t_plain = plain()
            t_stats, t_ap = stats()
        else:
            t_stats, t_ap = stats()
            t_plain = plain()
        rows.append({"plain": t_plain, "statistics": t_stats, "ap": t_ap, "ratio": (t_stats + t_ap) / t_plain})
    t_full = statistics.median(plain(True) for _ in range(max(1, args.repeats // 2)))
    t_filter = statistics.median(filter_pass() for _ in range(max(1, args.repeats // 2)))

    med = {key: statistics.median(row[key] for row in rows) for key in ("plain", "statistics", "ap")}
    result = {
        "benchmark": "identify_throughput",
        "goal": "ratio <= 1.25",
        "ratio": (med["statistics"] + med["ap"]) / med["plain"],
        "ratio_per_repeat_median": statistics.median(row["ratio"] for row in rows),
        "median_seconds": {**med, "plain_full_logits": t_full, "filter_generate_2_tokens": t_filter},
        "repeats": rows,
        "setup": {
            "shape": args.shape,
            "layers_hidden_intermediate_heads_vocab": SHAPES[args.shape],
            "neurons": layout.total,
            "prompts": args.prompts,
            "positives": int(labels.sum()),
            "prompt_tokens": sum(lengths),
            "batch_size": args.batch_size,
            "dtype": args.dtype,
            "device": str(device) + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else ""),
            "threads": args.threads,
            "baseline": "model(input_ids, attention_mask, use_cache=False, logits_to_keep=1), no hooks, same batches",
        },
        "environment": {"torch": torch.__version__, "python": platform.python_version(), "machine": platform.machine(), "processor": platform.processor()},
        "command": " ".join(["python", "benchmarks/identify_throughput.py", *(sys.argv[1:] if argv is None else argv)]),
    }
    lines = [
        f"identify throughput: {args.shape} Llama ({layout.total} neurons), {args.prompts} prompts / {sum(lengths)} tokens, "
        f"batch {args.batch_size}, {args.dtype} on {result['setup']['device']}, {args.threads} thread(s)",
        f"  plain forward        {med['plain']:.3f} s (median of {args.repeats}; full logits {t_full:.3f} s)",
        f"  statistics pass      {med['statistics']:.3f} s",
        f"  AP (all neurons)     {med['ap']:.3f} s",
        f"  ratio (stats+AP)/plain = {result['ratio']:.3f}   (per-repeat median {result['ratio_per_repeat_median']:.3f}; goal ≤ 1.25)",
        f"  correctness filter (greedy 2 tokens + means), separately: {t_filter:.3f} s",
    ]
    print("\n".join(lines))
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({**result, "printed": lines}, indent=2) + "\n", encoding="utf-8")
    return result


if __name__ == "__main__":
    main()
