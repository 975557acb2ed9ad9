"""Model selection: rank candidate base models for a dataset from frozen features, before any fine-tuning.

Each candidate encodes a sample of the training texts once (no gradient; mean-pooled or [CLS] features), then
established transferability estimators score how well the features separate the labels:

- `logme`: LogME, the log marginal evidence of a Bayesian linear model on the features (You et al., ICML 2021);
- `knn`: cross-validated k-nearest-neighbour accuracy (scikit-learn);
- `linear_probe`: cross-validated logistic-regression accuracy (scikit-learn).

Candidates are short names of models shipped in PyPI packages (`ft_plugin.models.PACKAGED_MODELS`), derived
candidates (`minilm-l6-first3`: the first 3 layers of MiniLM-L6, clearly labelled as derived), local folders and
Hub ids. A candidate that cannot be loaded is skipped with a warning; the rest are ranked.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import numpy as np

from .errors import FtPluginError, HubUnreachableError, ModelError
from .models import PACKAGED_MODELS, ResolvedModel, _load_failure, resolve_model

logger = logging.getLogger(__name__)

DERIVED = re.compile(r"^(?P<base>.+)-first(?P<layers>\d+)$")
# Derived candidates listed by `ft-plugin select-model` when no candidates are given (MiniLM-L6 has 6 layers).
# What to do about a Hub candidate that cannot be downloaded here
CANDIDATE_OFFLINE_FIX = "download it once while online (it is then read from the cache), or pass a local folder."
DEFAULT_CANDIDATES = ["minilm-l6", "minilm-l6-first4", "minilm-l6-first2", "minilm-l6-first1", "bert-tiny"]


# ----------------------------------------------------------------------------------------------- transferability
def logme(features: np.ndarray, labels: np.ndarray) -> float:
    """LogME (You et al., 2021): mean over classes of the per-example log evidence of a one-vs-rest Bayesian
    linear regression on the features, with the prior/noise precisions (alpha, beta) set by evidence maximisation
    (MacKay's fixed point). Higher is better; the value is comparable between models on the same labels."""
    f = np.asarray(features, dtype=np.float64)
    n, d = f.shape
    u, s, vt = np.linalg.svd(f.T @ f)  # eigen-decomposition of the D x D Gram matrix: one SVD for all classes
    evidences = []
    for label in np.unique(labels):
        y = (labels == label).astype(np.float64)
        projected = vt @ (f.T @ y)
        alpha, beta = 1.0, 1.0
        for _ in range(11):  # converges in two or three steps in practice
            gamma = (beta * s / (alpha + beta * s)).sum()
            m = u @ (projected * beta / (alpha + beta * s))
            alpha_denominator = (m * m).sum() + 1e-5
            beta_denominator = ((y - f @ m) ** 2).sum() + 1e-5
            new_alpha, new_beta = gamma / alpha_denominator, (n - gamma) / beta_denominator
            converged = abs(new_alpha / new_beta - alpha / beta) / (alpha / beta) < 0.01
            alpha, beta = new_alpha, new_beta
            if converged:
                break
        evidence = (
            d / 2 * np.log(alpha)
            + n / 2 * np.log(beta)
            - 0.5 * np.log(alpha + beta * s).sum()
            - beta / 2 * beta_denominator
            - alpha / 2 * alpha_denominator
            - n / 2 * np.log(2 * np.pi)
        )
        evidences.append(evidence / n)
    return float(np.mean(evidences))


def _folds(labels: np.ndarray, n_splits: int = 5):
    from sklearn.model_selection import StratifiedKFold

    smallest = int(np.bincount(labels).min()) if len(labels) else 0
    return StratifiedKFold(n_splits=max(2, min(n_splits, smallest)), shuffle=True, random_state=0)


def knn_accuracy(features: np.ndarray, labels: np.ndarray, k: int = 10) -> float:
    """5-fold cross-validated accuracy of a cosine k-nearest-neighbour classifier on the features."""
    from sklearn.model_selection import cross_val_score
    from sklearn.neighbors import KNeighborsClassifier

    knn = KNeighborsClassifier(n_neighbors=min(k, len(labels) // 2), metric="cosine")
    return float(cross_val_score(knn, features, labels, cv=_folds(labels)).mean())


def linear_probe_accuracy(features: np.ndarray, labels: np.ndarray) -> float:
    """5-fold cross-validated accuracy of a logistic regression on standardised features (a linear probe)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=1000, C=1.0))
    return float(cross_val_score(probe, features, labels, cv=_folds(labels)).mean())


# name -> scorer(features, labels) -> score (higher is better). A new estimator is one entry here.
SCORERS: dict[str, Callable[[np.ndarray, np.ndarray], float]] = {
    "logme": logme,
    "knn": knn_accuracy,
    "linear_probe": linear_probe_accuracy,
}


def parse_scorers(scorer: str) -> list[str]:
    """`all`, one scorer name, or a comma-separated list -> scorer names."""
    names = list(SCORERS) if scorer == "all" else [s.strip() for s in scorer.split(",") if s.strip()]
    unknown = [name for name in names if name not in SCORERS]
    if unknown or not names:
        raise FtPluginError(f"Unknown scorer '{','.join(unknown) or scorer}': choose from {', '.join(SCORERS)} or all.")
    return names


# ------------------------------------------------------------------------------------------------------ candidates
@dataclass(frozen=True)
class Candidate:
    """A base model to rank: where it loads from and, for derived candidates, how many layers it keeps."""

    name: str
    path: str
    description: str
    num_layers: int | None = None  # derived candidate: keep only the first `num_layers` transformer layers
    missing: str | None = None  # why it cannot load here (a packaged model whose package is not installed)

    @property
    def derived(self) -> bool:
        return self.num_layers is not None


def resolve_candidate(name: str) -> Candidate:
    """A short name (`minilm-l6`), a derived name (`minilm-l6-first3`), a local folder or a Hub id -> Candidate."""
    match = DERIVED.match(name)
    if match and not Path(name).exists():
        base = resolve_candidate(match["base"])
        layers = int(match["layers"])
        depth = _local_depth(base.path)
        if layers < 1 or (depth is not None and layers >= depth):
            keep = "no layer" if layers < 1 else f"{layers} layers but {base.name} has {depth}"
            fix = "-first1 or more" if depth is None else f"-first1 to -first{depth - 1}"
            raise ModelError(f"Derived candidate '{name}' keeps {keep}: use {fix}.")
        return Candidate(name, base.path, f"derived: first {layers} layers of {base.name}", layers, base.missing)
    if name in PACKAGED_MODELS:
        packaged = PACKAGED_MODELS[name]
        try:
            return Candidate(name, resolve_model(name).path, packaged.description)
        except ModelError as error:  # its package is not installed: skipped when loaded, like an uncached Hub id
            return Candidate(name, "", packaged.description, missing=str(error))
    if "/" not in name and not Path(name).exists():
        raise ModelError(
            f"Unknown candidate '{name}': use a short name ({', '.join(PACKAGED_MODELS)}), a derived name such as "
            f"minilm-l6-first3, a local folder or a Hub id (org/name)."
        )
    try:
        resolved = resolve_model(name)
    except HubUnreachableError as error:  # skipped when loaded, like a missing package; a typo fails now
        return Candidate(name, "", "Hub id", missing=f"{error.problem}: {CANDIDATE_OFFLINE_FIX}")
    return Candidate(name, resolved.path, "local folder" if Path(resolved.path).is_dir() else "Hub id")


def _local_depth(path: str) -> int | None:
    """`num_hidden_layers` of a model folder's config.json, or None when it is not a local folder that says."""
    config = Path(path) / "config.json"
    if not config.is_file():
        return None
    depth = json.loads(config.read_text()).get("num_hidden_layers")
    return depth if isinstance(depth, int) else None


def load_candidate(candidate: Candidate, num_labels: int | None = None):
    """`(model, tokenizer)` of a candidate, offline: the encoder (`AutoModel`), or a sequence classifier with a new
    `num_labels` head. Derived candidates load with `num_hidden_layers` cut (the later layers' weights are unused)."""
    from transformers import AutoModel, AutoModelForSequenceClassification, AutoTokenizer
    from transformers.utils import logging as hf_logging

    if candidate.missing:
        raise ModelError(f"Candidate '{candidate.name}' cannot be loaded: {candidate.missing}")
    overrides = {"num_hidden_layers": candidate.num_layers} if candidate.derived else {}
    if num_labels is not None:
        overrides["num_labels"] = num_labels
    model_class = AutoModel if num_labels is None else AutoModelForSequenceClassification
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()  # unused layer weights and a new head are expected here
    try:
        tokenizer = AutoTokenizer.from_pretrained(candidate.path)
        model = model_class.from_pretrained(candidate.path, use_safetensors=True, **overrides)
    except (OSError, ValueError) as error:
        why = _load_failure(ResolvedModel(candidate.path, candidate.name), error, CANDIDATE_OFFLINE_FIX)
        raise ModelError(f"Candidate '{candidate.name}' cannot be loaded: {why}") from error
    finally:
        hf_logging.set_verbosity(verbosity)
    if tokenizer.pad_token is None and tokenizer.eos_token is not None:
        tokenizer.pad_token = tokenizer.eos_token
    return model, tokenizer


def materialise(candidate: Candidate, folder: str | Path) -> str:
    """A folder `--model_name_or_path` can load: the candidate's own path, or a derived candidate saved (weights
    of the kept layers, tokenizer, config with the new layer count) under `folder/<name>`."""
    if not candidate.derived:
        return candidate.path
    target = Path(folder) / Path(candidate.name).name  # a path or Hub id as name: its last part, inside folder
    if not (target / "config.json").is_file():
        model, tokenizer = load_candidate(candidate)
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)
    return str(target)


# -------------------------------------------------------------------------------------------------------- features
def extract_features(
    model,
    tokenizer,
    texts: list[str],
    pooling: str = "mean",
    batch_size: int = 64,
    max_length: int = 128,
    text_pairs: list[str] | None = None,
) -> np.ndarray:
    """Frozen sentence features: one forward pass per text, mean over tokens (mask-aware) or the first token."""
    return extract_layer_features(model, tokenizer, texts, [None], pooling, batch_size, max_length, text_pairs)[None]


def extract_layer_features(
    model,
    tokenizer,
    texts: list[str],
    layers: list[int | None],
    pooling: str = "mean",
    batch_size: int = 64,
    max_length: int = 128,
    text_pairs: list[str] | None = None,
) -> dict[int | None, np.ndarray]:
    """Features of the hidden states after each of `layers` (None: the model's output), in one forward pass: the
    features of `model` cut to its first k layers are those after layer k (see `reads_as_cut`)."""
    import torch

    if pooling not in ("mean", "cls"):
        raise FtPluginError(f"Unknown pooling '{pooling}': use mean or cls.")
    model.eval()
    order = np.argsort([len(text) for text in texts])  # batches of similar lengths: little padding
    chunks: dict[int | None, list[np.ndarray]] = {layer: [] for layer in layers}
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            index = order[start : start + batch_size]
            pairs = [text_pairs[i] for i in index] if text_pairs else None
            batch = tokenizer(
                [texts[i] for i in index], pairs, padding=True, truncation=True, max_length=max_length,
                return_tensors="pt",
            )  # fmt: skip
            batch = {key: value.to(model.device) for key, value in batch.items()}
            output = model(**batch, output_hidden_states=layers != [None])
            mask = batch["attention_mask"].unsqueeze(-1)
            for layer in layers:
                hidden = output.last_hidden_state if layer is None else output.hidden_states[layer]
                if pooling == "cls":
                    pooled = hidden[:, 0]
                else:
                    weights = mask.to(hidden.dtype)
                    pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1)
                chunks[layer].append(pooled.float().cpu().numpy())
    features = {}
    for layer, pieces in chunks.items():
        features[layer] = np.empty_like(np.concatenate(pieces))
        features[layer][order] = np.concatenate(pieces)
    return features


def reads_as_cut(model, cut, tokenizer) -> bool:
    """Whether `cut` (the model's first k layers) outputs exactly the model's hidden state after layer k, so its
    features can be read from the model's forward pass. True for BERT-like encoders; not where a final norm follows
    the last layer (GPT-2's ln_f), in which case the cut runs its own pass."""
    import torch

    batch = tokenizer(["a short check", "and a second, longer one"], padding=True, return_tensors="pt")
    with torch.inference_mode():
        hidden = model(**batch.to(model.device), output_hidden_states=True).hidden_states
        output = cut(**batch.to(cut.device)).last_hidden_state
    layer = cut.config.num_hidden_layers
    return hidden is not None and len(hidden) > layer and torch.allclose(hidden[layer], output, atol=1e-5)


def shared_passes(candidates: list[Candidate]) -> list[list[Candidate]]:
    """Candidates grouped by the weights they load: in each group the first (the full model, else the deepest cut)
    runs once and the others, its first k layers, read their features from that pass. Input order otherwise."""
    groups: dict[tuple[str, str | None], list[Candidate]] = {}
    for candidate in candidates:  # a packaged model that is not installed has no path: its own cuts join it
        groups.setdefault((candidate.path, candidate.missing), []).append(candidate)
    return [sorted(group, key=lambda c: -(c.num_layers or 10**9)) for group in groups.values()]


# ------------------------------------------------------------------------------------------------------- selection
@dataclass
class CandidateScore:
    """One leaderboard row."""

    candidate: str
    description: str
    params: int
    feature_seconds: float
    features_per_second: float
    scores: dict[str, float] = field(default_factory=dict)
    score_seconds: dict[str, float] = field(default_factory=dict)
    features_from: str | None = None  # a cut of another candidate: its features came from that one's forward pass


def select_models(
    candidates: list[str],
    texts: list[str],
    labels: list[int] | np.ndarray,
    scorers: list[str] | None = None,
    pooling: str = "mean",
    batch_size: int = 64,
    max_length: int = 128,
    text_pairs: list[str] | None = None,
) -> tuple[list[CandidateScore], list[str]]:
    """Score every candidate with every scorer on the same texts. Returns (rows, skipped messages).

    Candidates cut from the same weights (`minilm-l6`, `minilm-l6-first3`, ...) share one forward pass: their
    features are the hidden states after their last kept layer, exactly what the cut model outputs.

    Rows are sorted best first by the first scorer. An unknown candidate name raises `ModelError` at once; a
    candidate that cannot be loaded (e.g. a Hub id that is not in the cache, offline) is skipped with a warning.
    """
    scorers = scorers or list(SCORERS)
    labels = np.asarray(labels)
    if len(np.unique(labels)) < 2:
        raise FtPluginError("Model selection needs at least two labels in the sample: use more examples.")
    resolved = [resolve_candidate(name) for name in candidates]  # a typo fails now, before any model is loaded
    rows, skipped = [], []
    queue = shared_passes(list(dict.fromkeys(resolved)))
    while queue:
        group = queue.pop(0)
        leader = group[0]
        try:
            model, tokenizer = load_candidate(leader)
        except ModelError as error:
            logger.warning("Skipped: %s", error)
            skipped += [str(error) if c is leader else f"Candidate '{c.name}' skipped: {error}" for c in group]
            continue
        params = {leader: sum(p.numel() for p in model.parameters())}
        for candidate in group[1:]:  # loading a cut is quick; running it on every text is what sharing saves
            try:
                cut, _ = load_candidate(candidate)
            except ModelError as error:
                logger.warning("Skipped: %s", error)
                skipped.append(str(error))
                continue
            if reads_as_cut(model, cut, tokenizer):
                params[candidate] = sum(p.numel() for p in cut.parameters())
            else:
                queue.append([candidate])
            del cut
        group = [candidate for candidate in group if candidate in params]
        depth = leader.num_layers or model.config.num_hidden_layers
        started = time.perf_counter()
        features = extract_layer_features(
            model, tokenizer, texts, [None, *(c.num_layers for c in group[1:])], pooling, batch_size, max_length,
            text_pairs,
        )  # fmt: skip
        seconds = time.perf_counter() - started
        for candidate in group:
            shared = candidate is not leader
            row = CandidateScore(
                candidate=candidate.name,
                description=candidate.description,
                params=params[candidate],
                feature_seconds=0.0 if shared else round(seconds, 3),
                features_per_second=round(len(texts) / max(seconds, 1e-9), 1),
                features_from=f"{leader.name}, after layer {candidate.num_layers} of {depth}" if shared else None,
            )
            for scorer in scorers:
                started = time.perf_counter()
                row.scores[scorer] = SCORERS[scorer](features[candidate.num_layers if shared else None], labels)
                row.score_seconds[scorer] = round(time.perf_counter() - started, 3)
            rows.append(row)
        del model
    if not rows:
        raise ModelError("No candidate could be loaded: " + " ".join(skipped))
    rows.sort(key=lambda row: row.scores[scorers[0]], reverse=True)
    return rows, skipped


def leaderboard_table(rows: list[CandidateScore]) -> str:
    """The rows as an aligned text table (rank, candidate, one column per scorer, params, time, features/s)."""
    scorers = list(rows[0].scores) if rows else []
    header = ["rank", "candidate", *scorers, "params", "seconds", "features/s", "description"]
    lines = [
        [str(rank), row.candidate, *(f"{row.scores[s]:.4f}" for s in scorers), f"{row.params / 1e6:.1f}M",
         f"{row.feature_seconds + sum(row.score_seconds.values()):.1f}", f"{row.features_per_second:.0f}",
         row.description + (f"; features from {row.features_from}" if row.features_from else "")]
        for rank, row in enumerate(rows, start=1)
    ]  # fmt: skip
    widths = [max(len(line[i]) for line in [header, *lines]) for i in range(len(header))]
    return "\n".join("  ".join(cell.ljust(width) for cell, width in zip(line, widths)) for line in [header, *lines])


def write_leaderboard(rows: list[CandidateScore], path: str | Path, **extra) -> None:
    """The leaderboard as JSON: `{"rows": [...], **extra}`."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps({**extra, "rows": [asdict(row) for row in rows]}, indent=2))


def run_folder_name(name: str) -> str:
    """A candidate's (or dataset's) name as one folder name for a fine-tuning run: a local path (`/models/bert`) or a
    Hub id (`org/name`) must not send the run into the model's own folder or nest it."""
    return re.sub(r"[^A-Za-z0-9._-]+", "--", name).strip("-.") or "candidate"


