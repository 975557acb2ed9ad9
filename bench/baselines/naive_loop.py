"""The naive loop of a typical tutorial: every batch padded to max_length, a plain PyTorch loop, no Trainer (on the
GPU if there is one, as a tutorial's `model.to(device)`)."""

from __future__ import annotations

import torch
from peft import LoraConfig, TaskType, get_peft_model
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from bench._common import accelerator
from bench.baselines.peft_trainer import LORA_TARGETS


def train(model_path, texts, labels, num_labels, method, batch_size, max_length, steps, on_step):
    """Train `steps` steps; `on_step(batch)` is called after each optimizer step (for timing and counting)."""
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=num_labels)
    if method == "lora":
        model = get_peft_model(
            model, LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, target_modules=LORA_TARGETS)
        )
    encoded = tokenizer(texts, padding="max_length", truncation=True, max_length=max_length, return_tensors="pt")
    data = torch.utils.data.TensorDataset(encoded["input_ids"], encoded["attention_mask"], torch.tensor(labels))
    loader = torch.utils.data.DataLoader(data, batch_size=batch_size, shuffle=True)
    device = accelerator()  # what a tutorial writes as torch.device("cuda" if available else "cpu")
    model.to(device)
    learning_rate = 2e-3 if method == "lora" else 5e-5  # the recipe's defaults
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
    model.train()
    step = 0
    while step < steps:
        for input_ids, attention_mask, label in loader:
            inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "labels": label}
            loss = model(**{name: tensor.to(device) for name, tensor in inputs.items()}).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            on_step({"input_ids": input_ids, "attention_mask": attention_mask})
            step += 1
            if step == steps:
                return
