"""Every registered method (and some combinations) on a tiny random BERT: builds, trains exactly the intended
weights, the loss falls, and save -> load (ft_plugin and, for PEFT layouts, plain peft) gives identical logits."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import torch

import ft_plugin
from ft_plugin.methods import METHODS, count_parameters, parse_method
from ft_plugin.models import load_base_model
from ft_plugin.saving import save_result

from .conftest import make_texts

LABELS = ["negative", "neutral", "positive"]
HEAD = ("classifier",)

# (method, options, markers: a trainable parameter's name must contain one of these or be the head)
MATRIX = [
    ("full", {}, None),
    ("freeze", {"freeze_trainable_layers": 1}, ("layer.1.", "pooler")),
    ("lora", {"r": 4}, ("lora_",)),
    ("dora", {"r": 4}, ("lora_",)),
    ("adalora", {"init_r": 6, "target_r": 2, "total_step": 30}, ("lora_",)),
    ("ia3", {}, ("ia3_l",)),
    ("bitfit", {}, ("beft_bias",)),
    ("prefix", {"num_virtual_tokens": 4}, ("prompt_encoder",)),
    ("prompt", {"num_virtual_tokens": 4}, ("prompt_encoder",)),
    ("p_tuning", {"num_virtual_tokens": 4}, ("prompt_encoder",)),
    ("adapter", {"reduction_factor": 4}, ("bottleneck_adapter",)),
    ("intrinsic_prompt", {"num_virtual_tokens": 4, "intrinsic_dim": 8}, ("intrinsic_z",)),
    ("lora+bitfit", {"lora_r": 4}, ("lora_", "beft_bias")),
    ("freeze+lora", {"freeze_trainable_layers": 1}, ("layer.1.", "pooler", "lora_")),
    ("adapter+prefix+lora", {"num_virtual_tokens": 4}, ("bottleneck_adapter", "prompt_encoder", "lora_")),
    ("bitfit+adapter+intrinsic_prompt", {"num_virtual_tokens": 4}, ("beft_bias", "bottleneck_adapter", "intrinsic_z")),
    ("prompt+lora+bitfit", {"num_virtual_tokens": 4, "lora_r": 4}, ("prompt_encoder", "lora_", "beft_bias")),
]
IDS = [row[0] for row in MATRIX]


def test_every_registered_method_is_in_the_matrix():
    assert set(METHODS) <= set(IDS)


def _batch(tokenizer, n=24):
    texts, labels = zip(*make_texts(n, seed=1))
    batch = tokenizer(list(texts), padding=True, return_tensors="pt")
    batch["labels"] = torch.tensor([LABELS.index(label) for label in labels])
    return batch


def _build(tiny_model_dir, method, options):
    torch.manual_seed(0)
    base, tokenizer = load_base_model(str(tiny_model_dir), LABELS)
    return ft_plugin.apply(base, method, **options), tokenizer


@pytest.mark.parametrize("method,options,markers", MATRIX, ids=IDS)
def test_only_the_method_weights_and_head_train(tiny_model_dir, method, options, markers):
    model, _ = _build(tiny_model_dir, method, options)
    trainable = [name for name, p in model.named_parameters() if p.requires_grad]
    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    assert any("classifier" in name for name in trainable), "the new head must always train"
    if markers is None:
        assert not frozen
        return
    assert all(any(m in name for m in markers + HEAD) for name in trainable), trainable
    for marker in markers:
        assert any(marker in name for name in trainable), f"nothing trains for {marker}"
    assert any("attention.self.query" in name for name in frozen), "base weights must stay frozen"
    assert all(".original_module." not in name for name in trainable)


@pytest.mark.parametrize("method,options,markers", MATRIX, ids=IDS)
def test_loss_falls_and_save_load_round_trip(tiny_model_dir, tmp_path, method, options, markers):
    model, tokenizer = _build(tiny_model_dir, method, options)
    batch = _batch(tokenizer)
    lr = 3 * min(spec.learning_rate for spec in parse_method(method))  # a fixed batch: learn it fast
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for _ in range(25):
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0], losses

    save_result(model, tmp_path, tokenizer)
    model.eval()
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        expected = model(**inputs).logits
        loaded = ft_plugin.load(tmp_path)
        assert count_parameters(loaded)[1] > 0
        torch.testing.assert_close(loaded(**inputs).logits, expected, rtol=1e-4, atol=1e-5)

    if (tmp_path / "adapter_config.json").is_file():  # a PEFT layout: plain peft loads it as documented
        from peft import AutoPeftModelForSequenceClassification
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(tmp_path)
        plain = AutoPeftModelForSequenceClassification.from_pretrained(
            tmp_path, num_labels=config.num_labels, id2label=config.id2label, label2id=config.label2id
        ).eval()
        with torch.no_grad():
            torch.testing.assert_close(plain(**inputs).logits, expected, rtol=1e-4, atol=1e-5)


def test_apply_accepts_short_and_prefixed_option_names(tiny_model_dir):
    short, _ = _build(tiny_model_dir, "lora", {"r": 4})
    prefixed, _ = _build(tiny_model_dir, "lora", {"lora_r": 4})
    assert count_parameters(short) == count_parameters(prefixed)
    assert short.peft_config["default"].r == 4


@pytest.mark.parametrize("method,spelling", [("lora", "all-linear"), ("ia3", "all-linear"), ("bitfit", "all-linear"),
                                            ("lora", "ALL_LINEAR")])  # fmt: skip
def test_all_linear_adapts_every_linear_layer_but_the_head(tiny_model_dir, method, spelling):
    """PEFT's `target_modules="all-linear"` shorthand works from the command line's list form too, and so does the
    underscore spelling of a flag-like name."""
    model, _ = _build(tiny_model_dir, method, {"target_modules": [spelling]})
    adapted = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if hasattr(module, "base_layer")}
    assert adapted == {"query", "key", "value", "dense"}  # the head is trained whole, not adapted


@pytest.mark.parametrize(
    "targets,expected",
    [("all-linear", {"query", "key", "value", "dense"}), (r".*\.self\.(query|value)", {"query", "value"})],
)
def test_target_modules_as_one_string_is_peft_s_shorthand_or_regular_expression(tiny_model_dir, targets, expected):
    """In Python, PEFT takes one string as `all-linear` or a regular expression; it was split into characters."""
    model, _ = _build(tiny_model_dir, "lora", {"target_modules": targets})
    adapted = {name.rsplit(".", 1)[-1] for name, module in model.named_modules() if hasattr(module, "base_layer")}
    assert adapted == expected


def test_an_options_own_name_in_a_combination_is_not_also_another_methods_short_name(tiny_model_dir):
    """`target_modules` is LoRA's field; it was also sent to the adapter as `adapter_target_modules` (a regex)."""
    model, _ = _build(tiny_model_dir, "adapter+lora", {"target_modules": ["query", "value"]})
    assert model.ft_plugin_configs["lora"].target_modules == ["query", "value"]
    assert model.ft_plugin_configs["adapter"].adapter_target_modules is None  # its default placement
    assert {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if hasattr(m, "lora_A")} == {"query", "value"}