def fine_tune(
    model_name_or_path: str,
    method: str,
    data,
    output_dir: str | Path,
    extra_argv: list[str] | None = None,
) -> dict[str, float]:
    """Fine-tune one base model briefly with a method on already loaded data (recipe defaults, no checkpoints,
    no result folder) and return its validation and test metrics plus `train_seconds`."""
    from .recipe import build_trainer, parse_args

    argv = [
        "--model_name_or_path", model_name_or_path, "--method", method, "--output_dir", str(output_dir),
        "--save_strategy", "no", "--eval_strategy", "no", "--load_best_model_at_end", "false",
        "--report_to", "none", "--disable_tqdm", "true", *(extra_argv or []),
    ]  # fmt: skip
    model_args, data_args, method_args, training_args = parse_args(argv)
    trainer = build_trainer(model_args, data_args, method_args, training_args, data=data)
    started = time.perf_counter()
    trainer.train()
    seconds = time.perf_counter() - started
    metrics = trainer.evaluate()
    metrics.update(trainer.evaluate(trainer.ft_test_dataset, metric_key_prefix="test"))
    samples = {"eval_samples": len(trainer.eval_dataset), "test_samples": len(trainer.ft_test_dataset)}
    return {**metrics, **samples, "train_seconds": round(seconds, 2)}


