import copy

import pytest
import torch
import torch.nn as nn

from lightweight.bench import core
from lightweight import combine as C
from lightweight import prune as P
from lightweight import quantize as Q
from lightweight.advise import advise, quality_drop
from lightweight.models import DigitsCNN, GPTConfig, TinyGPT


def small_gpt() -> TinyGPT:
    torch.manual_seed(0)
    return TinyGPT(GPTConfig(vocab_size=20, block_size=16, n_layer=2, n_head=2, n_embd=32)).eval()


def test_fit_group_size():
    assert C.fit_group_size(512, 128) == 128
    assert C.fit_group_size(128, 128) is None and C.fit_group_size(72, 128) is None
    assert C.fit_group_size(192, 128) == 96
    assert C.fit_group_size(512, None) is None
    with pytest.raises(ValueError, match="group_size"):
        C.fit_group_size(512, 0)


def test_stored_bytes_of_an_fp32_model_is_four_bytes_per_parameter():
    gpt = small_gpt()
    b = C.stored_bytes(gpt)
    assert b["total"] == 4 * sum(p.numel() for p in gpt.parameters()) and b["scales"] == 0


def test_quantized_model_bytes_match_the_packed_tensors():
    gpt = small_gpt()
    q = C.quantize_model_(copy.deepcopy(gpt), bits=4, group_size=16)
    lins = [m for m in q.modules() if isinstance(m, Q.QuantizedLinear)]
    embs = [m for m in q.modules() if isinstance(m, C.QuantizedEmbedding)]
    assert lins and len(embs) == 2 and not any(isinstance(m, (nn.Linear, nn.Embedding)) for m in q.modules())
    b = C.stored_bytes(q)
    want_weights = sum(m.qweight.numel() for m in lins) + sum(m.qweight.numel() for m in embs)  # int4 packed, int8
    assert b["weights"] == want_weights
    assert b["scales"] == 2 * (sum(m.scale.numel() for m in lins) + sum(m.scale.numel() for m in embs))
    x = torch.randint(20, (2, 16))
    with torch.no_grad():
        rel = (q(x) - gpt(x)).norm() / gpt(x).norm()
    assert 0 < rel < 0.2  # quantized, not broken


def test_pruned_then_quantized_layer_keeps_its_zeros_and_is_stored_as_bitmask():
    torch.manual_seed(0)
    lin = nn.Linear(256, 64)
    P.prune_(lin, 0.75)
    model = nn.Sequential(lin)
    C.quantize_model_(model, bits=4, group_size=128)
    q = C.int_values(model[0])
    assert (q == 0).float().mean() >= 0.75
    nz = int((q != 0).sum())
    assert C.int_weight_bytes(q, 4) == (nz + 1) // 2 + 256 * 64 // 8  # values two per byte + one bit per weight
    # the same formula as bits_per_weight, up to rounding
    bits = 8 * (C.stored_bytes(model)["weights"] + C.stored_bytes(model)["scales"]) / (256 * 64)
    assert bits == pytest.approx(C.bits_per_weight(0.75, 4, 128), abs=0.01)


def test_dense_format_wins_at_low_sparsity():
    q = torch.ones(8, 16, dtype=torch.int8)
    q[0, 0] = 0
    assert C.int_weight_bytes(q, 4) == 64  # all values packed: 128 / 2
    assert C.float_weight_bytes(torch.zeros(4, 8)) == 4  # nothing but the bitmask


def test_bits_per_weight_and_its_bad_inputs():
    assert C.bits_per_weight(0.0, 4, 128) == 4.125
    assert C.bits_per_weight(0.6, 4, 128) == pytest.approx(2.725)
    assert C.bits_per_weight(0.1, 4, 128) == 4.125  # the bitmask would cost more than it saves
    assert C.bits_per_weight(0.0, 8, None, in_features=64) == 8.25
    with pytest.raises(ValueError, match="sparsity"):
        C.bits_per_weight(1.0, 4, 128)
    with pytest.raises(ValueError, match="group size"):
        C.bits_per_weight(0.5, 4, None)


