#!/usr/bin/env python
"""Train relspec-tiny: a small Llama, from scratch, on the synthetic world (CPU).

    python scripts/make_world.py
    python scripts/train_tiny.py --out models/relspec-tiny      # the shipped recipe

Writes a ``LlamaForCausalLM`` + ``tokenizer.json`` folder that ``AutoModelForCausalLM``
and ``AutoTokenizer`` load, and ``training.json`` with the command, seed, hashes of the
world files, the loss log and the final accuracies (P^eva and the never-trained P^eva-2
template). Reproducible: one seed fixes the data order and the initialisation; torch's
CPU kernels are deterministic at a fixed thread count (``--threads``).

The tokenizer is a SentencePiece-style unigram model (``▁`` marks a word start, as in
Llama's): whole pieces for every English word of the templates and of the real-word
objects, and for invented names only their syllables (``▁Ban`` ``un`` ``di``), so every
name is several tokens and no token names an entity. Characters are a fallback.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

import torch  # noqa: E402
from make_world import CODAS, ONSETS, REAL_WORDS, VOWELS, WORLD_DIR  # noqa: E402

from relspec_lmeval.data.relations import build_docs, fill_prompt, is_correct  # noqa: E402
from relspec_lmeval.data.templates import PAPER_RELATIONS  # noqa: E402

SPECIALS = ["<unk>", "<s>", "</s>", "<pad>"]
PUNCTUATION = list("?:.,'!-") + ["'s"]


# ---------------------------------------------------------------- data


def load_world(world: Path) -> dict[str, dict]:
    out = {}
    for relation, spec in PAPER_RELATIONS.items():
        with (world / spec.file).open(encoding="utf-8") as fh:
            out[relation] = json.load(fh)
    return out


def world_hash(world: Path) -> str:
    digest = hashlib.sha256()
    for spec in PAPER_RELATIONS.values():
        digest.update((world / spec.file).read_bytes())
    return digest.hexdigest()


def texts(world: dict[str, dict]) -> list[tuple[str, str, bool]]:
    """Every training text as (context, continuation, loss on the context too).

    Facts: each training template, asked as the paper asks ("… is? Answer: X") and
    stated ("… is X."), loss on the answer only. Relation-neutral sentences (the
    perplexity tasks' sentences, with every object of the relation): loss on all tokens.
    """
    items = []
    for relation, data in world.items():
        for sample in data["samples"]:
            subject, obj = sample["subject"], sample["object"]
            for template in data["training_templates"]:
                items.append((fill_prompt(template, subject), " " + obj, False))
                items.append((template.replace("{}", subject), " " + obj + ".", False))
        sentence = PAPER_RELATIONS[relation].ppl_sentence
        for obj in sorted({s["object"] for s in data["samples"]}):
            head, tail = sentence.split("{}")
            items.append((head.rstrip(), " " + obj + tail, True))
    return items


# ---------------------------------------------------------------- tokenizer


def _words(text: str) -> set[str]:
    return set(re.findall(r"[A-Za-z]+", text))


def build_tokenizer(world: dict[str, dict]):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words: set[str] = {"Answer"}
    for relation, data in world.items():
        spec = PAPER_RELATIONS[relation]
        for template in [*data["training_templates"], *spec.templates, *spec.t2_templates, spec.ppl_sentence]:
            words |= _words(template.replace("{}", ""))
        for sample in data["samples"]:
            # real words of objects and subjects ("guitar", "Mount"); invented names are
            # capitalised syllable strings and must stay several pieces
            for part in (sample["subject"] + " " + sample["object"]).split():
                if not _is_invented(part):
                    words.add(part)
    syllables = [o + v + c for o in ONSETS for v in VOWELS for c in CODAS]
    pieces = [("▁" + w) for w in sorted(words)]
    pieces += ["▁" + s.capitalize() for s in syllables] + syllables + PUNCTUATION
    chars = sorted(set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))
    fallback = [*chars, *("▁" + c for c in chars), "▁"]
    # equal scores: the segmentation with the fewest pieces wins; characters only as a fallback
    vocab = [(s, 0.0) for s in SPECIALS]
    seen = set(SPECIALS)
    for piece, score in [(p, -10.0) for p in pieces] + [(p, -100.0) for p in fallback]:
        if piece not in seen:
            seen.add(piece)
            vocab.append((piece, score))
    tok = Tokenizer(models.Unigram(vocab, unk_id=0, byte_fallback=False))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="always")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="always")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="<pad>",
        model_max_length=64, clean_up_tokenization_spaces=False,
    )


def _is_invented(word: str) -> bool:
    return word not in REAL_WORDS


def encode(tokenizer, items: list[tuple[str, str, bool]]) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids (BOS … EOS) and loss labels (-100 where no loss)."""
    contexts = tokenizer([c for c, _, _ in items], add_special_tokens=True)["input_ids"]
    answers = tokenizer([a for _, a, _ in items], add_special_tokens=False)["input_ids"]
    ids, labels = [], []
    for (_, _, full), ctx, ans in zip(items, contexts, answers):
        seq = ctx + ans + [tokenizer.eos_token_id]
        lab = (seq[1:len(ctx)] if full else [-100] * (len(ctx) - 1)) + ans + [tokenizer.eos_token_id]
        ids.append(seq)
        labels.append([-100] + lab)  # position 0 (BOS) is never predicted
    return ids, labels


def check_tokenizer(tokenizer, world: dict[str, dict]) -> None:
    """Every text round-trips, no <unk>, and every invented name is several tokens."""
    for data in world.values():
        for sample in data["samples"]:
            for text in (sample["subject"], sample["object"]):
                ids = tokenizer(text, add_special_tokens=False)["input_ids"]
                assert tokenizer.unk_token_id not in ids, text
                assert tokenizer.decode(ids) == text, (text, tokenizer.decode(ids))
                for word in text.split():
                    if _is_invented(word):
                        assert len(tokenizer(word, add_special_tokens=False)["input_ids"]) >= 2, word


# ---------------------------------------------------------------- model and training


def build_model(vocab_size: int, args) -> torch.nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=vocab_size, hidden_size=args.hidden, intermediate_size=args.ffn,
        num_hidden_layers=args.layers, num_attention_heads=args.heads, num_key_value_heads=args.heads,
        max_position_embeddings=64, bos_token_id=1, eos_token_id=2, pad_token_id=3,
        tie_word_embeddings=False, attention_dropout=0.0,
    )
    torch.manual_seed(args.seed)
    return LlamaForCausalLM(config)