def verify(
    rows: list[CandidateScore],
    top_k: int,
    data,
    method: str,
    output_dir: str | Path,
    extra_argv: list[str] | None = None,
) -> list[dict]:
    """Fine-tune the top `top_k` candidates with `method`; the actual test accuracy beside the predicted rank."""
    results = []
    for rank, row in enumerate(rows[:top_k], start=1):
        candidate = resolve_candidate(row.candidate)
        path = materialise(candidate, Path(output_dir) / "derived_models")
        run_dir = Path(output_dir) / f"verify_{run_folder_name(row.candidate)}"
        metrics = fine_tune(path, method, data, run_dir, extra_argv)
        results.append({"candidate": row.candidate, "predicted_rank": rank, **metrics})
        logger.info("%s (predicted rank %d): test accuracy %.4f", row.candidate, rank, metrics["test_accuracy"])
    return results


MIN_SAMPLES = 10  # fewer texts than this give scores that rank noise


def sample_texts(data, max_samples: int, seed: int = 42) -> tuple[list[str], list[int], list[str] | None]:
    """Up to `max_samples` training texts (shuffled with a fixed seed), their labels and text pairs."""
    train = data.splits["train"].shuffle(seed=seed)
    train = train.select(range(min(max_samples, len(train))))
    return train["text"][:], train["label"][:], train["text_pair"][:] if data.has_pairs else None


