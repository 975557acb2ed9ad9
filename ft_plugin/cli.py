"""The `ft-plugin` console script: a thin layer that parses arguments and calls the library.

ft-plugin methods [--model_name_or_path M]
ft-plugin train --method lora [run_glue-style flags]      (same flags as the recipes)
ft-plugin evaluate --adapter DIR [--test_file F] [--text_pair_column C] [--quantize int8]
ft-plugin predict --adapter DIR "some text" ... | --input_file F [--output_file P] [--quantize int8]
ft-plugin setup                                              (register the embedded model in the HF cache)
ft-plugin space [--port 7860] [--share] [--quantize int8] [--push_as_owner]   (the Gradio Space, from a checkout)
ft-plugin push DIR --repo_id user/name [--private] [--revision B] [--merged]
ft-plugin export DIR --to OUT [--merged]                     (what a push uploads, or a merged standalone model)
ft-plugin select-model --candidates minilm-l6 bert-tiny [--scorer all] [--verify 2]
ft-plugin sweep --methods lora,bitfit,adapter --n_trials 12 [--pruner hyperband] [recipe flags]
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path

from .allocator import use_fast_allocator
from .errors import FtPluginError


def _methods_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model_name_or_path", default=None, help="Base model (default: embedded MiniLM-L6).")
    parser.add_argument("--num_labels", type=int, default=3, help="Head size used for the counts (default 3).")


def _methods(args: argparse.Namespace) -> int:
    """Print every registered method with its trainable parameters on the given base model."""
    from .methods import METHODS, apply_method, count_parameters
    from .models import load_base_model

    base, _ = load_base_model(args.model_name_or_path, [str(i) for i in range(args.num_labels)])
    rows = []
    for name, spec in METHODS.items():
        model = apply_method(copy.deepcopy(base), name, **({"prompt_init_text": ""} if name == "prompt" else {}))
        trainable, total = count_parameters(model)
        rows.append((name, spec.family, f"{trainable:,}", f"{100 * trainable / total:.3f}%", f"{spec.learning_rate:g}"))
    header = ("method", "family", "trainable params", "% of total", "default lr")
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, tuple("-" * w for w in widths), *rows]:
        print("  ".join(str(cell).ljust(width) for cell, width in zip(row, widths)))
    print(f"\nBase model: {base.name_or_path}. Combine methods with '+', e.g. --method lora+bitfit.")
    return 0


def _result_arguments(parser: argparse.ArgumentParser) -> None:
    """The result to load, for `evaluate` and `predict`."""
    parser.add_argument("--adapter", required=True, help="Result folder or Hub repo id.")
    parser.add_argument("--revision", default=None, help="Branch, tag or commit of a Hub repo (default: main).")
    parser.add_argument(
        "--allow_pickle", action="store_true", help="Also load pickled .bin weights (they can run code: trusted only)."
    )
    parser.add_argument(
        "--quantize", choices=["int8"], default=None, help="int8 linear layers: faster CPU prediction, check accuracy."
    )


def _evaluate_arguments(parser: argparse.ArgumentParser) -> None:
    _result_arguments(parser)
    parser.add_argument(
        "--test_file", default=None, help="Labelled file (default: the run's own test split, rebuilt from its record)."
    )
    parser.add_argument("--text_column", default=None)
    parser.add_argument("--text_pair_column", default=None, help="The second texts, for a model trained on pairs.")
    parser.add_argument("--label_column", default=None)
    parser.add_argument("--batch_size", type=int, default=64)


def _evaluate(args: argparse.Namespace) -> int:
    """Accuracy and macro-F1 of a result on a labelled file, or on the test split of the run that saved it."""
    from .data import load_labelled_file, run_test_split
    from .inference import TextClassifier
    from .metrics import classification_metrics
    from .saving import read_record, resolve_result

    if args.batch_size < 1:  # range() or the metric failed, after the model loaded
        raise FtPluginError(f"--batch_size must be at least 1, got {args.batch_size}.")
    classifier = TextClassifier.from_pretrained(
        args.adapter, allow_pickle=args.allow_pickle, quantize=args.quantize, revision=args.revision
    )
    if args.test_file:
        dataset = load_labelled_file(
            args.test_file, args.text_column, args.label_column, classifier.labels, args.text_pair_column
        )
    else:
        dataset = run_test_split(read_record(resolve_result(args.adapter, args.revision)), classifier.labels)
    pairs = dataset["text_pair"][:] if "text_pair" in dataset.column_names else None
    probabilities = classifier.predict_proba(dataset["text"][:], args.batch_size, pairs)
    metrics = classification_metrics(probabilities.argmax(-1).tolist(), dataset["label"][:])
    print(json.dumps({**metrics, "examples": len(dataset)}, indent=2))
    return 0


def _predict_arguments(parser: argparse.ArgumentParser) -> None:
    _result_arguments(parser)
    parser.add_argument("texts", nargs="*", help="Texts to classify.")
    parser.add_argument("--input_file", default=None, help="csv/jsonl/... with a text column.")
    parser.add_argument("--text_column", default=None)
    parser.add_argument("--text_pair_column", default=None, help="The second texts, for a model trained on pairs.")
    parser.add_argument(
        "--output_file", default="predictions.csv", help="Where --input_file predictions go (.csv, .tsv, .jsonl, ...)."
    )
    parser.add_argument("--overwrite_output_file", action="store_true", help="Replace an existing --output_file.")


def check_output_file(input_file: str, output_file: str, overwrite: bool) -> None:
    """Before any work: a folder to write in; never predictions over the input, nor over a file without
    --overwrite_output_file."""
    output = Path(output_file)
    if not output.resolve().parent.is_dir():  # found only after every prediction had run
        raise FtPluginError(
            f"--output_file '{output_file}': the folder '{output.parent}' does not exist: create it first, or choose "
            "another --output_file."
        )
    if not output.exists():
        return
    if output.resolve() == Path(input_file).resolve():
        raise FtPluginError(f"--output_file '{output_file}' is the input file: choose another --output_file.")
    if not overwrite:
        raise FtPluginError(
            f"--output_file '{output_file}' already exists: pass --overwrite_output_file to replace it, or choose "
            "another --output_file."
        )


def _predict(args: argparse.Namespace) -> int:
    """Print the label and probabilities per text, or write a predictions CSV for --input_file."""
    from .data import check_table_format, load_text_file, write_table
    from .inference import TextClassifier

    if not args.texts and not args.input_file:
        raise FtPluginError("Give texts to classify, or --input_file with a text column.")
    if args.input_file:
        check_table_format(args.output_file)
        check_output_file(args.input_file, args.output_file, args.overwrite_output_file)
    classifier = TextClassifier.from_pretrained(
        args.adapter, allow_pickle=args.allow_pickle, quantize=args.quantize, revision=args.revision
    )
    if args.texts:
        for text, scores in zip(args.texts, classifier.predict(args.texts)):
            label = max(scores, key=scores.get)
            print(json.dumps({"text": text, "label": label, "scores": {k: round(v, 4) for k, v in scores.items()}}))
    if args.input_file:
        texts, text_column = load_text_file(args.input_file, args.text_column, args.text_pair_column)
        frame = classifier.predict_frame(texts.to_pandas(), text_column, pair_column=args.text_pair_column)
        write_table(frame, args.output_file)
        print(f"Wrote {len(frame)} predictions to {args.output_file}")
    return 0


def _setup(args: argparse.Namespace) -> int:
    """Register the embedded model in the Hugging Face cache under its Hub id (also done on first use)."""
    from .models import DEFAULT_MODEL, DEFAULT_MODEL_HUB_ID, register_in_hf_cache

    snapshot = register_in_hf_cache(DEFAULT_MODEL)
    print(f"{DEFAULT_MODEL_HUB_ID} is in the Hugging Face cache: {snapshot}")
    return 0


# -- space (issue 5) -------------------------------------------------------------------------------------------
def _space_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--host", default="127.0.0.1", help="Address to serve on (0.0.0.0 to share on a network).")
    parser.add_argument("--port", type=int, default=None, help="Port (default: Gradio's, 7860 or the next free).")
    parser.add_argument("--share", action="store_true", help="Also create a temporary public gradio.live link.")
    parser.add_argument("--quantize", choices=["int8"], default=None, help="Serve int8 linear layers (faster on CPU).")
    parser.add_argument(
        "--push_as_owner",
        action="store_true",
        help="Let the Push tab use this machine's Hub login when no token is given (only for a Space you alone use).",
    )


def _space(args: argparse.Namespace) -> int:
    """Launch the Gradio Space (space/app.py beside the package: a source checkout with `pip install -e .[space]`)."""
    import importlib.util
    from pathlib import Path

    app_file = Path(__file__).resolve().parents[1] / "space" / "app.py"
    if not app_file.is_file() or importlib.util.find_spec("gradio") is None:
        raise FtPluginError(
            "`ft-plugin space` runs space/app.py from a source checkout with gradio: clone the repository and run "
            '`pip install -e ".[space]"` there.'
        )
    if args.quantize:  # read by the app at import, like the Space variable of the same name
        os.environ["FT_PLUGIN_SPACE_QUANTIZE"] = args.quantize
    if args.push_as_owner:
        os.environ["FT_PLUGIN_SPACE_OWNER_PUSH"] = "1"
    spec = importlib.util.spec_from_file_location("ft_plugin_space_app", app_file)
    app = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(app)
    app.launch(server_name=args.host, server_port=args.port, share=args.share)
    return 0


# -- end space ---------------------------------------------------------------------------------------------------


# --- hub (issue 4): push and export a result folder -------------------------------------------------------------
def _push_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output_dir", help="A training result folder (the recipe's --output_dir).")
    parser.add_argument("--repo_id", required=True, help="Hub repo, e.g. your-name/lora-tweets (created if needed).")
    parser.add_argument("--private", action="store_true", help="Make a new repo private (existing repos keep theirs).")
    parser.add_argument("--revision", default=None, help="Push to this branch (created from main if needed).")
    parser.add_argument("--commit_message", default=None)
    parser.add_argument("--merged", action="store_true", help="Push a merged standalone model instead of the adapter.")


def _push(args: argparse.Namespace) -> int:
    """Push a result folder and its model card; the token comes from HF_TOKEN or `hf auth login`."""
    from .hub import push_result

    url = push_result(args.output_dir, args.repo_id, private=args.private, revision=args.revision,
                      commit_message=args.commit_message, merged=args.merged)  # fmt: skip
    print(f"Pushed {args.output_dir} to {url}")
    return 0


def _export_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("output_dir", help="A training result folder.")
    parser.add_argument("--to", required=True, help="The folder to write (with a README.md model card).")
    parser.add_argument("--merged", action="store_true", help="Merge the adapter: a plain transformers model.")
    parser.add_argument("--repo_id", default=None, help="The repo id the card's usage snippet should name.")
    parser.add_argument("--overwrite", action="store_true", help="Write into a --to folder that is not empty.")


def _export(args: argparse.Namespace) -> int:
    """Write what a push would upload into a folder; with --merged, a model `transformers.pipeline` runs."""
    from .hub import export_result

    target = export_result(args.output_dir, args.to, repo_id=args.repo_id, merged=args.merged, overwrite=args.overwrite)
    print(f"Exported {args.output_dir} to {target}")
    return 0


# --- end hub
# --- model selection and sweeps (ft_plugin.select, ft_plugin.search) ---
def _select_model_arguments(parser: argparse.ArgumentParser) -> None:
    from .select import add_select_arguments

    add_select_arguments(parser)


def _select_model(args: argparse.Namespace) -> int:
    from .select import select_command

    return select_command(args)


def _sweep_arguments(parser: argparse.ArgumentParser) -> None:
    from .search import add_sweep_arguments

    add_sweep_arguments(parser)


def _sweep(args: argparse.Namespace) -> int:
    from .search import sweep_command

    return sweep_command(args)


# name -> (help, add_arguments, run). A new subcommand is one entry here.
SUBCOMMANDS = {
    "methods": ("List the methods with their trainable parameters.", _methods_arguments, _methods),
    "evaluate": ("Evaluate a result folder or Hub repo.", _evaluate_arguments, _evaluate),
    "predict": ("Classify texts with a result folder or Hub repo.", _predict_arguments, _predict),
    "setup": ("Register the embedded model in the Hugging Face cache.", lambda parser: None, _setup),
    "space": ("Launch the Gradio Space (predict, train, compare, push).", _space_arguments, _space),
    "push": ("Push a result folder to the Hub with a model card.", _push_arguments, _push),  # hub (issue 4)
    "export": ("Export a result (optionally merged) with its model card.", _export_arguments, _export),  # hub
    "select-model": (
        "Rank candidate base models for a dataset (LogME, kNN, linear probe).",
        _select_model_arguments,
        _select_model,
    ),
    "sweep": ("Optuna search over methods and hyper-parameters, with pruning.", _sweep_arguments, _sweep),
}


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse with its errors on one line, as ft-plugin's others: the usage block is one `--help` away."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help).\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineErrorParser(prog="ft-plugin", description="Delta fine-tuning for text classification.")
    parser.add_argument("--debug", action="store_true", help="Show tracebacks.")
    subparsers = parser.add_subparsers(dest="command", required=True, parser_class=OneLineErrorParser)
    subparsers.add_parser("train", help="Train a method (the recipes' flags; `ft-plugin train --help`).")
    for name, (help_text, add_arguments, _) in SUBCOMMANDS.items():
        add_arguments(subparsers.add_parser(name, help=help_text, description=help_text))
    return parser


def main(argv: list[str] | None = None) -> int:
    if argv is None:  # the `ft-plugin` command itself (not a call from Python): re-run it on mimalloc
        use_fast_allocator()
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:2] == ["--debug", "train"]:  # the global flag, which the recipe reads among its own
        argv = ["train", "--debug", *argv[2:]]
    if argv and argv[0] == "train":  # all of the recipe's flags, parsed by HfArgumentParser
        from .recipe import main as train_main

        train_main(argv[1:])
        return 0
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:  # argparse reports them from the top-level parser, with the top-level usage
        parser.exit(
            2,
            f"ft-plugin {args.command}: error: unrecognized arguments: {' '.join(unknown)} (see ft-plugin {args.command} --help).\n",
        )
    try:
        return SUBCOMMANDS[args.command][2](args)
    except FtPluginError as error:
        if args.debug:
            raise
        print(f"ft-plugin: error: {error}", file=sys.stderr)
        return 2


def run_recipe(method: str) -> None:
    """A recipe script's entry point (`python recipes/lora_bert.py`, `accelerate launch recipes/...`): re-run the
    script on mimalloc, then `ft_plugin.recipe.main` with the script's method and flags."""
    use_fast_allocator()
    from .recipe import main as recipe_main

    recipe_main(method=method)


if __name__ == "__main__":
    sys.exit(main())
