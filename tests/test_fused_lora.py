"""`--fused_lora true`: LoRA layers computed in one autograd function (one adapter, no LoRA dropout) or with the
update inside one addmm, with PEFT's own forward wherever neither applies."""

from __future__ import annotations

import copy

import peft
import pytest
import torch
from torch import nn

from ft_plugin.methods import apply_method
from ft_plugin.methods import fused_lora as fused_module
from ft_plugin.methods.fused_lora import FusedLoraLinear, fuse_lora_layers
from ft_plugin.models import load_base_model
from ft_plugin.recipe import build_trainer, parse_args

LABELS = ["negative", "positive"]


@pytest.fixture()
def addmm_calls(monkeypatch) -> list:
    """Every fused update's addmm during the test (the module's own; nothing else in torch is touched)."""
    calls = []

    def counting_addmm(*args, **kwargs):
        calls.append(1)
        return torch.addmm(*args, **kwargs)

    monkeypatch.setattr(fused_module, "torch", _TorchWith(counting_addmm))
    return calls


@pytest.fixture()
def function_calls(monkeypatch) -> list:
    """Every layer computed by `_LoraLinearFunction` during the test."""
    calls = []
    apply = fused_module._LoraLinearFunction.apply

    def counting_apply(*args):
        calls.append(1)
        return apply(*args)

    monkeypatch.setattr(fused_module._LoraLinearFunction, "apply", counting_apply)
    return calls


class _TorchWith:
    """`torch` with `addmm` replaced."""

    def __init__(self, addmm) -> None:
        self.addmm = addmm

    def __getattr__(self, name):
        return getattr(torch, name)


def lora_pair(model_dir, method: str = "lora", **options) -> tuple[nn.Module, nn.Module]:
    """(PEFT's forward, fused forward) on the same weights; LoRA B drawn non-zero so the update counts."""
    torch.manual_seed(0)
    model, _ = load_base_model(str(model_dir), LABELS)
    plain = apply_method(model, method, **options)
    with torch.no_grad():
        for name, parameter in plain.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.5)
    fused = copy.deepcopy(plain)
    return plain, fused


IDS = torch.tensor([[2, 10, 11, 12, 3], [2, 13, 14, 3, 0]])


def logits_and_grads(model: nn.Module) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    model.zero_grad()
    out = model(input_ids=IDS, attention_mask=(IDS != 0).long(), labels=torch.tensor([0, 1]))
    out.loss.backward()
    grads = {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}
    return out.logits.detach(), grads


@pytest.mark.parametrize("train_bias", [False, True])  # True: the base layers' biases trained too (PEFT's bias="all")
def test_fused_lora_computes_peft_s_outputs_and_gradients_in_one_function_per_layer(
    tiny_model_dir, function_calls, train_bias
):
    plain, fused = lora_pair(tiny_model_dir)
    layers = [m for m in plain.modules() if isinstance(m, peft.tuners.lora.Linear)]
    for layer in [*layers, *(m for m in fused.modules() if isinstance(m, peft.tuners.lora.Linear))]:
        layer.base_layer.bias.requires_grad_(train_bias)
    assert fuse_lora_layers(fused) == len(layers) > 0
    assert all(type(m) is FusedLoraLinear for m in fused.modules() if isinstance(m, peft.tuners.lora.Linear))
    expected_logits, expected_grads = logits_and_grads(plain)
    assert function_calls == []
    logits, grads = logits_and_grads(fused)
    assert len(function_calls) == len(layers)
    assert not torch.allclose(expected_logits, _frozen_logits(plain))  # the update is not zero
    torch.testing.assert_close(logits, expected_logits)
    assert grads.keys() == expected_grads.keys() and any("lora_A" in name for name in grads)
    assert any("base_layer.bias" in name for name in grads) == train_bias
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], msg=name)
    assert list(fused.state_dict()) == list(plain.state_dict())  # what is saved does not change


def test_fused_lora_with_lora_dropout_adds_the_update_in_one_addmm_per_layer(
    tiny_model_dir, addmm_calls, function_calls
):
    plain, fused = lora_pair(tiny_model_dir, lora_dropout=0.25)
    layers = fuse_lora_layers(fused)
    torch.manual_seed(1)  # the same dropout masks: both draw them in the same order
    expected_logits, expected_grads = logits_and_grads(plain)
    assert addmm_calls == []
    torch.manual_seed(1)
    logits, grads = logits_and_grads(fused)
    assert len(addmm_calls) == layers and function_calls == []
    torch.testing.assert_close(logits, expected_logits)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, expected_grads[name], msg=name)


def test_fused_lora_keeps_peft_s_forward_for_dora_merged_disabled_and_mixed_dtypes(
    tiny_model_dir, addmm_calls, function_calls
):
    plain, fused = lora_pair(tiny_model_dir, "dora")
    fuse_lora_layers(fused)
    torch.testing.assert_close(logits_and_grads(fused)[0], logits_and_grads(plain)[0])  # DoRA: PEFT's variant
    assert addmm_calls == []

    plain, fused = lora_pair(tiny_model_dir)
    fuse_lora_layers(fused)
    assert torch.equal(_frozen_logits(fused), _frozen_logits(plain))
    fused.merge_adapter()
    torch.testing.assert_close(logits_and_grads(fused)[0], logits_and_grads(plain)[0], rtol=1e-4, atol=1e-5)
    fused.unmerge_adapter()
    assert addmm_calls == [] and function_calls == []
    layer = next(m for m in fused.modules() if isinstance(m, FusedLoraLinear))
    assert layer._fusable(torch.zeros(1, layer.in_features))
    assert not layer._fusable(torch.zeros(1, layer.in_features, dtype=torch.bfloat16))  # PEFT casts it


def _frozen_logits(model) -> torch.Tensor:
    """The base model's logits (adapters and PEFT's copy of the head disabled)."""
    with model.disable_adapter(), torch.no_grad():
        return model(input_ids=IDS, attention_mask=(IDS != 0).long()).logits


@pytest.mark.parametrize(("flag", "fused"), [([], True), (["--fused_lora", "false"], False)])
def test_recipe_fuses_lora_layers_by_default_and_not_with_fused_lora_false(
    tiny_model_dir, tiny_csv, tmp_path, flag, fused
):
    argv = ["--model_name_or_path", str(tiny_model_dir), "--train_file", str(tiny_csv), "--report_to", "none",
            "--method", "lora+bitfit", "--output_dir", str(tmp_path), *flag]  # fmt: skip
    model = build_trainer(*parse_args(argv)).model
    kinds = {type(m) for m in model.modules() if isinstance(m, peft.tuners.lora.Linear)}
    assert kinds == ({FusedLoraLinear} if fused else {peft.tuners.lora.Linear})
