"""Shared fixtures: a tiny random BERT saved as a local model folder, and a small separable text dataset."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
# Entry points (recipes run as __main__, `ft-plugin` main()) re-execute their process on mimalloc: never pytest's.
# The tests that start commands as a user does (test_e2e, test_distributed, test_allocator) set it back.
os.environ["FT_PLUGIN_ALLOCATOR"] = "system"

WORDS = {
    "negative": ["awful", "bad", "terrible", "hate", "broken", "late"],
    "neutral": ["flight", "gate", "seat", "today", "ticket", "bag"],
    "positive": ["great", "love", "thanks", "good", "happy", "best"],
}
FILLER = ["the", "my", "was", "and", "a", "is", "it", "so"]


def accelerate_launch(config: str) -> list[str]:
    """`accelerate launch` with one of the shipped configs (`cpu`, `cpu_ddp`, ...), as a user types it; run from the
    repository root."""
    return [shutil.which("accelerate") or "accelerate", "launch", "--config_file", f"accelerate_configs/{config}.yaml"]


def make_texts(n: int, seed: int = 0) -> list[tuple[str, str]]:
    """`n` (text, label) pairs; each label's texts use that label's words, so the task is learnable."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        label = list(WORDS)[i % 3]
        words = [rng.choice(WORDS[label]) for _ in range(3)] + [rng.choice(FILLER) for _ in range(3)]
        rng.shuffle(words)
        rows.append((" ".join(words), label))
    return rows


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory) -> Path:
    """A 2-layer, hidden-32 BERT with a word-level vocabulary, saved with its tokenizer (random weights)."""
    import torch
    from transformers import BertConfig, BertModel, BertTokenizerFast

    folder = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *FILLER, *(w for ws in WORDS.values() for w in ws)]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")
    BertTokenizerFast(vocab=str(folder / "vocab.txt")).save_pretrained(folder)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,  # deterministic losses
        initializer_range=0.3,  # large random weights keep token information distinct through 2 random layers
    )  # fmt: skip
    model = BertModel(config)
    with (
        torch.no_grad()
    ):  # a pretrained pooler: trained, so its bias is not all zeros (models.untrained_encoder_modules)
        model.pooler.dense.bias.normal_(std=0.3)
    model.save_pretrained(folder)
    return folder


@pytest.fixture()
def attention_masks(monkeypatch) -> list:
    """Every (mask, kept share) that `--cpu_dropout fast` draws for attention probabilities during the test."""
    import ft_plugin.attention as attention

    drawn = []
    draw = attention.keep_mask
    monkeypatch.setattr(attention, "keep_mask", lambda *args: drawn.append(draw(*args)) or drawn[-1])
    return drawn


@pytest.fixture(scope="session")
def tiny_csv(tmp_path_factory) -> Path:
    """A 3-class CSV (text,label) of 240 separable rows."""
    import csv

    path = tmp_path_factory.mktemp("data") / "train.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(make_texts(240))
    return path


@pytest.fixture()
def hf_home(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face cache for the test."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf_home" / "hub"))
    return tmp_path / "hf_home"