@pytest.mark.parametrize("method", ["lora", "lora+bitfit", "dora"])
def test_lora_adapts_the_block_layers_that_read_the_hidden_state_by_default(tiny_model_dir, method):
    """Query, key, value, attention output and feed-forward up projection of every block; not the feed-forward
    down projection (its input is 2x wider here), the pooler or the head. Inside a combination too, where BitFit
    has wrapped the layers first."""
    model, _ = _build(tiny_model_dir, method, {})
    adapted = {
        name.split(".layer.", 1)[1].split(".", 1)[1]
        for name, module in model.named_modules()
        if hasattr(module, "lora_A") and len(module.lora_A)
    }
    expected = {"attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense"}
    assert adapted == expected | {"intermediate.dense"}
    layers = {name.split(".layer.", 1)[1].split(".", 1)[0] for name, m in model.named_modules() if hasattr(m, "lora_A")}
    assert layers == {"0", "1"}


def test_hidden_state_targets_name_each_layer_once_or_in_full_when_a_suffix_would_reach_another():
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    from ft_plugin.methods.peft_tuners import hidden_state_targets

    config = DistilBertConfig(vocab_size=50, dim=16, hidden_dim=32, n_layers=2, n_heads=2)
    targets = hidden_state_targets(DistilBertForSequenceClassification(config))
    assert targets == ["attention.k_lin", "attention.out_lin", "attention.q_lin", "attention.v_lin", "ffn.lin1"]

    class Blocks(torch.nn.Module):  # `dense` in the blocks, and a head layer also called `dense`
        def __init__(self):
            super().__init__()
            self.config = type("Config", (), {"hidden_size": 8})()
            self.layers = torch.nn.ModuleList(torch.nn.ModuleDict({"dense": torch.nn.Linear(8, 8)}) for _ in range(2))
            self.head = torch.nn.ModuleDict({"dense": torch.nn.Linear(8, 8)})

    assert hidden_state_targets(Blocks()) == ["layers.0.dense", "layers.1.dense"]
    assert hidden_state_targets(torch.nn.Sequential(torch.nn.Linear(4, 4))) is None  # no config: PEFT's default


