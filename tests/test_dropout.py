"""`--cpu_dropout fast`: dropout masks from 16-bit random numbers, same distribution as nn.Dropout up to 1/65536."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ft_plugin.dropout import FastDropout, keep_mask, use_fast_dropout
from ft_plugin.recipe import build_trainer, parse_args


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_keep_mask_keeps_each_element_with_probability_one_minus_p(p):
    torch.manual_seed(0)
    mask, kept = keep_mask(torch.Size([1001, 999]), p, torch.device("cpu"))  # not a multiple of 4 elements
    assert mask.shape == (1001, 999) and mask.dtype == torch.bool
    assert kept == 1 - round(p * 65536) / 65536
    assert abs(mask.float().mean().item() - kept) < 0.003
    for lane in range(4):  # each 16-bit quarter of a 64-bit draw is uniform on its own
        assert abs(mask.flatten()[lane::4].float().mean().item() - kept) < 0.005


def test_fast_dropout_scales_the_kept_elements_and_its_gradient_is_the_same_mask():
    torch.manual_seed(0)
    dropout = FastDropout(0.1).train()
    x = (torch.rand(256, 384) + 0.5).requires_grad_()  # no element is 0 by itself
    out = dropout(x)
    kept = out != 0
    scale = 1 / (1 - round(0.1 * 65536) / 65536)
    assert torch.allclose(out[kept], x[kept] * scale)
    assert abs(kept.float().mean().item() - 0.9) < 0.01
    assert abs(out.mean().item() - x.mean().item()) < 0.01  # the expectation is the input's, as with nn.Dropout
    out.sum().backward()
    assert torch.equal(x.grad, kept.float() * scale)


def test_fast_dropout_is_the_identity_in_eval_mode_and_at_p_0_and_follows_the_seed():
    x = torch.randn(64, 32)
    assert FastDropout(0.5).eval()(x) is x
    assert torch.equal(FastDropout(0.0).train()(x), x)
    assert torch.equal(FastDropout(1.0).train()(x), torch.zeros_like(x))
    nearly_all = FastDropout(1 - 1e-6).train()(x)  # rounds to "drop all": torch's dropout, not a division by 0
    assert torch.isfinite(nearly_all).all()
    dropout = FastDropout(0.5).train()
    torch.manual_seed(7)
    first, second = dropout(x), dropout(x)
    torch.manual_seed(7)
    assert torch.equal(dropout(x), first)  # torch's default generator: --seed and checkpoints reproduce it
    assert not torch.equal(first, second)


def test_use_fast_dropout_replaces_every_dropout_keeping_p_mode_and_weights(tiny_model_dir, tiny_csv, tmp_path):
    argv = ["--model_name_or_path", str(tiny_model_dir), "--train_file", str(tiny_csv), "--report_to", "none",
            "--method", "lora", "--lora_dropout", "0.2"]  # fmt: skip
    reference = build_trainer(*parse_args([*argv, "--output_dir", str(tmp_path / "a"), "--cpu_dropout", "torch"]))
    model = reference.model
    before = [(name, type(m), m.p) for name, m in model.named_modules() if isinstance(m, nn.Dropout)]
    assert {kind for _, kind, _ in before} == {nn.Dropout}
    assert any(".lora_dropout." in name and p == 0.2 for name, _, p in before)  # LoRA's own, not only BERT's
    keys = set(model.state_dict())
    model.eval()
    assert use_fast_dropout(model) == len(before)
    after = [(name, type(m), m.p, m.training) for name, m in model.named_modules() if isinstance(m, nn.Dropout)]
    assert [(name, p) for name, _, p, _ in after] == [(name, p) for name, _, p in before]
    assert {kind for _, kind, _, _ in after} == {FastDropout} and not any(training for *_, training in after)
    assert set(model.state_dict()) == keys  # dropout has no weights: what is saved does not change

    default = build_trainer(*parse_args([*argv, "--output_dir", str(tmp_path / "b")]))  # CPU: fast by default
    assert sum(isinstance(m, FastDropout) for m in default.model.modules()) == len(before)


def test_unknown_cpu_dropout_is_one_line(tmp_path):
    from ft_plugin.errors import MethodError

    with pytest.raises(MethodError, match=r"--cpu_dropout.*invalid choice: 'fastest' \(choose from 'fast', 'torch'\)"):
        parse_args(["--cpu_dropout", "fastest", "--output_dir", str(tmp_path)])
