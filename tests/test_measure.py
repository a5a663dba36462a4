import math

import pytest
import torch
import torch.nn as nn

from lightweight import measure


def test_count_parameters_counts_shared_once():
    lin = nn.Linear(4, 3)
    assert measure.count_parameters(lin) == 15
    tied = nn.Sequential(lin, nn.ReLU(), lin)
    assert measure.count_parameters(tied) == 15
    lin.bias.requires_grad_(False)
    assert measure.count_parameters(lin, trainable_only=True) == 12
    with pytest.raises(TypeError, match="nn.Module"):
        measure.count_parameters(torch.zeros(3))


@pytest.mark.parametrize("numel, dtype, expected", [
    (10, "fp32", 40), (10, "fp16", 20), (10, torch.bfloat16, 20), (10, "int8", 10),
    (10, "int4", 5), (11, "int4", 6), (0, "int4", 0), (7, "fp8", 7),
])
def test_bytes_for(numel, dtype, expected):
    assert measure.bytes_for(numel, dtype) == expected


def test_bytes_for_bad_input():
    with pytest.raises(ValueError, match="unknown dtype"):
        measure.bytes_for(10, "int3")
    with pytest.raises(ValueError, match="non-negative"):
        measure.bytes_for(-1, "fp32")


def test_model_and_file_bytes(tmp_path):
    lin = nn.Linear(100, 10)
    assert measure.model_bytes(lin, "fp32") == 4 * 1010
    assert measure.model_bytes(lin, "int4") == 505
    n = measure.safetensors_bytes({"w": lin.weight})
    assert 4000 <= n < 4000 + 200  # raw bytes plus a small JSON header
    with pytest.raises(FileNotFoundError):
        measure.file_bytes(tmp_path / "missing.safetensors")
    with pytest.raises(TypeError):
        measure.safetensors_bytes({})


def test_sparsity():
    t = torch.tensor([0.0, 1.0, 0.0, 2.0])
    assert measure.sparsity(t) == 0.5
    lin = nn.Linear(4, 4)
    with torch.no_grad():
        lin.weight[:2] = 0
    assert measure.sparsity(lin) == 0.5  # biases are not weight matrices
    with pytest.raises(ValueError, match="no weight matrices"):
        measure.sparsity(nn.ReLU())
    with pytest.raises(TypeError):
        measure.sparsity([0, 1])


class FakeClock:
    """Each call of a timed function advances the clock by its cost."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now

    def work(self, cost):
        def fn():
            self.now += cost
        return fn


def test_latency_is_a_median(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(measure.time, "perf_counter", clock)
    costs = iter([9.0, 9.0, 1.0, 2.0, 100.0, 3.0, 2.5])  # 2 warm-ups, then 5 timed calls
    fn = lambda: setattr(clock, "now", clock.now + next(costs))  # noqa: E731
    assert measure.latency(fn, repeats=5, warmup=2) == 2.5  # the outlier 100 does not move the median


def test_speed_ratio_interleaves_and_divides(monkeypatch):
    clock = FakeClock()
    monkeypatch.setattr(measure.time, "perf_counter", clock)
    r = measure.speed_ratio(clock.work(0.004), clock.work(0.001), repeats=5, warmup=1)
    assert r["baseline_s"] == pytest.approx(0.004) and r["candidate_s"] == pytest.approx(0.001)
    assert r["ratio"] == pytest.approx(4.0)
    with pytest.raises(ValueError, match="repeats"):
        measure.speed_ratio(clock.work(1), clock.work(1), repeats=0)
    with pytest.raises(TypeError, match="callable"):
        measure.latency(3)


def test_quality_metrics():
    logits = torch.tensor([[2.0, 1.0], [0.0, 3.0], [1.0, 0.0]])
    assert measure.accuracy(logits, torch.tensor([0, 1, 1])) == pytest.approx(200 / 3)
    with pytest.raises(TypeError, match="int64"):
        measure.accuracy(logits, torch.tensor([0.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"\(N, K\)"):
        measure.accuracy(logits, torch.tensor([0, 1]))
    assert measure.perplexity(math.log(65)) == pytest.approx(65)
    assert measure.bits_per_char(math.log(2)) == pytest.approx(1.0)
    with pytest.raises(ValueError):
        measure.bits_per_char(float("nan"))
    with pytest.raises(ValueError):
        measure.perplexity(-0.1)