def test_prompt_init_text_reads_the_packaged_tokenizer_not_the_hub(monkeypatch):
    """The embedded base is named by its Hub id; its tokenizer comes from the package folder (offline, the Hub id
    cost ~90 s of retries), while the saved config still names the Hub id."""
    import transformers

    from ft_plugin.models import DEFAULT_MODEL_HUB_ID

    base, _ = load_base_model(None, LABELS)
    asked = []
    original = transformers.AutoTokenizer.from_pretrained
    monkeypatch.setattr(
        transformers.AutoTokenizer, "from_pretrained", lambda name, **kw: asked.append(name) or original(name, **kw)
    )
    model = ft_plugin.apply(base, "prompt", prompt_init_text="classify the sentiment of this tweet")
    assert len(asked) == 1 and Path(asked[0]).is_dir()
    assert model.peft_config["default"].tokenizer_name_or_path == DEFAULT_MODEL_HUB_ID


def test_prompt_tuning_on_a_model_built_in_code_needs_a_random_start_or_a_tokenizer():
    """PEFT's raw ValueError ("tokenizer_name_or_path can't be .") became one line naming both ways out."""
    from transformers import BertConfig, BertForSequenceClassification

    config = BertConfig(vocab_size=30, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32)
    with pytest.raises(
        ft_plugin.MethodError, match='names no tokenizer: load it with from_pretrained, or pass prompt_init_text=""'
    ):
        ft_plugin.apply(BertForSequenceClassification(config), "prompt")
    model = ft_plugin.apply(BertForSequenceClassification(config), "prompt", prompt_init_text="")
    assert model.peft_config["default"].prompt_tuning_init == "RANDOM"


def _tiny_distilbert():
    from transformers import DistilBertConfig, DistilBertForSequenceClassification

    config = DistilBertConfig(vocab_size=50, dim=16, hidden_dim=32, n_layers=2, n_heads=2, num_labels=3)
    return DistilBertForSequenceClassification(config)


def _tiny_albert():
    from transformers import AlbertConfig, AlbertForSequenceClassification

    config = AlbertConfig(
        vocab_size=50, embedding_size=8, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=32, num_labels=3,
    )  # fmt: skip
    return AlbertForSequenceClassification(config)


@pytest.mark.parametrize("build", [_tiny_distilbert, _tiny_albert])
@pytest.mark.parametrize("method", ["prompt", "p_tuning", "intrinsic_prompt", "lora+intrinsic_prompt"])
def test_prompt_methods_read_the_models_sizes_under_its_own_names(method, build):
    """DistilBERT's config says `dim`, `n_layers`, `n_heads`: PEFT found no `hidden_size` and asked for `token_dim`.
    ALBERT's word embeddings (8 wide here) are narrower than its hidden size (16): the prompt takes theirs."""
    import torch

    options = {"prompt_init_text": ""} if method == "prompt" else {}
    model = ft_plugin.apply(build(), method, **options)
    ids = torch.randint(5, 50, (2, 6))
    model(input_ids=ids, attention_mask=torch.ones_like(ids), labels=torch.tensor([0, 2])).loss.backward()
    trained = [p for p in model.parameters() if p.requires_grad]
    assert trained and all(p.grad is not None for p in trained)


def test_prefix_tuning_is_refused_in_one_line_on_a_model_without_past_key_values():
    """PEFT raised its ValueError only at the first forward pass, mid-training."""
    with pytest.raises(
        ft_plugin.MethodError, match="DistilBertForSequenceClassification does not take: choose another"
    ):
        ft_plugin.apply(_tiny_distilbert(), "prefix")


