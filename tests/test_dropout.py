"""LoRA's CPU dropout: the same inverted-dropout distribution as nn.Dropout, seeded by torch's generator."""
from __future__ import annotations

import math

import pytest
import torch
from fake_runs import tiny_llama, tiny_tokenizer
from torch import nn

from lorastudy.train.dropout import MaskDropout, speed_up_lora_dropout


def test_drop_rate_and_scale_match_nn_dropout() -> None:
    torch.manual_seed(0)
    p, n = 0.05, 2_000_000
    out = MaskDropout(p).train()(torch.ones(n))
    dropped = float((out == 0).float().mean())
    assert abs(dropped - p) < 5 * math.sqrt(p * (1 - p) / n)  # binomial: 5 standard errors
    kept = out[out != 0]
    assert torch.allclose(kept, torch.full_like(kept, 1 / (1 - p)))
    assert abs(float(out.mean()) - 1.0) < 0.002  # inverted dropout keeps the expectation


def test_gradient_is_the_same_mask() -> None:
    torch.manual_seed(1)
    x = torch.randn(64, 32, requires_grad=True)
    out = MaskDropout(0.3).train()(x)
    out.sum().backward()
    expected = (out.detach() != 0).float() / 0.7
    assert torch.equal(x.grad, expected)


def test_seeded_and_identity_in_eval() -> None:
    x = torch.randn(8, 16, 16)
    drop = MaskDropout(0.5).train()
    torch.manual_seed(3)
    a = drop(x)
    torch.manual_seed(3)
    assert torch.equal(a, drop(x))
    assert not torch.equal(a, drop(x))  # the next draw differs
    assert drop.eval()(x) is x
    assert MaskDropout(0.0).train()(x) is x
    with pytest.raises(ValueError):
        MaskDropout(1.0)


def test_swaps_only_peft_lora_dropouts() -> None:
    import peft

    model = peft.get_peft_model(tiny_llama(tiny_tokenizer()), peft.LoraConfig(r=2, lora_alpha=4, lora_dropout=0.1,
                                                             target_modules=["q_proj", "v_proj"]))
    n_layers = model.config.num_hidden_layers
    assert speed_up_lora_dropout(model) == 2 * n_layers
    drops = [m for m in model.modules() if isinstance(m, MaskDropout)]
    assert len(drops) == 2 * n_layers and all(d.p == 0.1 for d in drops)
    assert not any(isinstance(m, nn.Dropout) for m in model.modules() if hasattr(m, "p") and m.p == 0.1)
