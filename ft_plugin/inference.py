"""Classify texts with any result folder or Hub repo: `TextClassifier.from_pretrained(path).predict(texts)`."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
from torch import nn

from .saving import load, read_record, resolve_result


@dataclass
class TextClassifier:
    """A loaded model and its tokenizer, with batched prediction returning label probabilities."""

    model: nn.Module
    tokenizer: object
    max_length: int = 128

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo: str | os.PathLike,
        model_name_or_path: str | None = None,
        merge: bool = True,
        allow_pickle: bool = False,
    ) -> TextClassifier:
        """Load a result; PEFT reparameterisations (LoRA, IA3, BEFT...) are merged into the base for speed.

        Only safetensors weights are read unless `allow_pickle` (see `ft_plugin.load`).
        """
        from transformers import AutoTokenizer

        folder = resolve_result(str(path_or_repo))
        model = load(folder, model_name_or_path=model_name_or_path, allow_pickle=allow_pickle)
        if merge and hasattr(model, "merge_and_unload") and not model.active_peft_config.is_prompt_learning:
            model = model.merge_and_unload()
        max_length = read_record(folder).get("max_seq_length", 128)
        return cls(model=model, tokenizer=AutoTokenizer.from_pretrained(folder), max_length=max_length)

    @property
    def labels(self) -> list[str]:
        config = self.model.config
        return [config.id2label[i] for i in range(config.num_labels)]

    @torch.inference_mode()
    def predict_proba(self, texts: list[str], batch_size: int = 32) -> torch.Tensor:
        """Probabilities, shape (len(texts), num_labels)."""
        device = next(self.model.parameters()).device
        chunks = []
        for start in range(0, len(texts), batch_size):
            batch = self.tokenizer(
                texts[start : start + batch_size], truncation=True, max_length=self.max_length, padding=True,
                return_tensors="pt",
            ).to(device)  # fmt: skip
            chunks.append(self.model(**batch).logits.float().softmax(-1).cpu())
        return torch.cat(chunks) if chunks else torch.empty(0, len(self.labels))

    def predict(self, texts: list[str], batch_size: int = 32) -> list[dict[str, float]]:
        """One `{label: probability}` mapping per text."""
        probabilities = self.predict_proba(texts, batch_size)
        return [dict(zip(self.labels, row.tolist())) for row in probabilities]

    def predict_frame(self, frame, text_column: str = "text", batch_size: int = 32):
        """A copy of a pandas DataFrame with `label` and one `score_<label>` column per label added."""
        probabilities = self.predict_proba(frame[text_column].tolist(), batch_size)
        frame = frame.copy()
        frame["label"] = [self.labels[i] for i in probabilities.argmax(-1).tolist()]
        for i, label in enumerate(self.labels):
            frame[f"score_{label}"] = probabilities[:, i].numpy().round(4)
        return frame