def test_the_embedded_models_never_trained_pooler_trains_with_the_head():
    """all-MiniLM-L6-v2 (sentence-transformers) was trained through mean pooling: its pooler is the initial one
    (bias all zeros). LoRA's default count rises by the pooler's 147,840 weights, to 1.69 % of the model."""
    base, _ = load_base_model(None, LABELS)
    assert base.ft_plugin_untrained_modules == ["bert.pooler.dense"]
    model = ft_plugin.apply(base, "lora")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad and "pooler" in n]
    assert sorted(trainable) == [f"base_model.model.bert.pooler.dense.modules_to_save.default.{p}" for p in ("bias", "weight")]  # fmt: skip
    assert count_parameters(model)[0] == 240_771 + 384 * 384 + 384


@pytest.mark.parametrize(
    "method,options,message",
    [
        ("nope", {}, "Unknown method 'nope': choose from full, freeze, lora"),
        ("lora+ia3", {}, "'lora' and 'ia3' cannot be combined"),
        ("prefix+prompt", {}, "'prefix' and 'prompt' cannot be combined"),
        ("full+lora", {}, "'full' cannot be combined"),
        ("lora+lora", {}, "names a method twice"),
        ("lora", {"r": 0}, "--lora_r must be a positive rank"),
        ("lora", {"rank": 4}, "Unknown option(s) ['rank']"),
        ("lora", {"target_modules": ["classifier"]}, "linear layers: dense, key, query, value (or all-linear)."),
        ("adapter", {"adapter_target_modules": "nothing$"}, "No linear layer matches the adapter pattern"),
        ("adapter", {"placement": "middle"}, "--adapter_placement must be one of"),
    ],
)
def test_bad_method_input_is_one_clear_error(tiny_model_dir, method, options, message):
    with pytest.raises(ft_plugin.MethodError) as error:
        _build(tiny_model_dir, method, options)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


