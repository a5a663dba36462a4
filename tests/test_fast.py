import numpy as np
import pytest
import torch

from lightweight.course import checks
from lightweight.llm import fast
from lightweight.llm import lowbit as L
from lightweight.llm import roofline as R
from lightweight.course.checks import ch07


def _tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def test_every_path_builds_generates_and_leaves_the_model_alone():
    model = _tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    prompt = torch.randint(128, (1, 5), generator=torch.Generator().manual_seed(0))
    runs = {}
    for name in fast.PATHS:
        m = fast.build_path(model, name)
        runs[name] = fast.generator(m, prompt, 3)
    assert isinstance(fast.build_path(model, "int4-ours-head").lm_head, L.Int4WeightOnlyLinear)
    rates = fast.interleaved_rates(runs, tokens_per_run=3, rounds=1, progress=False)
    assert set(rates) == set(fast.PATHS) and all(r > 0 for r in rates.values())
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    with pytest.raises(ValueError, match="unknown path"):
        fast.build_path(model, "int2")
    with pytest.raises(ValueError, match="batch"):
        fast.generator(model, prompt[0], 3)


def test_interleaved_rates_are_tokens_over_median_time(monkeypatch):
    clock = iter([0.0, 1.0, 1.0, 3.0, 3.0, 5.0, 5.0, 5.5, 5.5, 9.5, 9.5, 10.0])
    monkeypatch.setattr(fast.time, "perf_counter", lambda: next(clock))
    rates = fast.interleaved_rates({"a": lambda: None, "b": lambda: None}, 10, rounds=3, warmup=0, progress=False)
    # interleaved: a took 1, 2, 4 s (median 2); b took 2, 0.5, 0.5 s (median 0.5)
    assert rates == {"a": 5.0, "b": 20.0}
    with pytest.raises(ValueError):
        fast.interleaved_rates({"a": lambda: None}, 10, rounds=0)


def test_llama_cpp_message_when_missing():
    if fast.llama_cpp_available():
        pytest.skip("llama-cpp-python is installed here")
    with pytest.raises(ModuleNotFoundError, match="course.py deploy"):
        fast.LlamaCpp("x.gguf")


def _run(check, fn):
    assert check(fn) is None
    return checks.RESULTS[-1]


