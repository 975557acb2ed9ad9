"""`--cpu_dropout fast` on attention probabilities: the same function and gradients as SDPA's math path with the
same mask, one implementation switched in memory only, transformers' own SDPA everywhere else."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import ft_plugin.attention as attention
from ft_plugin.attention import ATTENTION_IMPLEMENTATION, _DroppedAttention, use_fast_attention_dropout
from ft_plugin.recipe import build_trainer, parse_args


def reference_attention(query, key, value, attention_mask, keep, kept, scaling):
    """Eager attention with a given dropout mask, differentiated by autograd. A boolean mask is added as
    transformers' eager attention adds it (`masking_utils.eager_mask`): 0 where attended, the dtype's minimum where
    not, so a row with every key masked averages the values."""
    scores = query @ key.transpose(-1, -2) * scaling
    if attention_mask is not None and attention_mask.dtype == torch.bool:
        attention_mask = torch.zeros(attention_mask.shape).masked_fill(~attention_mask, torch.finfo(scores.dtype).min)
    if attention_mask is not None:
        scores = scores + attention_mask
    return (torch.softmax(scores, -1) * keep / kept) @ value


@pytest.mark.parametrize(
    ("mask_kind", "prefix"), [("bool", 0), ("additive", 0), ("none", 0), ("bool", 3), ("bool, a row all masked", 0)]
)
def test_dropped_attention_matches_autograd_on_the_same_mask(mask_kind, prefix):
    torch.manual_seed(0)
    batch, heads, length, size = 3, 2, 7, 4
    query, key, value = (
        torch.randn(batch, length + extra, heads * size).view(batch, -1, heads, size).transpose(1, 2).requires_grad_()
        for extra in (0, prefix, prefix)
    )  # strided like BERT's projections; prefix tuning's keys and values are longer than the queries
    padding = torch.ones(batch, 1, length, length + prefix, dtype=torch.bool)
    padding[0, :, :, 5:] = False
    if mask_kind == "bool, a row all masked":  # eager averages the values there (no NaN); so must the fast path
        padding[1, :, 2, :] = False
    mask = {"additive": (~padding).float() * -1e4, "none": None}.get(mask_kind, padding)
    grad_output = torch.randn(batch, heads, length, size)

    torch.manual_seed(1)
    output = _DroppedAttention.apply(query, key, value, mask, 0.3, 0.5)
    output.backward(grad_output)
    grads = [t.grad.clone() for t in (query, key, value)]
    for t in (query, key, value):
        t.grad = None
    torch.manual_seed(1)  # the same mask again
    keep, kept = attention.keep_mask(torch.Size([batch, heads, length, length + prefix]), 0.3, torch.device("cpu"))
    assert 0 < keep.float().mean() < 1
    expected = reference_attention(query, key, value, mask, keep, kept, 0.5)
    expected.backward(grad_output)
    assert torch.allclose(output, expected, atol=1e-6) and not output.isnan().any()
    for got, want in zip(grads, (query.grad, key.grad, value.grad)):
        assert torch.allclose(got, want, atol=1e-5)


def test_a_bert_has_the_same_loss_and_gradients_as_with_eager_attention_and_those_masks(
    tiny_model_dir, monkeypatch, attention_masks, tmp_path
):
    model = AutoModelForSequenceClassification.from_pretrained(
        tiny_model_dir, num_labels=3, attention_probs_dropout_prob=0.2
    )
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_dir)
    batch = tokenizer(["great flight", "the bag was late and the gate was awful"], padding=True, return_tensors="pt")
    labels = torch.tensor([2, 0])
    assert model.config._attn_implementation == "sdpa"
    assert use_fast_attention_dropout(model)
    assert model.config._attn_implementation == ATTENTION_IMPLEMENTATION
    masks = attention_masks
    model.train()
    loss = model(**batch, labels=labels).loss
    loss.backward()
    assert len(masks) == model.config.num_hidden_layers and masks[0][0].shape[-1] == batch["input_ids"].shape[-1]
    fast = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()

    replay = iter(masks)

    def replayed_dropout(x, p=0.5, training=True, inplace=False):
        if p == 0:  # the tiny model's hidden dropouts
            return x
        keep, kept = next(replay)
        return x * keep / kept

    model.set_attn_implementation("eager")
    monkeypatch.setattr(torch.nn.functional, "dropout", replayed_dropout)  # eager attention's dropout
    eager_loss = model(**batch, labels=labels).loss
    eager_loss.backward()
    assert torch.allclose(loss, eager_loss, atol=1e-6)
    for name, p in model.named_parameters():
        assert torch.allclose(fast[name], p.grad, atol=1e-6), name

    monkeypatch.undo()
    model.set_attn_implementation(ATTENTION_IMPLEMENTATION)
    model.eval()  # evaluation: transformers' SDPA, no dropout
    with torch.no_grad():
        logits = model(**batch).logits
        model.set_attn_implementation("sdpa")
        assert torch.equal(model(**batch).logits, logits)
    model.set_attn_implementation(ATTENTION_IMPLEMENTATION)
    model.save_pretrained(tmp_path)
    assert not [key for key in json.loads((tmp_path / "config.json").read_text()) if "attn" in key]


@pytest.mark.parametrize(
    ("flags", "implementation"),
    [
        (["--attention_dropout", "0.1"], ATTENTION_IMPLEMENTATION),  # the default, --cpu_dropout fast
        (["--attention_dropout", "0.1", "--cpu_dropout", "torch"], "sdpa"),
        ([], "sdpa"),  # the tiny model has no attention dropout: nothing to switch
    ],
)
def test_build_trainer_switches_attention_only_for_fast_cpu_dropout(
    tiny_model_dir, tiny_csv, tmp_path, flags, implementation
):
    argv = ["--model_name_or_path", str(tiny_model_dir), "--train_file", str(tiny_csv), "--report_to", "none",
            "--method", "lora", "--output_dir", str(tmp_path), *flags]  # fmt: skip
    trainer = build_trainer(*parse_args(argv))
    assert trainer.model.get_base_model().config._attn_implementation == implementation


@pytest.mark.parametrize(("method", "learning_rate"), [("lora", "5e-3"), ("prefix", "3e-2"), ("full", "5e-3")])
def test_training_with_fast_attention_dropout_learns(
    tiny_model_dir, tiny_csv, tmp_path, attention_masks, method, learning_rate
):
    argv = ["--model_name_or_path", str(tiny_model_dir), "--train_file", str(tiny_csv), "--report_to", "none",
            "--method", method, "--output_dir", str(tmp_path), "--attention_dropout", "0.1",
            "--num_train_epochs", "2", "--eval_strategy", "no", "--learning_rate", learning_rate]  # fmt: skip
    trainer = build_trainer(*parse_args(argv))
    base = trainer.model.get_base_model() if hasattr(trainer.model, "get_base_model") else trainer.model
    assert base.config._attn_implementation == ATTENTION_IMPLEMENTATION
    trainer.train()
    assert attention_masks and all(
        mask.dim() == 4 for mask, _ in attention_masks
    )  # the attention probabilities took ft-plugin's masks
    assert trainer.evaluate()["eval_loss"] < 1.0986  # below chance (ln 3): it learned through the new attention


def attention_inputs(heads_kv: int = 2, dtype=torch.float32):
    torch.manual_seed(0)
    query = torch.randn(2, 2, 5, 4, dtype=dtype)
    key, value = (torch.randn(2, heads_kv, 5, 4, dtype=dtype) for _ in range(2))
    return query, key, value


@pytest.mark.parametrize(
    "case",
    ["evaluation", "p rounds to 1", "bf16", "grouped-query", "causal without a mask", "position bias", "learned mask",
     "mask of another batch size"],
)  # fmt: skip
def test_what_the_fast_path_cannot_compute_goes_to_transformers_sdpa(monkeypatch, case):
    calls = []
    monkeypatch.setattr(
        attention, "sdpa_attention_forward", lambda *args, **kwargs: calls.append(kwargs) or (None, None)
    )
    module = torch.nn.Module()
    module.is_causal = case == "causal without a mask"
    query, key, value = attention_inputs(
        1 if case == "grouped-query" else 2, torch.bfloat16 if case == "bf16" else torch.float32
    )
    mask = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    kwargs = {"dropout": 0.1}
    if case == "evaluation":
        kwargs["dropout"] = 0.0
    elif case == "p rounds to 1":
        kwargs["dropout"] = 1 - 1e-6
    elif case == "causal without a mask":
        mask = None
    elif case == "position bias":
        kwargs["position_bias"] = torch.zeros(1, 2, 5, 5)
    elif case == "learned mask":
        mask = torch.zeros(2, 1, 5, 5, requires_grad=True)
    elif case == "mask of another batch size":
        mask = torch.ones(4, 1, 5, 5, dtype=torch.bool)
    attention.sdpa_with_fast_dropout(module, query, key, value, mask, **kwargs)
    assert len(calls) == 1

    calls.clear()  # the plain bidirectional case, training on the CPU in fp32: the fast path
    module.is_causal = False
    query, key, value = attention_inputs()
    output, weights = attention.sdpa_with_fast_dropout(module, query, key, value, None, dropout=0.1)
    assert not calls and output.shape == (2, 5, 2, 4) and weights is None