def test_quantized_conv_matches_fake_quantized_weights():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 8, 3, padding=1)
    qc = C.QuantizedConv2d(conv, bits=4)
    w = Q.fake_quantize(conv.weight.detach().flatten(1), 4).view_as(conv.weight)
    x = torch.randn(2, 3, 8, 8)
    ref = nn.functional.conv2d(x, w, conv.bias, padding=1)
    assert torch.allclose(qc(x), ref, atol=1e-2)
    with pytest.raises(TypeError, match="groups=1"):
        C.QuantizedConv2d(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(ValueError, match="bits"):
        C.quantize_model_(DigitsCNN(), bits=1)


def test_pareto_front():
    pts = [(1.0, 1.5), (0.26, 1.5), (0.14, 1.53), (0.1, 1.54), (0.75, 1.58), (0.1, 1.69), (0.02, 2.41)]
    assert C.pareto_front(pts) == [6, 3, 2, 1]
    acc = [(1.0, 98.3), (0.03, 98.1), (0.02, 97.2), (0.5, 93.9)]
    assert C.pareto_front(acc, higher_is_better=True) == [2, 1, 0]
    assert C.pareto_front([(0.5, 1.0), (0.5, 1.0)]) == [0]
    with pytest.raises(ValueError, match="NaN"):
        C.pareto_front([(float("nan"), 1.0)])


def _row(method, value, size, speed=None, needs="none", model="tinygpt", metric="val_loss", base=1.5):
    return core.row("combine", method, model, metric, base, value, size, speed, needs=needs)


def test_advise_filters_by_quality_needs_and_speed():
    rows = [_row("fp32", 1.5, 1.0, 1.0), _row("int8-rtn", 1.501, 0.26, 0.9), _row("int4-gptq", 1.51, 0.14, 0.6, "calibration"),
            _row("combo-prune", 1.54, 0.10, 0.65, "training"), _row("kd-token", 2.4, 0.1, 5.7, "training")]
    assert [r["method"] for r in advise(rows, "tinygpt", "val_loss", 0.05)] == ["combo-prune", "int4-gptq", "int8-rtn", "fp32"]
    assert advise(rows, "tinygpt", "val_loss", 0.05, can_train=False)[0]["method"] == "int4-gptq"
    assert advise(rows, "tinygpt", "val_loss", 0.05, can_train=False, has_calibration_data=False)[0]["method"] == "int8-rtn"
    assert advise(rows, "tinygpt", "val_loss", 0.01, need_speedup=True) == []
    assert advise(rows, "tinygpt", "val_loss", 1.0, goal="speed")[0]["method"] == "kd-token"
    speed_only = _row("int8-fbgemm", 1.502, None, 9.0)
    assert advise(rows + [speed_only], "tinygpt", "val_loss", 0.05, goal="speed")[0]["method"] == "int8-fbgemm"
    assert speed_only not in advise(rows + [speed_only], "tinygpt", "val_loss", 0.05)
    assert quality_drop(rows[3]) == pytest.approx(0.04 / 1.5)
    assert quality_drop(_row("int8-x", 97.3, 0.5, model="digits-cnn", metric="accuracy", base=98.3)) == pytest.approx(1.0)
    for kwargs, match in [(dict(goal="cost"), "goal"), (dict(metric="bleu"), "metric"), (dict(max_drop=-1), "max_drop"),
                          (dict(model="minilm"), "no measured rows")]:
        args = dict(rows=rows, model="tinygpt", metric="val_loss", max_drop=0.05) | kwargs
        with pytest.raises(ValueError, match=match):
            advise(**args)


def test_advise_wants_every_text_domain_to_fit():
    def llm(method, shakespeare, sotu, size, needs="calibration"):
        return [core.row("llm", method, "smollm2-135m", "ppl", base, value, size, None, needs=needs, domain=d)
                for d, base, value in [("shakespeare", 80.0, shakespeare), ("sotu", 30.0, sotu)]]

    rows = llm("fp32-reference", 80.0, 30.0, 1.0, "none") + llm("int4-gptq-g64", 84.0, 36.0, 0.3) + \
        llm("int8-rtn-channel", 80.4, 30.2, 0.55, "none")
    picked = advise(rows, "smollm2-135m", "ppl", 0.10)  # GPTQ is within 10% on Shakespeare only (+5%, +20%)
    assert [r["method"] for r in picked] == ["int8-rtn-channel", "fp32-reference"]
    assert [r["setting"]["domain"] for r in advise(rows, "smollm2-135m", "ppl", 0.25)][:1] == ["sotu"]  # its worst domain


def test_shipped_results_cover_every_chapter_and_match_their_table():
    measured_on, rows = core.load_results()
    data = {"machine": measured_on, "rows": rows}
    chapters = {r["chapter"] for r in data["rows"]}
    assert chapters == set(core.CHAPTERS)
    for r in data["rows"]:
        again = core.row(r["chapter"], r["method"], r["model"], r["metric"], r["baseline"], r["value"],
                          r["size_ratio"], r["speed_ratio"], needs=r["needs"], **r["setting"])
        assert again == r
    md = core.RESULTS_PATH.with_suffix(".md").read_text(encoding="utf-8")
    table = core.to_markdown(data["rows"], data["machine"])
    assert md == table