def test_ch07_right_answers_pass_and_typical_mistakes_get_hints():
    right = {
        ch07.int4_bytes: lambda o, i, g: o * i // 2 + o * (i // g) * 4,
        ch07.compute_bound_batch: lambda b, f, bw, p: b * p / (bw * f),
        ch07.q4_0_block: lambda q, d: np.float16(d).tobytes() + bytes(
            (int(q[j]) + 8) | ((int(q[j + 16]) + 8) << 4) for j in range(16)),
        ch07.int4_table: lambda s, z: torch.stack([s.t(), (-z * s).t()], dim=-1),
        ch07.permute_qk: lambda w, h: w.reshape(h, 2, w.shape[0] // h // 2, w.shape[1]).transpose(1, 2).reshape(w.shape),
    }
    for check, fn in right.items():
        assert _run(check, fn).status == "pass", check.__name__
    wrong = [
        (ch07.int4_bytes, lambda o, i, g: o * i // 2, "scale"),
        (ch07.int4_bytes, lambda o, i, g: o * i // 2 + o * (i // g) * 2, "4 byte"),
        (ch07.compute_bound_batch, lambda b, f, bw, p: bw * f / (b * p), "nghịch đảo"),
        (ch07.q4_0_block, lambda q, d: np.float16(d).tobytes() + bytes(
            (int(q[2 * j]) + 8) | ((int(q[2 * j + 1]) + 8) << 4) for j in range(16)), "u[j+16]"),
        (ch07.q4_0_block, lambda q, d: np.float32(d).tobytes() + bytes(16), "18 byte"),
        (ch07.int4_table, lambda s, z: torch.stack([s.t(), (z * s).t()], dim=-1), "dấu"),
        (ch07.int4_table, lambda s, z: torch.stack([s, -z * s], dim=-1), "hình dạng"),
        (ch07.permute_qk, lambda w, h: w.reshape(h, w.shape[0] // h // 2, 2, w.shape[1]).transpose(1, 2).reshape(w.shape),
         "phép ngược"),
        (ch07.permute_qk, lambda w, h: w, "xen kẽ"),
    ]
    for check, fn, hint in wrong:
        r = _run(check, fn)
        assert r.status == "fail" and hint in r.message, (check.__name__, r.message)
    def todo(*a):
        raise NotImplementedError()
    assert _run(ch07.int4_bytes, todo).status == "not attempted"


def test_static_generator_gives_the_greedy_tokens_of_generate():
    model = _tiny_llama()
    prompt = torch.randint(128, (2, 5), generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected = model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=6, min_new_tokens=6,
                                  do_sample=False, pad_token_id=0)[:, 5:]
    got = fast.static_generator(model, prompt, 6)()
    assert got.shape == (2, 6) and torch.equal(got, expected)
    with pytest.raises(ValueError, match="new_tokens"):
        fast.static_generator(model, prompt, 0)


def test_gptq_int4_gives_symmetric_groups_for_every_block_linear_and_leaves_the_model_alone():
    model = _tiny_llama()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    windows = torch.randint(128, (4, 16), generator=torch.Generator().manual_seed(2))
    qts = fast.gptq_int4(model, windows, group_size=32, progress=False)
    linears = {n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and n.startswith("model.layers.")}
    assert set(qts) == linears
    for name, qt in qts.items():
        w = model.get_submodule(name).weight
        assert qt.bits == 4 and qt.group_size == 32 and qt.q.shape == w.shape
        assert int(qt.q.min()) >= -8 and int(qt.q.max()) <= 7 and bool((qt.zero == 0).all())
        assert float((qt.dequantize() - w).norm() / w.norm()) < 0.2, name  # a 4-bit copy, not noise
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    m = fast.build_path(model, "int4-ours", qtensors=qts)
    layer = m.get_submodule("model.layers.0.mlp.down_proj")
    ref = qts["model.layers.0.mlp.down_proj"].dequantize()
    assert float((layer.dequantized_weight() - ref).norm() / ref.norm()) < 0.01


# ----------------------------------------------------------------------------- one loop, pp and tg
def _varied_llama(vocab: int = 128, **kw):
    """A tiny Llama whose greedy tokens vary (larger initial weights than the default 0.02)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                      num_key_value_heads=2, max_position_embeddings=64, tie_word_embeddings=True, initializer_range=0.2, **kw)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def _generate(model, prompt, n):
    with torch.inference_mode():
        return model.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n, min_new_tokens=n,
                              do_sample=False, pad_token_id=0)[:, prompt.shape[1]:]


def test_static_loop_eager_gives_the_greedy_tokens_of_generate_and_decodes_again_from_a_rewound_cache():
    model = _varied_llama()
    prompt = torch.randint(128, (2, 7), generator=torch.Generator().manual_seed(1))
    expected = _generate(model, prompt, 9)
    assert len(set(expected.flatten().tolist())) > 3  # a test on varied tokens, not one repeated id
    loop = fast.StaticLoop(model)
    assert torch.equal(loop.generate(prompt, 9), expected)
    # the timing protocol: prefill once, then decode again and again from the same position
    cache = loop.new_cache(7 + 8)
    first = loop.prefill(prompt, cache)
    assert torch.equal(first, expected[:, :1])
    for _ in range(2):
        assert torch.equal(loop.decode(first, cache, 7, 8), expected[:, 1:])
    with pytest.raises(ValueError, match="do not fit"):
        loop.decode(first, cache, 7, 9)
    with pytest.raises(ValueError, match="context"):
        loop.new_cache(65)  # max_position_embeddings = 64


class _FakeClock:
    """A clock that advances one second per token that enters the model (a forward hook on the
    embedding), and not otherwise: pp and tg are then exactly 1 token/s unless a timing counts tokens
    it should not (a prefill inside tg), and the number of forwards is counted."""

    def __init__(self, model, monkeypatch):
        self.now, self.forwards = 0.0, 0
        monkeypatch.setattr(fast.time, "perf_counter", lambda: self.now)
        model.get_input_embeddings().register_forward_pre_hook(self._tick)

    def _tick(self, module, args):
        self.now += args[0].shape[-1]
        self.forwards += 1


@pytest.mark.parametrize("kind", ["loop", "generate"])
def test_pp_and_tg_are_timed_apart_and_tg_leaves_the_prefill_out(kind, monkeypatch):
    model = _varied_llama()
    clock = _FakeClock(model, monkeypatch)
    timer = fast.LoopTimer(model) if kind == "loop" else fast.GenerateTimer(model)
    context = torch.randint(128, (1, 20), generator=torch.Generator().manual_seed(2))
    timer.prepare(context, 8)
    before = clock.forwards
    assert timer.prompt_seconds(context) == 20  # one forward over the 20 prompt tokens
    assert timer.generation_seconds() == 8  # 8 one-token steps; the 20-token prefill is not in it
    if kind == "loop":
        assert clock.forwards - before == 1 + 8
    result = fast.time_pp_tg({"x": timer}, context, 8, rounds=3, warmup=1, progress=False)["x"]
    assert result.pp == fast.Spread(1.0, 1.0, 1.0, 3) and result.tg == fast.Spread(1.0, 1.0, 1.0, 3)
    assert (result.prompt_tokens, result.context, result.new_tokens, result.batch) == (20, 20, 8, 1)
    assert result.threads == torch.get_num_threads()


def test_loop_timer_times_a_batch_and_counts_its_cache_bytes():
    model = _varied_llama()
    timer = fast.LoopTimer(model)
    context = torch.randint(128, (3, 10), generator=torch.Generator().manual_seed(3))
    r = fast.time_pp_tg({"x": timer}, context, 4, rounds=2, warmup=0, progress=False)["x"]
    assert r.batch == 3 and r.pp.median > 0 and r.tg.median > 0 and r.tg.low <= r.tg.median <= r.tg.high
    # 2 (keys and values) x 2 layers x 2 kv heads x 16 head dims x 4 bytes, counted from the cache itself
    assert timer.cache_bytes_per_token() == 2 * 2 * 2 * 16 * 4 == R.kv_bytes_per_token(model)
    bf16 = fast.LoopTimer(fast.build_path(model, "bf16"))
    bf16.prepare(context[:1], 2)
    assert bf16.cache_bytes_per_token() == R.kv_bytes_per_token(model, torch.bfloat16)
    timer.release()
    with pytest.raises(RuntimeError, match="prepare"):
        timer.generation_seconds()


class _Scripted:
    """A timer whose timings are given: records the order it was called in."""

    def __init__(self, name, log, pp_s, tg_s, times_prompt=True):
        self.name, self.log, self.pp_s, self.tg_s, self.times_prompt = name, log, list(pp_s), list(tg_s), times_prompt

    def prepare(self, context, new_tokens):
        self.log.append(("prepare", self.name))

    def prompt_seconds(self, ids):
        self.log.append(("pp", self.name))
        return self.pp_s.pop(0)

    def generation_seconds(self):
        self.log.append(("tg", self.name))
        return self.tg_s.pop(0)

    def release(self):
        self.log.append(("release", self.name))


def test_time_pp_tg_interleaves_rounds_and_reports_median_min_max():
    log = []
    a = _Scripted("a", log, [1, 2, 4, 1], [8, 1, 2, 4])  # first values: the warm-up round
    b = _Scripted("b", log, [], [9, 4, 2, 1], times_prompt=False)
    context = torch.zeros(2, 10, dtype=torch.long)
    r = fast.time_pp_tg({"a": a, "b": b}, context, 4, rounds=3, warmup=1, progress=False)
    timed = [x for x in log if x[0] in ("pp", "tg")][3:]  # after the warm-up round (a: pp, tg; b: tg)
    assert [x[1] for x in timed] == ["a", "a", "b", "b", "a", "a", "a", "a", "b"]  # round 2 starts with b
    # a: pp of 2 x 10 tokens in 2, 4, 1 s -> 10, 5, 20 tokens/s; tg of 2 x 4 tokens in 1, 2, 4 s -> 8, 4, 2
    assert r["a"].pp == fast.Spread(10.0, 5.0, 20.0, 3) and r["a"].tg == fast.Spread(4.0, 2.0, 8.0, 3)
    assert r["b"].pp is None and r["b"].tg == fast.Spread(4.0, 2.0, 8.0, 3)
    with pytest.raises(ValueError):
        fast.time_pp_tg({"a": a}, context, 4, rounds=0)


def test_context_sweep_times_each_length_and_releases_the_caches():
    log = []
    t = _Scripted("a", log, [1.0] * 10, [1.0] * 10)
    tokens = torch.zeros(1, 16, dtype=torch.long)
    out = fast.context_sweep({"a": t}, tokens, contexts=(8, 16), new_tokens=2, rounds=2, warmup=0, progress=False)
    assert list(out) == [8, 16] and out[16]["a"].context == 16 and out[16]["a"].pp.median == 16.0
    assert [x for x in log if x[0] == "release"] == [("release", "a")] * 2
    with pytest.raises(ValueError, match="T >= 32"):
        fast.context_sweep({"a": t}, tokens, contexts=(32,))


def test_threads_sets_and_restores_the_thread_count():
    before = torch.get_num_threads()
    with fast.threads(1) as n:
        assert n == 1 == torch.get_num_threads()
    assert torch.get_num_threads() == before
    with pytest.raises(RuntimeError):
        with fast.threads(1):
            raise RuntimeError("boom")
    assert torch.get_num_threads() == before
    with fast.threads(None) as n:
        assert n == before
    with pytest.raises(ValueError):
        with fast.threads(0):
            pass


def test_context_tokens_are_the_start_of_the_held_out_text():
    from types import SimpleNamespace

    from lightweight.llm.evaluation import domain_text

    chars = lambda text, add_special_tokens: SimpleNamespace(input_ids=[ord(c) for c in text])  # noqa: E731
    ids = fast.context_tokens(chars, 100)
    assert ids.shape == (1, 100) and torch.equal(ids, fast.context_tokens(chars, 100))
    assert "".join(map(chr, ids[0].tolist())) == domain_text("shakespeare", "heldout")[:100]


def test_llama_cpp_is_timed_like_the_loop_and_generates_its_tokens(tmp_path):
    pytest.importorskip("llama_cpp")
    pytest.importorskip("gguf")
    from lightweight.llm import gguf_export as G
    from lightweight.llm.model import verify_gguf

    try:
        source = verify_gguf()
    except (FileNotFoundError, ModuleNotFoundError):
        pytest.skip("the SmolLM2 GGUF (its tokenizer) is not installed")
    model = _varied_llama(vocab=49152)  # the source file's tokenizer needs its vocabulary
    path = G.export_gguf(model, tmp_path / "f32.gguf", "f32", source=source)
    context = torch.randint(49152, (1, 10), generator=torch.Generator().manual_seed(3))
    expected = fast.StaticLoop(model).generate(context, 7)[0].tolist()
    with fast.LlamaCpp(path, n_ctx=64, threads=1) as cpp:
        assert cpp.prompt_seconds(context) > 0
        cpp.prepare(context, 6)
        calls, evaluate = [], cpp.llm.eval
        cpp.llm.eval = lambda tokens: (calls.append(list(tokens)), evaluate(tokens))[1]
        for _ in range(2):  # the first call prefills the context (untimed), the second only decodes
            calls.clear()
            assert cpp.generation_seconds() > 0
            assert calls[-6:] == [[t] for t in expected[:6]]  # same greedy tokens as our F32 loop
        assert len(calls) == 6
        with fast.threads(2):
            cpp.generation_seconds()
            assert cpp._threads == 2
        with pytest.raises(ValueError, match="n_ctx"):
            cpp.prepare(context, 1000)


def test_benchmark_rows_keep_absolute_rates_and_what_the_bound_needs_and_the_tables_render():
    from lightweight.bench import fast as B
    from lightweight.llm.evaluation import Interval

    def timed(tg, pp, context=64, threads=2, batch=1):
        spread = lambda v: None if v is None else fast.Spread(v, v * 0.9, v * 1.1, 5)  # noqa: E731
        return fast.PpTg(spread(pp), spread(tg), context, context, 32, batch, threads)

    info = {"fp32": B._Path("fp32-pytorch", 32, None, "pytorch", "none", 1.0, 500_000_000, 46_080),
            "int4-ours": B._Path("int4-aten-ours-g32", 4, 32, "pytorch", "calibration", 0.25, 100_000_000, 23_040),
            "int4-ours+compile": B._Path("int4-aten-ours-g32-compile", 4, 32, "pytorch-compile", "calibration", 0.25,
                                         100_000_000, 23_040, same_runtime="fp32+compile"),
            "fp32+compile": B._Path("fp32-pytorch-compile", 32, None, "pytorch-compile", "none", 1.0, 500_000_000, 46_080,
                                    same_runtime="fp32+compile")}
    main = {"fp32": timed(20, 400), "int4-ours": timed(50, 300), "fp32+compile": timed(25, None),
            "int4-ours+compile": timed(75, None)}
    bandwidth = {1: 20.0, 2: 30.0}
    rows = B._timing_rows(main, info, bandwidth)
    for ctx_len in (512, 2048):
        for t in (1, 2):
            rows += B._timing_rows({"fp32": timed(18 / t, 380, ctx_len, t), "int4-ours": timed(40 / t, 280, ctx_len, t)},
                                   info, bandwidth)
    rows += B._timing_rows({"fp32": timed(60, 900, batch=8), "int4-ours": timed(120, 700, batch=8)}, info, bandwidth)
    quality = {k: {d: (v, Interval(v / 20, v / 21, v / 19)) for d in ("shakespeare", "sotu")}
               for k, v in (("fp32", 20.0), ("int4-ours", 24.0), ("int4-rtn", 27.0))}
    rows += B._quality_rows(quality, info, main, bandwidth[2])
    tg = {(r["method"], r["setting"]["context"], r["setting"]["threads"], r["setting"]["batch"]): r
          for r in rows if r["metric"] == "tg"}
    r = tg[("int4-aten-ours-g32", 2048, 1, 1)]
    assert r["value"] == 40.0 and r["baseline"] == 18.0 and r["speed_ratio"] == pytest.approx(40 / 18, abs=1e-4)
    s = r["setting"]
    # everything a "% of the bound" needs is in the row
    assert s["bound_tokens_per_s"] == pytest.approx(20e9 / (100_000_000 + 2048 * 23_040), abs=0.05)
    assert (s["bandwidth_gbs"], s["tokens_per_s_low"], s["tokens_per_s_high"], s["rounds"]) == (20.0, 36.0, 44.0, 5)
    assert tg[("int4-aten-ours-g32-compile", 64, 2, 1)]["setting"]["same_runtime_speed_ratio"] == 3.0
    pp = [r for r in rows if r["metric"] == "pp"]
    assert {r["method"] for r in pp} == {"fp32-pytorch", "int4-aten-ours-g32"}  # compiled paths do not time prompts
    assert all(r["setting"]["context"] == 0 and r["setting"]["tokens"] in (64, 512, 2048) for r in pp)
    ppl = {(r["method"], r["setting"]["domain"]): r for r in rows if r["metric"] == "ppl"}
    assert ppl[("int4-aten-ours-g32", "sotu")]["setting"]["ratio_high"] == pytest.approx(24 / 19, abs=1e-4)
    assert ppl[("int4-aten-rtn-g32", "sotu")]["speed_ratio"] is None
    assert ppl[("int4-aten-ours-g32-compile", "sotu")]["value"] == 24.0
    assert all("bandwidth_gbs" in r["setting"] for r in rows)
    table = B.fast_table(rows, "test machine")
    assert table.count("**Bảng") == 4 and "C = 2048" in table and "`int4-aten-ours-g32-compile`" in table
    assert "| `int4-aten-ours-g32` | 1 | " in table and "1,20 [1,14–1,26] / 1,20 [1,14–1,26]" in table  # ppl ratio 24 / 20, CI 24/21…24/19
    assert max(len(line.split("|")) - 2 for line in table.splitlines() if line.startswith("|")) <= 6  # phone-sized
    with pytest.raises(ValueError, match="no tg rows"):
        B.fast_table([r for r in rows if r["metric"] != "tg"])


def test_compiled_timers_share_the_loop_and_report_what_fails(monkeypatch):
    def broken(fn, **kw):
        def run(*a, **k):
            raise RuntimeError("no C++ compiler")
        return run

    model = _varied_llama()
    context = torch.randint(128, (1, 6), generator=torch.Generator().manual_seed(4))
    monkeypatch.setattr(fast.torch, "compile", lambda fn, **kw: fn)  # the loop, without Inductor
    timers, failed = fast.compiled_timers({"fp32": model}, context, 3, progress=False)
    assert failed == {} and not timers["fp32"].times_prompt and timers["fp32"].runtime == "pytorch-compile"
    assert timers["fp32"].loop.compiled and fast.LoopTimer(model).runtime == "pytorch"
    monkeypatch.setattr(fast.torch, "compile", broken)
    timers, failed = fast.compiled_timers({"fp32": model}, context, 3, progress=False)
    assert timers == {} and "no C++ compiler" in failed["fp32"]