def _batch(ids, labels, rows, pad_id):
    width = max(len(ids[r]) for r in rows)
    x = torch.full((len(rows), width), pad_id)
    y = torch.full((len(rows), width), -100)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
        x[i, : len(ids[r])] = torch.tensor(ids[r])
        y[i, : len(labels[r])] = torch.tensor(labels[r])
        mask[i, : len(ids[r])] = 1
    return x, y, mask


def train(model, ids, labels, args, pad_id, log) -> None:
    g = torch.Generator().manual_seed(args.seed)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, betas=(0.9, 0.98), weight_decay=args.weight_decay)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=args.lr, total_steps=args.steps, pct_start=0.05)
    # L1 on the FFN activations (down_proj's input): a sparsity lever, 0 = off
    acts: list[torch.Tensor] = []
    hooks = []
    if args.l1 > 0:
        for layer in model.model.layers:
            hooks.append(layer.mlp.down_proj.register_forward_pre_hook(lambda m, a: acts.append(a[0])))
    model.train()
    order = torch.randperm(len(ids), generator=g)
    cursor, start = 0, time.perf_counter()
    for step in range(1, args.steps + 1):
        if cursor + args.batch > len(order):
            order, cursor = torch.randperm(len(ids), generator=g), 0
        rows = order[cursor : cursor + args.batch].tolist()
        cursor += args.batch
        x, y, mask = _batch(ids, labels, rows, pad_id)
        acts.clear()
        out = model(input_ids=x, attention_mask=mask)
        logits = out.logits[:, :-1].reshape(-1, out.logits.size(-1))
        loss = torch.nn.functional.cross_entropy(logits, y[:, 1:].reshape(-1), ignore_index=-100)
        total = loss
        if acts:
            m = mask.unsqueeze(-1).to(acts[0].dtype)
            total = loss + args.l1 * sum((a.abs() * m).sum() / (m.sum() * a.size(-1)) for a in acts)
        opt.zero_grad(set_to_none=True)
        total.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % args.log_every == 0 or step == args.steps:
            entry = {"step": step, "loss": round(loss.item(), 5), "seconds": round(time.perf_counter() - start, 1)}
            log.append(entry)
            print(json.dumps(entry), flush=True)
    for h in hooks:
        h.remove()
    model.eval()


