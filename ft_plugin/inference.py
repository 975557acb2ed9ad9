"""Classify texts with any result folder or Hub repo: `TextClassifier.from_pretrained(path).predict(texts)`; serve
concurrent one-text requests in shared batches with `MicroBatcher`."""

from __future__ import annotations

import os
import queue
import threading
import warnings
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch
from torch import nn

from .errors import DataError, ModelError
from .saving import load, read_record, resolve_result

QUANTIZATIONS = ("int8",)
PREDICTED_LABEL = "predicted_label"  # the column `predict_frame` adds (beside one `score_<label>` per label)


def merge_adapters(model: nn.Module) -> nn.Module:
    """The model with its PEFT reparameterisations (LoRA, DoRA, IA3, BEFT) merged into the base weights. A `PeftModel`
    of one such method is unloaded to the transformers model (`merge_and_unload`); elsewhere each PEFT layer is merged
    in place: a combination such as lora+bitfit loads as a transformers model holding PEFT's layers (left there, int8
    quantization swapped their inner weights and failed), and a prompt method's wrapper stays."""
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTunerLayer

    unwrap_trained_copies(model)
    if isinstance(model, PeftModel) and not model.active_peft_config.is_prompt_learning:
        return model.merge_and_unload()
    for name, module in reversed(list(model.named_modules())):  # innermost first: a layer may wrap another
        if isinstance(module, BaseTunerLayer):
            module.merge()
            parent, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent), child, module.get_base_layer())
    return model


def unwrap_trained_copies(model: nn.Module) -> None:
    """Put each module that PEFT trained as a copy (`modules_to_save`: the head, a pooler) back in place of its
    wrapper. PEFT's own unloading does it for LoRA, but IA3's and BEFT's copy the wrapper's `weight` onto the module
    and fail on a head that has none (RoBERTa's and ELECTRA's `classifier`: AttributeError)."""
    from peft.utils.other import AuxiliaryTrainingWrapper

    for name, module in list(model.named_modules()):
        if isinstance(module, AuxiliaryTrainingWrapper):
            parent, _, child = name.rpartition(".")
            unwrapped = module.unload_and_optionally_merge_module(merge=True, safe_merge=False, adapter_names=None)
            setattr(model.get_submodule(parent), child, unwrapped)


def quantize_int8(model: nn.Module) -> nn.Module:
    """The model with every `nn.Linear` in int8 (PyTorch dynamic quantization): weights stored as int8, activations
    quantized per batch at run time. For CPU serving: about 2x faster on a small BERT here at a small accuracy cost
    (`bench/inference.py` measures both); check yours with `ft-plugin evaluate --quantize int8`."""
    from peft import PeftModel

    if next(model.parameters()).device.type != "cpu":
        raise ModelError("--quantize int8 runs on CPU only: load the model on the CPU, or drop --quantize on a GPU.")
    if isinstance(model, PeftModel) and not model.active_peft_config.is_prompt_learning:
        raise ModelError("--quantize int8 needs the adapter merged into the base: load with merge=True.")
    try:
        from torch.ao.quantization import quantize_dynamic
    except ImportError as error:  # announced for removal in favour of torchao
        raise ModelError(f"--quantize int8 needs torch.ao.quantization, gone in torch {torch.__version__}.") from error
    with warnings.catch_warnings():  # torch 2.10+ flags the torch.ao API as deprecated in favour of torchao
        warnings.simplefilter("ignore")
        return quantize_dynamic(model.eval(), {nn.Linear}, dtype=torch.qint8)


