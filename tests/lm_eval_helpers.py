"""Small local lm-eval tasks for tests that must not depend on the relation tasks."""

from __future__ import annotations

import json
from pathlib import Path

SENTENCES = [
    "the ceo of apple is the father of the company",
    "paris is a city in france and europe",
    "she plays the guitar and the piano",
    "the star is part of the constellation",
    "who is the mother of the ceo",
    "tennis is a sport they play in asia",
]


def write_smoke_tasks(folder: Path) -> Path:
    """Two tasks over six sentences: ``relspec_smoke_gen`` (generate_until) and ``relspec_smoke_ppl``."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / "smoke.jsonl"
    data.write_text("".join(json.dumps({"text": s, "prompt": " ".join(s.split()[:4]), "target": " ".join(s.split()[4:])}) + "\n" for s in SENTENCES))
    common = {"dataset_path": "json", "dataset_kwargs": {"data_files": {"test": str(data)}}, "test_split": "test"}
    gen = {
        **common,
        "task": "relspec_smoke_gen",
        "output_type": "generate_until",
        "doc_to_text": "{{prompt}}",
        "doc_to_target": "{{target}}",
        "generation_kwargs": {"until": ["\n"], "max_gen_toks": 3, "do_sample": False},
        "metric_list": [{"metric": "exact_match", "aggregation": "mean", "higher_is_better": True}],
    }
    ppl = {
        **common,
        "task": "relspec_smoke_ppl",
        "output_type": "loglikelihood_rolling",
        "doc_to_text": "",
        "doc_to_target": "{{text}}",
        "metric_list": [{"metric": "word_perplexity"}, {"metric": "byte_perplexity"}, {"metric": "bits_per_byte"}],
    }
    for cfg in (gen, ppl):
        (folder / f"{cfg['task']}.yaml").write_text(json.dumps(cfg, indent=1))  # JSON is valid YAML
    return folder