# ------------------------------------------------------------------------------------------------------------ CLI
def add_select_arguments(parser) -> None:
    """`ft-plugin select-model` flags."""
    parser.add_argument(
        "--candidates",
        nargs="+",
        default=DEFAULT_CANDIDATES,
        help="Short names (minilm-l6, bert-tiny), derived names (minilm-l6-first3), local folders or Hub ids.",
    )
    parser.add_argument("--scorer", default="all", help=f"{', '.join(SCORERS)}, a comma list, or all (default).")
    parser.add_argument("--train_file", default=None, help="Labelled file (default: the embedded tweets).")
    parser.add_argument("--dataset_name", default=None, help="Hub dataset id (must be in the cache offline).")
    parser.add_argument("--text_column", default=None)
    parser.add_argument("--label_column", default=None)
    parser.add_argument("--max_samples", type=int, default=1000, help="Training texts encoded per candidate.")
    parser.add_argument("--pooling", default="mean", choices=["mean", "cls"])
    parser.add_argument("--max_seq_length", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=64)
    parser.add_argument("--verify", type=int, default=0, help="Fine-tune the top K briefly and report accuracy.")
    parser.add_argument("--verify_method", default="lora", help="Method used by --verify (default lora).")
    parser.add_argument("--verify_epochs", type=float, default=1.0)
    parser.add_argument("--verify_train_samples", type=int, default=2000)
    parser.add_argument(
        "--verify_eval_samples", type=int, default=None, help="Validation and test texts of --verify (default: all)."
    )
    parser.add_argument("--output_dir", default="outputs/select", help="Where selection.json (and runs) go.")