@pytest.fixture(scope="module")
def tiny_mlm_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny BERT saved as a masked-LM checkpoint: no pooler weights, like bert-tiny (SPLADE)."""
    import shutil

    from transformers import BertConfig, BertForMaskedLM

    folder = tmp_path_factory.mktemp("tiny-mlm")
    for name in ("vocab.txt", "tokenizer.json", "tokenizer_config.json"):
        if (tiny_model_dir / name).is_file():
            shutil.copy(tiny_model_dir / name, folder / name)
    torch.manual_seed(0)
    BertForMaskedLM(BertConfig.from_pretrained(tiny_model_dir)).save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
def tiny_untrained_pooler_dir(tiny_model_dir, tmp_path_factory) -> Path:
    """The tiny BERT with its pooler as sentence-transformers checkpoints hold it: present, never trained (zero bias)."""
    import shutil

    from safetensors.torch import load_file, save_file

    folder = tmp_path_factory.mktemp("tiny-untrained-pooler")
    shutil.copytree(tiny_model_dir, folder, dirs_exist_ok=True)
    weights = load_file(folder / "model.safetensors")
    save_file({**weights, "pooler.dense.bias": torch.zeros(32)}, folder / "model.safetensors", {"format": "pt"})
    return folder


def test_only_a_pooler_the_checkpoint_never_trained_counts_as_untrained(tiny_model_dir, tiny_untrained_pooler_dir):
    """The zero biases inside the transformer blocks (BERT's initialisation, kept by this random model) do not count:
    only linear layers outside the blocks."""
    assert load_base_model(str(tiny_model_dir), LABELS)[0].ft_plugin_untrained_modules == []
    base = load_base_model(str(tiny_untrained_pooler_dir), LABELS)[0]
    assert base.ft_plugin_untrained_modules == ["bert.pooler.dense"]
    assert base.ft_plugin_new_modules == []


def test_a_model_the_caller_loaded_trains_its_never_trained_pooler_too(tiny_untrained_pooler_dir):
    from transformers import AutoModelForSequenceClassification

    base = AutoModelForSequenceClassification.from_pretrained(tiny_untrained_pooler_dir, num_labels=3)
    model = ft_plugin.apply(base, "lora", r=4)
    assert "bert.pooler.dense" in model.peft_config["default"].modules_to_save
    assert [n for n, p in model.named_parameters() if p.requires_grad and "pooler" in n and "modules_to_save" in n]


@pytest.mark.parametrize("checkpoint", ["tiny_mlm_dir", "tiny_untrained_pooler_dir"])
@pytest.mark.parametrize("method,options,markers", MATRIX, ids=IDS)
def test_a_checkpoint_without_a_trained_pooler_trains_and_saves_it_so_every_load_predicts_the_same(
    request, tmp_path, checkpoint, method, options, markers
):
    """The pooler a checkpoint lacks is drawn at random at each load, and one it never trained is a random projection:
    either must be trained and saved like the head (else `predict` gave other probabilities on every call, or the
    method classified through a projection it could not change)."""
    model, tokenizer = _build(request.getfixturevalue(checkpoint), method, options)
    pooler = [(n, p) for n, p in model.named_parameters() if p.requires_grad and "pooler" in n and n.endswith(("weight", "bias"))]  # fmt: skip
    assert len(pooler) == 2, pooler  # weight and bias: one copy, the one in use
    with torch.no_grad():
        for _, parameter in pooler:  # as training would change them
            parameter.add_(torch.randn_like(parameter))
    save_result(model, tmp_path, tokenizer)
    inputs = {k: v for k, v in _batch(tokenizer).items() if k != "labels"}
    with torch.no_grad():
        expected = model.eval()(**inputs).logits
        for seed in (1, 2):  # the loads draw different random poolers, which the saved one must replace
            torch.manual_seed(seed)
            torch.testing.assert_close(ft_plugin.load(tmp_path)(**inputs).logits, expected, rtol=1e-4, atol=1e-5)
        if (tmp_path / "adapter_config.json").is_file():  # plain peft restores it too (`modules_to_save`)
            from peft import AutoPeftModelForSequenceClassification

            plain = AutoPeftModelForSequenceClassification.from_pretrained(tmp_path, num_labels=len(LABELS)).eval()
            torch.testing.assert_close(plain(**inputs).logits, expected, rtol=1e-4, atol=1e-5)


def test_a_result_saved_before_the_pooler_was_kept_still_loads_with_a_warning(tiny_mlm_dir, tmp_path, caplog):
    from safetensors.torch import load_file, save_file

    model, tokenizer = _build(tiny_mlm_dir, "adapter+prefix+lora", {"num_virtual_tokens": 4})
    save_result(model, tmp_path, tokenizer)
    weights = load_file(tmp_path / "delta_model.safetensors")
    save_file({k: v for k, v in weights.items() if "pooler" not in k}, tmp_path / "delta_model.safetensors")
    assert ft_plugin.load(tmp_path) is not None
    assert "predates saving bert.pooler.dense" in caplog.text and "train it again" in caplog.text


def test_a_result_saved_before_the_untrained_pooler_was_trained_loads_with_the_checkpoints_pooler(
    tiny_untrained_pooler_dir, tmp_path, caplog
):
    """It trained with the checkpoint's pooler, which every load gives back: no warning, the same logits."""
    from safetensors.torch import load_file, save_file

    model, tokenizer = _build(tiny_untrained_pooler_dir, "bitfit+adapter", {})
    save_result(model, tmp_path, tokenizer)
    weights = load_file(tmp_path / "delta_model.safetensors")
    earlier = {k: v for k, v in weights.items() if not re.search(r"pooler\.dense\.(base_layer\.)?(weight|bias)$", k)}
    assert len(weights) - len(earlier) == 2  # the pooler's own weights; BitFit's bias offset on it stays
    save_file(earlier, tmp_path / "delta_model.safetensors")
    inputs = {k: v for k, v in _batch(tokenizer).items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(ft_plugin.load(tmp_path)(**inputs).logits, model.eval()(**inputs).logits)
    assert "predates" not in caplog.text


def test_an_intrinsic_prompt_result_saved_with_the_pooler_frozen_loads_as_it_trained(
    tiny_untrained_pooler_dir, tmp_path, caplog
):
    """Intrinsic prompt tuning kept the never-trained pooler frozen until its head's rate was capped: such a PEFT
    result (the pooler not in `modules_to_save`) loads with the checkpoint's pooler, the one it trained with."""
    torch.manual_seed(0)
    base, tokenizer = load_base_model(str(tiny_untrained_pooler_dir), LABELS)
    base.ft_plugin_untrained_modules = []  # the earlier rule for this method
    model = ft_plugin.apply(base, "intrinsic_prompt", num_virtual_tokens=4)
    save_result(model, tmp_path, tokenizer)
    assert "bert.pooler.dense" not in json.loads((tmp_path / "adapter_config.json").read_text())["modules_to_save"]
    inputs = {k: v for k, v in _batch(tokenizer).items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(ft_plugin.load(tmp_path)(**inputs).logits, model.eval()(**inputs).logits)
    assert "predates" not in caplog.text


def test_saved_files_get_the_permissions_of_a_plain_open(tiny_model_dir, tmp_path):
    """safetensors writes through a private temporary file (0600): others sharing the machine could not read it."""
    import os

    model, tokenizer = _build(tiny_model_dir, "lora", {"r": 4})
    save_result(model, tmp_path / "result", tokenizer)
    (tmp_path / "plain").write_text("")
    expected = (tmp_path / "plain").stat().st_mode & 0o777
    modes = {path.name: path.stat().st_mode & 0o777 for path in (tmp_path / "result").iterdir() if path.is_file()}
    assert modes and all(mode == expected for mode in modes.values()), (oct(expected), modes)
    assert os.access(tmp_path / "result" / "adapter_model.safetensors", os.R_OK)


@pytest.mark.parametrize("first,second", [("lora", "freeze"), ("lora", "adapter"), ("adapter", "lora")])
def test_a_result_of_another_layout_saved_over_one_replaces_it_whole(tiny_model_dir, tmp_path, first, second):
    """`--overwrite_output_dir` with another method: the PEFT files of the old result used to stay (LoRA's
    adapter_config.json beside a full model), so the folder no longer loaded, not even with transformers."""
    old_model, tokenizer = _build(tiny_model_dir, first, {})
    save_result(old_model, tmp_path, tokenizer)
    model, tokenizer = _build(tiny_model_dir, second, {})
    save_result(model, tmp_path, tokenizer)
    written = {path.name for path in tmp_path.iterdir()}
    assert ("adapter_config.json" in written) == (second == "lora"), written
    inputs = {k: v for k, v in _batch(tokenizer).items() if k != "labels"}
    with torch.no_grad():
        torch.testing.assert_close(ft_plugin.load(tmp_path)(**inputs).logits, model.eval()(**inputs).logits)


def test_a_checkpoint_with_legacy_names_is_saved_under_the_models_own_names(tiny_model_dir, tmp_path):
    """bert-tiny names its LayerNorms `gamma`/`beta`; transformers 5 saved models under those names again, but the
    Trainer loads its checkpoints (resume, load best) without renaming, which left every LayerNorm untrained."""
    import shutil

    from safetensors.torch import load_file, save_file

    legacy = tmp_path / "legacy"
    shutil.copytree(tiny_model_dir, legacy)
    weights = load_file(legacy / "model.safetensors")
    renamed = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v for k, v in weights.items()}  # fmt: skip
    assert renamed.keys() != weights.keys()
    save_file(renamed, legacy / "model.safetensors", metadata={"format": "pt"})

    model = ft_plugin.apply(load_base_model(str(legacy), LABELS)[0], "full")
    model.save_pretrained(tmp_path / "checkpoint")  # what the Trainer does at each checkpoint
    saved = load_file(tmp_path / "checkpoint" / "model.safetensors")
    assert not [key for key in saved if key.endswith(("gamma", "beta"))]
    model.load_state_dict(saved, strict=True)  # what the Trainer does on resume: every weight found


def test_an_earlier_combinations_pooler_copies_load_as_the_copy_its_forward_pass_used():
    """Combinations used to wrap a new module in a PEFT copy per member; the forward pass used the copy of the
    only member with one (PEFT made it active), else the original (its several copies all inactive)."""
    from ft_plugin.saving import _unwrapped_new_modules

    def old_file(*adapters):
        names = ["original_module", *(f"modules_to_save.{a}" for a in adapters)]
        return {f"bert.pooler.dense.{n}.{p}": torch.full((1,), i) for i, n in enumerate(names) for p in ("weight", "bias")}  # fmt: skip

    plain = {"bert.pooler.dense.weight", "bert.pooler.dense.bias"}
    adapted = {"bert.pooler.dense.base_layer.weight", "bert.pooler.dense.base_layer.bias"}  # e.g. BitFit on it
    assert _unwrapped_new_modules(old_file("lora"), plain)["bert.pooler.dense.weight"].item() == 1  # the copy
    assert _unwrapped_new_modules(old_file("lora", "default"), plain)["bert.pooler.dense.weight"].item() == 1
    loaded = _unwrapped_new_modules(old_file("beft", "lora"), adapted)  # two members: the original
    assert loaded.keys() == adapted and loaded["bert.pooler.dense.base_layer.bias"].item() == 0
    today = {"bert.pooler.dense.weight": torch.ones(1)}  # a result of today is read as it is
    assert _unwrapped_new_modules(today, plain) == today


@pytest.mark.parametrize("train_projection", [False, True])
def test_an_intrinsic_prompt_comes_back_exactly_from_its_saved_projected_form(tiny_model_dir, train_projection):
    """Checkpoints hold PEFT's form, the projected prompt: loading it (resume, load best) gives back that prompt,
    through `z` alone with the fixed projection."""
    from ft_plugin.methods.intrinsic_prompt import IntrinsicPromptArguments, IntrinsicPromptEmbedding

    embeddings = load_base_model(str(tiny_model_dir), LABELS)[0].get_input_embeddings()
    config = IntrinsicPromptArguments(
        num_virtual_tokens=4, intrinsic_dim=8, intrinsic_train_projection=train_projection
    )
    trained, fresh = IntrinsicPromptEmbedding(embeddings, config), IntrinsicPromptEmbedding(embeddings, config)
    with torch.no_grad():
        trained.intrinsic_z.normal_()
        if train_projection:
            trained.projection.add_(0.1 * torch.randn_like(trained.projection))  # outside fresh's subspace
        saved = {"weight": trained.weight.detach().clone()}
    fresh.load_state_dict(saved)
    torch.testing.assert_close(fresh.weight, saved["weight"], rtol=1e-4, atol=1e-5)
    if not train_projection:
        torch.testing.assert_close(fresh.intrinsic_z, trained.intrinsic_z, rtol=1e-3, atol=1e-4)
        assert fresh.residual.abs().max() < 1e-4
    fresh.load_state_dict(
        {"intrinsic_z": torch.zeros(8), **({"projection": fresh.projection} if train_projection else {})}
    )
    torch.testing.assert_close(fresh.weight, fresh.start)  # a later load of the subspace form drops the residual


def test_target_module_hints_leave_out_every_head_layer():
    """RoBERTa's head is `classifier.dense` + `classifier.out_proj`: `out_proj` exists only there."""
    from transformers import RobertaConfig, RobertaForSequenceClassification

    from ft_plugin.methods.peft_tuners import linear_layer_names

    config = RobertaConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    names = linear_layer_names(RobertaForSequenceClassification(config))
    assert names == ["dense", "key", "query", "value"]


@pytest.mark.parametrize(
    ("method", "learning_rate", "head_rate"),
    [("prompt", 3e-2, 1e-2), ("intrinsic_prompt", 1e-1, 1e-2), ("lora", 2e-3, 2e-3)],
)
def test_the_head_and_a_never_trained_pooler_learn_at_most_at_1e_2(
    tiny_untrained_pooler_dir, tiny_csv, tmp_path, method, learning_rate, head_rate
):
    """At the prompt methods' own rates (3e-2, 1e-1) the embedded pooler went astray, and intrinsic prompt tuning
    lost 6 points with its head at 1e-1 over a trained pooler; the rest keeps the method's rate."""
    from ft_plugin.recipe import build_trainer, parse_args

    argv = ["--model_name_or_path", str(tiny_untrained_pooler_dir), "--train_file", str(tiny_csv), "--report_to",
            "none", "--method", method, "--output_dir", str(tmp_path), "--num_virtual_tokens", "4"]  # fmt: skip
    trainer = build_trainer(*parse_args(argv))
    trainer.create_optimizer_and_scheduler(num_training_steps=10)
    rates = {}
    for group in trainer.optimizer.param_groups:
        for parameter in group["params"]:
            rates[id(parameter)] = group["initial_lr"]
    named = {n: rates[id(p)] for n, p in trainer.model.named_parameters() if p.requires_grad}
    head = {name for name in named if "pooler" in name or "classifier" in name}
    assert {name.split(".modules_to_save")[0].split("model.")[-1] for name in head} == {
        "bert.pooler.dense",
        "classifier",
    }
    assert {named[name] for name in head} == {head_rate}
    assert {rate for name, rate in named.items() if name not in head} == {learning_rate}
    assert len(rates) == len(named)  # every trainable parameter in exactly one group
