"""The hand-written baseline: the plain Trainer + peft script a user writes from the PEFT docs.

Kept short so anyone can check it is a fair opponent: same model, data, batch size, sequence length, learning
rate, LoRA layers and steps as ft-plugin's recipe; dynamic padding as in the docs; no ft-plugin import.
"""

from __future__ import annotations

from datasets import Dataset
from peft import LoraConfig, TaskType, get_peft_model
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    DataCollatorWithPadding,
    Trainer,
    TrainingArguments,
)

LORA_TARGETS = ["query", "key", "value", "attention.output.dense", "intermediate.dense"]


def build_trainer(model_path, texts, labels, num_labels, method, batch_size, max_length, steps, output_dir, callbacks):
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    model = AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=num_labels)
    if method == "lora":
        # ft-plugin's default layers for BERT, written out: those that read the hidden state
        config = LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=16, target_modules=LORA_TARGETS)
        model = get_peft_model(model, config)
    dataset = Dataset.from_dict({"text": texts, "label": labels})
    dataset = dataset.map(lambda b: tokenizer(b["text"], truncation=True, max_length=max_length), batched=True)
    args = TrainingArguments(
        output_dir=output_dir,
        per_device_train_batch_size=batch_size,
        learning_rate=2e-3 if method == "lora" else 5e-5,
        max_steps=steps,
        report_to="none",
        save_strategy="no",
        logging_strategy="no",
    )
    return Trainer(
        model=model,
        args=args,
        train_dataset=dataset.remove_columns(["text"]),
        data_collator=DataCollatorWithPadding(tokenizer),
        callbacks=callbacks,
    )
