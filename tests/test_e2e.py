"""End to end on the real embedded default: `accelerate launch recipes/lora_bert.py`, then plain peft (no
ft_plugin import) loads the result offline in a fresh process with logits identical to `ft_plugin.load`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from ft_plugin.allocator import mimalloc_available

ROOT = Path(__file__).resolve().parents[1]
TEXTS = [
    "@united thanks for the quick rebooking, great crew!",
    "my flight is delayed again, worst airline",
    "boarding now",
]

PLAIN_PEFT = """
import json, sys, torch
from peft import AutoPeftModelForSequenceClassification
from transformers import AutoConfig, AutoTokenizer
out = sys.argv[1]
cfg = AutoConfig.from_pretrained(out)
model = AutoPeftModelForSequenceClassification.from_pretrained(
    out, num_labels=cfg.num_labels, id2label=cfg.id2label, label2id=cfg.label2id).eval()
tokenizer = AutoTokenizer.from_pretrained(out)
with torch.no_grad():
    logits = model(**tokenizer(json.loads(sys.argv[2]), padding=True, return_tensors="pt")).logits
assert not any(name.startswith("ft_plugin") for name in sys.modules), "plain peft only"
print(json.dumps({"logits": logits.tolist(), "labels": [cfg.id2label[i] for i in range(cfg.num_labels)]}))
"""


@pytest.mark.e2e
def test_accelerate_launch_lora_on_the_embedded_default(tmp_path):
    env = {key: value for key, value in os.environ.items() if key != "FT_PLUGIN_ALLOCATOR"}  # as users run it
    env.update(HF_HOME=str(tmp_path / "hf_home"), HF_HUB_OFFLINE="1")
    out = tmp_path / "lora"
    command = [
        sys.executable, "-m", "accelerate.commands.launch", "--config_file", "accelerate_configs/cpu.yaml",
        "recipes/lora_bert.py", "--output_dir", str(out), "--max_train_samples", "640", "--max_eval_samples", "200",
        "--max_predict_samples", "400", "--num_train_epochs", "2",
    ]  # fmt: skip
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stderr[-3000:]
    if mimalloc_available():  # the recipe re-ran itself on mimalloc (ft_plugin/allocator.py)
        assert "Memory allocator: mimalloc" in result.stderr

    metrics = json.loads((out / "all_results.json").read_text())
    majority = 15978 / 37243  # the largest class's share of the corpus (negative)
    assert metrics["test_accuracy"] > majority + 0.08, metrics
    adapter_config = json.loads((out / "adapter_config.json").read_text())
    assert adapter_config["base_model_name_or_path"] == "sentence-transformers/all-MiniLM-L6-v2"
    assert adapter_config["task_type"] == "SEQ_CLS" and "classifier" in adapter_config["modules_to_save"]

    plain = subprocess.run(
        [sys.executable, "-c", PLAIN_PEFT, str(out), json.dumps(TEXTS)], env=env, capture_output=True, text=True
    )
    assert plain.returncode == 0, plain.stderr[-3000:]
    loaded = json.loads(plain.stdout.strip().splitlines()[-1])
    assert loaded["labels"] == ["negative", "neutral", "positive"]

    from ft_plugin import load
    from ft_plugin.inference import TextClassifier

    model = load(out)
    tokenizer = TextClassifier.from_pretrained(out).tokenizer
    with torch.no_grad():
        logits = model(**tokenizer(TEXTS, padding=True, return_tensors="pt")).logits
    torch.testing.assert_close(torch.tensor(loaded["logits"]), logits, rtol=1e-4, atol=1e-5)
