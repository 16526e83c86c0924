"""Where a training step's time goes (`lorastudy.perf.bench_step`): ops grouped, the profiler's matmul FLOPs
against the 6N / 4N rules, and the printed report."""
from __future__ import annotations

import json

import pytest

from lorastudy.perf import bench_step as sp


def test_ops_fall_into_their_groups():
    assert [sp.category(op) for op in ("aten::mm", "aten::addmm", "aten::bmm")] == ["matmul"] * 3
    assert sp.category("aten::_scaled_dot_product_flash_attention_for_cpu_backward") == "attention"
    assert sp.category("aten::random_") == sp.category("aten::bernoulli_") == "random draws"
    assert sp.category("aten::_foreach_mul_") == sp.category("aten::addcdiv_") == "optimizer"
    assert sp.category("aten::_log_softmax_backward_data") == "loss"
    assert sp.category("aten::mul_") == sp.category("aten::silu_backward") == "elementwise"
    assert sp.category("aten::copy_") == sp.category("aten::embedding_dense_backward") == "copies and fills"
    assert sp.category("aten::matmul") == sp.category("aten::t") == sp.category("aten::gelu") == "other"
    assert sp.rule_flops_per_token("full", 10) == 60 and sp.rule_flops_per_token("lora", 10) == 40


def test_a_full_step_multiplies_as_the_6n_rule_says_and_lora_between_4n_and_full():
    full = sp.profile_step("tiny", "full", batch=4, steps=1)
    # every parameter is in a matmul forward (2N) and in two backward (4N), the tied embedding as lm_head
    assert full["matmul_flops_per_step"] == pytest.approx(full["rule_flops_per_step"], rel=0.05)
    assert full["rule_flops_per_step"] == 6 * full["parameters"] * 4 * full["seq_len"]
    assert sum(full["shares"].values()) == pytest.approx(1.0)
    assert full["shares"]["matmul"] > 0 and "random draws" not in full["shares"]
    lora = sp.profile_step("tiny", "lora", rank=4, batch=4, steps=1)
    # frozen weights get no weight gradient; the adapters' own matmuls are beyond the 4N rule
    assert lora["rule_flops_per_step"] < lora["matmul_flops_per_step"] < full["matmul_flops_per_step"]
    assert lora["shares"]["random draws"] > 0 and lora["dropout"] == pytest.approx(0.05)
    plain = sp.profile_step("tiny", "lora", rank=4, batch=4, steps=1, dropout=0.0)
    assert "random draws" not in plain["shares"] and plain["dropout"] == 0.0
    with pytest.raises(ValueError):
        sp.profile_step("tiny", "prefix", batch=4, steps=1)
    with pytest.raises(ValueError):
        sp.profile_step("tiny", "full", batch=4, steps=0)


def test_the_report_puts_each_rate_against_the_peak(capsys):
    row = {"method": "full", "rank": None, "dropout": None, "threads": 1, "step_ms": 100.0, "tokens_per_s": 1000.0,
           "rule_GFLOPs": 50.0, "matmul_flops_per_step": 5e9, "rule_flops_per_step": 5e9,
           "matmul_GFLOPs_while_in_matmul": 150.0, "shares": {"matmul": 0.6, "elementwise": 0.4}}
    rows = sp.report(["noise", f"PEAK {200e9}", "RESULT " + json.dumps(row)])
    out = capsys.readouterr().out
    assert rows == [{**row, "matmul_peak_flops": 200e9}] and "200.0 GFLOP/s" in out and "25.0%" in out and "60.0%" in out