def recall(model, tokenizer, docs: list[dict], batch: int = 128) -> float:
    """Greedy, 2 new tokens, the recall tasks' metric: identification's correctness filter."""
    from relspec_lmeval.identify.activations import generate_with_means
    from relspec_lmeval.identify.correctness import first_line
    from relspec_lmeval.identify.tokens import encode_prompts

    encoded = encode_prompts(tokenizer, [d["prompt"] for d in docs])
    texts, _ = generate_with_means(model, tokenizer, encoded, None, batch_size=batch, progress=False)
    return sum(is_correct(first_line(t), d["golds"]) for t, d in zip(texts, docs)) / max(1, len(docs))


def accuracies(model, tokenizer, world_dir: Path, limit: int | None = None) -> dict[str, dict[str, float]]:
    return {
        relation: {
            name: round(recall(model, tokenizer, build_docs(relation, "eva", ts, data_dir=world_dir)[:limit]), 4)
            for name, ts in (("eva", "main"), ("eva_t2", "t2"))
        }
        for relation in PAPER_RELATIONS
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--world", type=Path, default=WORLD_DIR)
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--layers", type=int, default=6)
    p.add_argument("--hidden", type=int, default=128)
    p.add_argument("--ffn", type=int, default=256)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=0.1)
    p.add_argument("--l1", type=float, default=0.0, help="L1 weight on the FFN activations (0: off)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (the weights depend on it; the shipped run used 1)")
    p.add_argument("--log-every", type=int, default=100)
    p.add_argument("--eval-limit", type=int, default=None, help="P^eva prompts per relation in the final check (default all)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)

    world = load_world(args.world)
    tokenizer = build_tokenizer(world)
    check_tokenizer(tokenizer, world)
    ids, labels = encode(tokenizer, texts(world))
    model = build_model(len(tokenizer), args)
    n_params = sum(p.numel() for p in model.parameters())
    print(f"{len(ids)} training texts, vocab {len(tokenizer)}, {n_params / 1e6:.2f}M parameters", flush=True)

    log: list[dict] = []
    start = time.perf_counter()
    train(model, ids, labels, args, tokenizer.pad_token_id, log)
    seconds = time.perf_counter() - start
    acc = accuracies(model, tokenizer, args.world, args.eval_limit)

    args.out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(args.out)
    tokenizer.padding_side = "right"  # lm-eval and identification pick their own side
    tokenizer.save_pretrained(args.out)
    record = {
        "command": "python scripts/train_tiny.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "arguments": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "world_sha256": world_hash(args.world),
        "torch": torch.__version__,
        "parameters": n_params,
        "training_texts": len(ids),
        "train_seconds": round(seconds, 1),
        "log": log,
        "accuracy": acc,
        "mean_accuracy": {k: round(sum(a[k] for a in acc.values()) / len(acc), 4) for k in ("eva", "eva_t2")},
    }
    (args.out / "training.json").write_text(json.dumps(record, indent=1) + "\n", encoding="utf-8")
    print(json.dumps({"mean_accuracy": record["mean_accuracy"], "train_seconds": record["train_seconds"]}))
    print(json.dumps(acc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