def select_command(args) -> int:
    """Rank the candidates, print the leaderboard, write `selection.json`; with --verify, fine-tune the top K."""
    from .data import DataArguments, load_data

    scorers = parse_scorers(args.scorer)
    if args.verify < 0:
        raise FtPluginError(f"--verify is how many top candidates to fine-tune: 0 or more, got {args.verify}.")
    if args.verify_eval_samples is not None and args.verify_eval_samples < 1:
        raise FtPluginError(f"--verify_eval_samples must be positive, got {args.verify_eval_samples}.")
    if args.max_samples < MIN_SAMPLES:
        raise FtPluginError(
            f"--max_samples {args.max_samples} is too few to score features: use at least {MIN_SAMPLES}."
        )
    for name in args.candidates:  # a typo in a name is reported at once, not after the data has loaded
        resolve_candidate(name)
    data_args = DataArguments(
        dataset_name=args.dataset_name,
        train_file=args.train_file,
        text_column=args.text_column,
        label_column=args.label_column,
        max_seq_length=args.max_seq_length,
    )
    data = load_data(data_args)
    texts, labels, pairs = sample_texts(data, args.max_samples)
    if len(texts) < MIN_SAMPLES:
        raise FtPluginError(
            f"The training split of {data.source} has only {len(texts)} texts: model selection scores features of "
            f"at least {MIN_SAMPLES}; use a larger file."
        )
    rows, skipped = select_models(
        args.candidates, texts, labels, scorers, args.pooling, args.batch_size, args.max_seq_length, pairs
    )
    print(leaderboard_table(rows))
    for message in skipped:
        print(f"skipped: {message}")
    verified = []
    if args.verify > 0:
        extra = ["--num_train_epochs", str(args.verify_epochs), "--max_train_samples", str(args.verify_train_samples)]
        limits = {"max_train_samples": args.verify_train_samples}
        if args.verify_eval_samples:
            extra += ["--max_eval_samples", str(args.verify_eval_samples)]
            extra += ["--max_predict_samples", str(args.verify_eval_samples)]
            limits.update(max_eval_samples=args.verify_eval_samples, max_predict_samples=args.verify_eval_samples)
        data = load_data(replace(data_args, **limits))
        verified = verify(rows, args.verify, data, args.verify_method, args.output_dir, extra)
        for result in verified:
            print(
                f"verify {result['candidate']}: predicted rank {result['predicted_rank']}, "
                f"test accuracy {result['test_accuracy']:.4f}, trained in {result['train_seconds']:.0f}s"
            )
    path = Path(args.output_dir) / "selection.json"
    write_leaderboard(
        rows, path, dataset=data.source, samples=len(texts), pooling=args.pooling, skipped=skipped, verify=verified
    )
    print(f"Wrote {path}")
    return 0