@dataclass
class TextClassifier:
    """A loaded model and its tokenizer, with batched prediction returning label probabilities. Thread-safe: a
    fast tokenizer's truncation/padding settings are shared state, so tokenising is serialised by a lock."""

    model: nn.Module
    tokenizer: object
    max_length: int = 128
    text_pairs: bool = False  # trained on pairs of texts (`--text_pair_column`): each prediction needs both
    _tokenizer_lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @classmethod
    def from_pretrained(
        cls,
        path_or_repo: str | os.PathLike,
        model_name_or_path: str | None = None,
        merge: bool = True,
        allow_pickle: bool = False,
        quantize: str | None = None,
        revision: str | None = None,
    ) -> TextClassifier:
        """Load a result; PEFT reparameterisations (LoRA, IA3, BEFT...) are merged into the base for speed.

        Only safetensors weights are read unless `allow_pickle` (see `ft_plugin.load`). `quantize="int8"` then
        quantizes the linear layers for faster CPU prediction (`quantize_int8`). `revision`: the branch, tag or
        commit of a Hub repo (default: main).
        """
        if quantize not in (None, *QUANTIZATIONS):
            raise ModelError(f"Unknown quantization {quantize!r}: use one of {', '.join(QUANTIZATIONS)}, or none.")
        from transformers import AutoTokenizer

        folder = resolve_result(str(path_or_repo), revision=revision)
        model = load(folder, model_name_or_path=model_name_or_path, allow_pickle=allow_pickle)
        if merge:
            model = merge_adapters(model)
        if quantize == "int8":
            model = quantize_int8(model)
        record = read_record(folder)
        return cls(
            model=model,
            tokenizer=AutoTokenizer.from_pretrained(folder),
            max_length=record.get("max_seq_length", 128),
            text_pairs=bool(record.get("text_pairs")),
        )

    @property
    def labels(self) -> list[str]:
        config = self.model.config
        return [config.id2label[i] for i in range(config.num_labels)]

    @torch.inference_mode()
    def predict_proba(self, texts: list[str], batch_size: int = 32, pairs: list[str] | None = None) -> torch.Tensor:
        """Probabilities, shape (len(texts), num_labels); `pairs`: the second texts of a model trained on pairs."""
        if self.text_pairs and pairs is None:
            raise DataError(
                "This model classifies pairs of texts (it was trained with --text_pair_column): give the second "
                "texts too (--text_pair_column)."
            )
        device = next(self.model.parameters()).device
        chunks = []
        for start in range(0, len(texts), batch_size):
            second = pairs[start : start + batch_size] if pairs is not None else None
            with self._tokenizer_lock:
                batch = self.tokenizer(
                    texts[start : start + batch_size], second, truncation=True, max_length=self.max_length,
                    padding=True, return_tensors="pt",
                ).to(device)  # fmt: skip
            chunks.append(self.model(**batch).logits.float().softmax(-1).cpu())
        return torch.cat(chunks) if chunks else torch.empty(0, len(self.labels))

    def count_tokens(self, text: str) -> int:
        """Tokens in `text` before truncation (special tokens included): more than `max_length` are cut."""
        with self._tokenizer_lock:
            return len(self.tokenizer(text, truncation=False, verbose=False)["input_ids"])  # no "too long" log

    def predict(self, texts: list[str], batch_size: int = 32, pairs: list[str] | None = None) -> list[dict[str, float]]:
        """One `{label: probability}` mapping per text (or pair)."""
        probabilities = self.predict_proba(texts, batch_size, pairs)
        return [dict(zip(self.labels, row.tolist())) for row in probabilities]

    def predict_frame(self, frame, text_column: str = "text", batch_size: int = 32, pair_column: str | None = None):
        """A copy of a pandas DataFrame with `predicted_label` and one `score_<label>` column per label added; its
        own columns (e.g. a gold `label`) are kept as they are. `pair_column`: the second texts of pairs."""
        added = [PREDICTED_LABEL, *(f"score_{label}" for label in self.labels)]
        clashing = [column for column in added if column in frame.columns]
        if clashing:
            raise DataError(
                f"The input already has column(s) {clashing}, which predictions would replace: rename them."
            )
        pairs = frame[pair_column].fillna("").astype(str).tolist() if pair_column else None
        probabilities = self.predict_proba(frame[text_column].tolist(), batch_size, pairs)
        frame = frame.copy()
        frame[PREDICTED_LABEL] = [self.labels[i] for i in probabilities.argmax(-1).tolist()]
        for i, label in enumerate(self.labels):
            frame[f"score_{label}"] = probabilities[:, i].double().numpy().round(4)  # float32 wrote 0.3752999902
        return frame


class MicroBatcher:
    """Dynamic batching for a server: concurrent one-text requests share one forward pass.

    Each request thread calls `predict(text)`; one worker thread takes every request waiting (up to
    `max_batch_size`), classifies them together and hands each caller its own result. A lone request runs at
    once; under load the batch grows, so throughput rises instead of threads competing for the cores. An error
    in a batch (e.g. out of memory) is raised in each of its callers.
    """

    def __init__(self, classifier: TextClassifier, max_batch_size: int = 32):
        self.classifier, self.max_batch_size = classifier, max_batch_size
        self._requests: queue.SimpleQueue = queue.SimpleQueue()
        self._lock, self._closed = threading.Lock(), False
        threading.Thread(target=self._serve, daemon=True, name="ft-plugin-micro-batcher").start()

    def predict(self, text: str, timeout: float | None = None) -> dict[str, float]:
        """`{label: probability}` for one text, computed in a batch with the other waiting requests."""
        result: Future = Future()
        with self._lock:
            queued = not self._closed
            if queued:  # before close(): the worker serves every request queued ahead of its stop signal
                self._requests.put((text, result))
        if not queued:
            return self.classifier.predict([text])[0]
        return result.result(timeout)

    def close(self) -> None:
        """Stop the worker once the queued requests are served; later calls classify in the caller's thread."""
        with self._lock:
            self._closed = True
            self._requests.put(None)

    def _serve(self) -> None:
        while (request := self._requests.get()) is not None:
            batch = [request]
            while len(batch) < self.max_batch_size:
                try:
                    request = self._requests.get_nowait()
                except queue.Empty:
                    break
                if request is None:
                    self._requests.put(None)  # stop after this batch
                    break
                batch.append(request)
            try:
                predictions = self.classifier.predict([text for text, _ in batch], batch_size=self.max_batch_size)
            except Exception as error:  # noqa: BLE001 - handed to every caller of the batch
                for _, result in batch:
                    result.set_exception(error)
            else:
                for (_, result), prediction in zip(batch, predictions):
                    result.set_result(prediction)
