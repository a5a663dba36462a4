#!/usr/bin/env python
"""Patch solutions/07_fast.ipynb for the pp/tg timing of lightweight.llm.fast (one loop for eager and
compiled runs, prompt processing and generation timed apart, the KV cache in the roofline, a short
context sweep).

Run from the repository root, with the course's venv:

    .venv/bin/python /tmp/nb07_timing.py            # edits the notebook, prints every change
    .venv/bin/python /tmp/nb07_timing.py --dry-run  # prints what it would change, writes nothing

Idempotent: a second run changes nothing. It touches only the timing cells (found by their cell ids)
and single paragraphs of the markdown around them (found by their first words), inserts eight new
cells after the ``fast-roofline`` plot, and leaves every other cell as it is. A markdown paragraph
that someone has rewritten meanwhile is left alone, with a warning. Changed code cells lose their
outputs: re-execute the notebook afterwards and regenerate the labs:

    TQDM_DISABLE=1 HF_HUB_OFFLINE=1 .venv/bin/python -m jupyter nbconvert --to notebook --execute --inplace solutions/07_fast.ipynb
    .venv/bin/python -m lightweight.course.labs
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import nbformat

PATH = Path("solutions/07_fast.ipynb")

# ----------------------------------------------------------------------------- code cells, replaced whole
CODE = {
    "04f91f0b": '''NEW, ROUNDS, CONTEXT = (24, 5, 64) if fast_kernels else (8, 3, 16)
tokens = fast.context_tokens(tokenizer, 512)  # the first 512 held-out Shakespeare tokens (the sweep below uses them all)
context = tokens[:, :CONTEXT]
# one loop for every PyTorch path; prompts through a scalar kernel (FP32 activations, or no vectorised
# kernel on this machine) are not timed: seconds each, and nothing to learn from them
scalar = {"int4-ours-fp32act"} | (set() if fast_kernels else {n for n in paths if n not in ("fp32", "bf16")})
timers = {n: fast.LoopTimer(m, time_prompt=n not in scalar) for n, m in paths.items()}
timers["fp32 (generate)"] = fast.GenerateTimer(paths["fp32"], tokenizer.eos_token_id)  # what most users run
timed = fast.time_pp_tg(timers, context, NEW, rounds=ROUNDS)
rates = {n: r.tg.median for n, r in timed.items()}''',
    "7fbeeedd": '''from lightweight.bench.fast import read_bytes

weight_bytes = read_bytes(paths)  # counted from the stored tensors (torchao: our path with the same layout)
kv_bytes = {n: t.cache_bytes_per_token() for n, t in timers.items() if isinstance(t, fast.LoopTimer)}  # from the caches
weight_bytes["fp32 (generate)"], kv_bytes["fp32 (generate)"] = weight_bytes["fp32"], kv_bytes["fp32"]
bound = {n: R.context_bound(weight_bytes[n], kv_bytes[n], CONTEXT, machine.bandwidth) for n in timed}
print(f"tg: {NEW} token mới sau {CONTEXT} token ngữ cảnh; pp: một lượt forward qua {CONTEXT} token; "
      f"trung vị (min–max) của {ROUNDS} vòng")
print(f"{'đường chạy':>22} {'tg token/s':>20} {'× FP32':>7} {'trần':>7} {'% trần':>7} {'pp token/s':>11}")
for n, r in timed.items():
    tg = f"{r.tg.median:.1f} ({r.tg.low:.1f}–{r.tg.high:.1f})"
    pp = "—" if r.pp is None else f"{r.pp.median:.0f}"
    print(f"{n:>22} {tg:>20} {r.tg.median / timed['fp32'].tg.median:>7.2f} {bound[n]:>7.1f} "
          f"{r.tg.median / bound[n]:>7.0%} {pp:>11}")''',
    "557458c8": '''BATCH = 8
batched = context.expand(BATCH, -1).contiguous()
big = ["fp32", "bf16", "int8-ours", "int4-ours"] if fast_kernels else []  # scalar kernels: minutes per path
timed_b = fast.time_pp_tg({n: fast.LoopTimer(paths[n], time_prompt=False) for n in big}, batched, NEW,
                          rounds=ROUNDS) if big else {}
rates_b = {n: r.tg.median for n, r in timed_b.items()}  # tokens/s of the 8 sequences together''',
    "overhead-profile": '''from torch.profiler import ProfilerActivity, profile

step = fast.static_generator(paths["int4-ours-head"], context, 8)
step()
with profile(activities=[ProfilerActivity.CPU]) as prof:
    step()
events = prof.key_averages()
total = sum(e.self_cpu_time_total for e in events)
kernel = sum(e.self_cpu_time_total for e in events if e.key == "aten::_weight_int4pack_mm_for_cpu")
calls = sum(e.count for e in events if e.key.startswith("aten::"))
print(f"nhân int4: {kernel / total:.0%} thời gian CPU của các phép aten; {calls / 8:.0f} lần gọi phép aten mỗi token")''',
    "compile-run": '''to_compile = ["fp32", "int4-ours-head8"] if fast_kernels else []
if not fast_kernels:
    print("Nhân int4 chạy mã vô hướng trên máy này: bỏ qua torch.compile (vài phút biên dịch cho một kết quả "
          "không khẳng định được gì).")
compiled, failed = fast.compiled_timers({n: paths[n] for n in to_compile}, context, NEW)
for n, why in failed.items():  # no C++ compiler, no OpenMP, or a platform Inductor does not support
    print(f"torch.compile không chạy được cho {n} trên máy này: {why}")
# the same loop, eager and compiled, in the same interleaved rounds
runs_c = {"fp32": timers["fp32"], "int4-ours-head8": timers["int4-ours-head8"]}
runs_c |= {f"{n} (compile)": t for n, t in compiled.items()}
timed_c = fast.time_pp_tg(runs_c, context, NEW, rounds=ROUNDS) if compiled else {}
rates_c = {n: r.tg.median for n, r in timed_c.items()}''',
    "compile-table": '''print(f"{'đường chạy':>26} {'tg token/s':>11} {'× FP32 eager':>13} {'% trần':>7}")
for n, r in rates_c.items():
    print(f"{n:>26} {r:>11.1f} {r / rates_c['fp32']:>13.2f} {r / bound[n.removesuffix(' (compile)')]:>7.0%}")
if len(compiled) == 2:
    same = rates_c["int4-ours-head8 (compile)"] / rates_c["fp32 (compile)"]
    print(f"INT4 / FP32, cả hai đã biên dịch: {same:.2f}")''',
    "compile-claims": '''if len(compiled) == 2 and fast_kernels:
    gain = rates_c["int4-ours-head8 (compile)"] / rates_c["int4-ours-head8"]
    same = rates_c["int4-ours-head8 (compile)"] / rates_c["fp32 (compile)"]
    versus_eager = rates_c["int4-ours-head8 (compile)"] / rates_c["fp32"]
    assert gain > 1.1, gain  # the same loop with and without the compiler
    assert same > 1.3, same
    print("Trong cùng một vòng lặp, torch.compile làm INT4 của ta nhanh hơn chính nó khi chạy eager (hơn 1,1 lần), "
          "và khi cả hai cùng được biên dịch, INT4 vẫn nhanh hơn FP32 (hơn 1,3 lần).")
    print("mục tiêu: INT4 biên dịch ≥ 2,5 × FP32 eager:", "đạt" if versus_eager >= 2.5 else "chưa đạt trên máy này")
else:
    print("Không khẳng định gì về torch.compile trên máy này (không biên dịch được, hoặc nhân int4 chạy mã vô hướng).")''',
    "fast-roofline": '''shown = list(timed) + [n for n in rates_c if n.endswith("(compile)")]
measured = rates | {n: r for n, r in rates_c.items() if n.endswith("(compile)")}
bound_of = {n: bound[n.removesuffix(" (compile)")] for n in shown}
fig, ax = plt.subplots(figsize=(9, 4.2))
xs = np.arange(len(shown))
ax.bar(xs - 0.2, [bound_of[n] for n in shown], 0.4, label="trần (băng thông / byte mỗi bước)", color="#cccccc")
ax.bar(xs + 0.2, [measured[n] for n in shown], 0.4, label="tg đo được (trung vị)", color="#3b75af")
for x, n in zip(xs, shown):
    ax.text(x + 0.2, measured[n], f"{measured[n] / bound_of[n]:.0%}", ha="center", va="bottom", fontsize=7)
ax.set_xticks(xs, shown, rotation=40, ha="right")
ax.set_ylabel(f"tg: token/giây, lô 1, ngữ cảnh {CONTEXT}")
ax.set_title("SmolLM2-135M trên máy này: trần mái nhà và tốc độ sinh đo được (số trên cột: % của trần)")
ax.legend()
fig.tight_layout()
plt.show()''',
    "aa4bfe89": '''if fast.llama_cpp_available():
    cpp_files = {**files, "q4_1 (gốc)": source}
    runners = {f"llama.cpp {k}": fast.LlamaCpp(p, n_ctx=CONTEXT + NEW) for k, p in cpp_files.items()}
    runs_cpp = {"pytorch-fp32": timers["fp32"], "pytorch-int4-ours-head8": timers["int4-ours-head8"]} | runners
    timed_cpp = fast.time_pp_tg(runs_cpp, context, NEW, rounds=ROUNDS)  # llama.cpp's eval calls, timed like our loop
    rates_cpp = {n: r.tg.median for n, r in timed_cpp.items()}
    for cpp in runners.values():
        cpp.close()  # llama.cpp keeps the file memory-mapped until then (Windows cannot delete it)
    ppl_cpp = {}
    for k, p in progress_bar(list(cpp_files.items()), desc="llama.cpp perplexity"):
        with fast.LlamaCpp(p, logits_all=True) as cpp:
            ppl_cpp[k] = {d: cpp.perplexity(evaluator.windows[d]) for d in domains}
else:
    print(fast.INSTALL_LLAMA_CPP)''',
    "efea5902": '''if fast.llama_cpp_available():
    kv_f16 = R.kv_bytes_per_token(model, torch.float16)  # llama.cpp keeps its KV cache in F16 by default
    print(f"{'đường chạy':>24} {'tg token/s':>11} {'× PyTorch FP32':>15} {'% trần':>7} {'pp token/s':>11} "
          + " ".join(f"{'ppl ' + d:>16}" for d in domains))
    for k, r in timed_cpp.items():
        fmt = k.removeprefix("llama.cpp ")
        if k.startswith("llama.cpp"):  # llama.cpp reads the whole file once per token (embedding rows aside)
            b = R.context_bound(cpp_files[fmt].stat().st_size, kv_f16, CONTEXT, machine.bandwidth)
            ppl = ppl_cpp[fmt]
        else:
            n = k.removeprefix("pytorch-")
            b, ppl = bound[n], {d: quality[n][d].ppl for d in domains}
        tg, pp = r.tg.median, "—" if r.pp is None else f"{r.pp.median:.0f}"
        print(f"{k:>24} {tg:>11.1f} {tg / rates_cpp['pytorch-fp32']:>15.2f} {tg / b:>7.0%} {pp:>11} "
              + " ".join(f"{ppl[d]:>16.2f}" for d in domains))
    print(f"llama.cpp Q4_0 / llama.cpp F32 (cùng runtime): {rates_cpp['llama.cpp q4_0'] / rates_cpp['llama.cpp f32']:.2f}")
    print(f"llama.cpp Q4_0 / llama.cpp F16 (cùng runtime): {rates_cpp['llama.cpp q4_0'] / rates_cpp['llama.cpp f16']:.2f}")''',
}

# ----------------------------------------------------------------------------- new cells, after fast-roofline
NEW_CELLS = [
    ("markdown", "kv-intro", r'''### Ngữ cảnh dài: bộ đệm KV cũng phải đọc

Trần ở trên gần như chỉ tính trọng số: với `CONTEXT` token ngữ cảnh, bộ đệm KV còn nhỏ. Nhưng mỗi bước sinh đọc **toàn bộ bộ đệm KV** (KV cache) — khóa (key) và giá trị (value) của mọi token trước đó, ở mọi lớp — và mỗi token ngữ cảnh làm bộ đệm lớn thêm

$$
\text{byte KV mỗi token} = 2 \cdot L \cdot H_{kv} \cdot d_{\text{head}} \cdot b,
$$

với $L$ lớp, $H_{kv}$ đầu key-value (SmolLM2 dùng grouped-query attention: 3 đầu KV cho 9 đầu query), $d_{\text{head}}$ chiều mỗi đầu, và $b$ byte mỗi phần tử: 4 ở FP32, 2 ở BF16 — bộ đệm giữ kiểu của kích hoạt, nên các đường thấp bit của ta có bộ đệm BF16. Sau $C$ token ngữ cảnh, một bước đọc

$$
\text{byte mỗi bước}(C) = \text{byte trọng số} + C \cdot \text{byte KV mỗi token},
\qquad
\text{token/giây} \le \frac{\text{băng thông}}{\text{byte mỗi bước}(C)}.
$$

Phần trọng số cố định, phần bộ đệm tăng tuyến tính theo $C$: trọng số càng được nén mạnh, bộ đệm càng sớm chiếm phần lớn số byte. Ô dưới đếm cả hai — số byte KV đếm từ chính bộ đệm mà vòng lặp ở trên đã cấp phát — và tìm độ dài ngữ cảnh mà từ đó bộ đệm lớn hơn trọng số của từng đường chạy.'''),
    ("code", "kv-bytes", '''kv_fp32, kv_bf16 = R.kv_bytes_per_token(model), R.kv_bytes_per_token(model, torch.bfloat16)
print(f"bộ đệm KV mỗi token ngữ cảnh: {kv_fp32:,} byte ở FP32, {kv_bf16:,} byte ở BF16; {R.kv_shape(model)}")
print(f"ngữ cảnh tối đa của mô hình: {model.config.max_position_embeddings:,} token")
shown_kv = ["fp32", "bf16", "int8-ours", "int4-ours", "int4-ours-head8", "int4-ours-head"]
overtake = {n: R.cache_overtakes_weights(weight_bytes[n], kv_bytes[n]) for n in shown_kv}
print(f"{'đường chạy':>16} {'byte trọng số':>14} {'byte KV/token':>14} {'KV > trọng số từ C =':>21}")
for n in shown_kv:
    print(f"{n:>16} {weight_bytes[n]:>14,} {kv_bytes[n]:>14,} {overtake[n]:>21,}")
assert kv_bytes["fp32"] == kv_fp32 == 2 * 30 * 3 * 64 * 4  # counted from the loop's cache = the formula
assert kv_bytes["int4-ours-head8"] == kv_bf16  # the low-bit paths keep their cache in BF16
assert overtake["int4-ours-head8"] < model.config.max_position_embeddings < overtake["fp32"]
print("Bộ đệm đếm được khớp công thức; với INT4 (lm_head INT8) bộ đệm BF16 vượt trọng số trước giới hạn ngữ cảnh "
      "của mô hình, còn với FP32 thì không lần nào trong giới hạn ấy.")'''),
    ("code", "kv-roofline", '''lengths = np.arange(0, model.config.max_position_embeddings + 1, 64)
colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
fig, ax = plt.subplots(figsize=(8, 4.4))
for label, per, color in (("bộ đệm KV, FP32", kv_fp32, "black"), ("bộ đệm KV, BF16", kv_bf16, "dimgray")):
    ax.plot(lengths, lengths * per / 1e6, color=color, lw=2, label=label)
for i, n in enumerate(shown_kv):
    color = colors[i % len(colors)]
    ax.axhline(weight_bytes[n] / 1e6, color=color, ls="--", lw=1, label=f"trọng số {n}")
    if overtake[n] <= lengths[-1]:  # where this path's own cache line crosses its weights
        ax.plot(overtake[n], weight_bytes[n] / 1e6, "o", color=color)
ax.set_xlabel("độ dài ngữ cảnh C (token)")
ax.set_ylabel("MB đọc mỗi bước sinh")
ax.set_title("Byte mỗi bước: trọng số (ngang) và bộ đệm KV (tăng theo C); chấm: nơi bộ đệm vượt trọng số")
ax.legend(fontsize=7, ncol=2)
fig.tight_layout()
plt.show()'''),
    ("markdown", "sweep-intro", r'''Bây giờ đo: một lượt quét ngắn trên hai độ dài ngữ cảnh, `CONTEXT` và 512 token (cùng phần văn bản giữ lại), cho FP32 và `int4-ours-head8` (chỉ FP32 khi nhân int4 chạy mã vô hướng), 3 vòng xen kẽ, cùng vòng lặp như trên. pp ở đây là một lượt forward qua đúng $C$ token ngữ cảnh ấy. Ở 512 token, bộ đệm còn nhỏ so với trọng số (bảng trên cho biết từ đâu nó vượt), nên đây là lượt quét để *thấy cách đo*, chưa phải để thấy bộ đệm thắng. Lượt quét đầy đủ — 64, 512 và 2.048 token, một luồng và mọi luồng, cả llama.cpp — là việc của bảng đo chuẩn cuối chương: ở 2.048 token, riêng các lượt nạp ngữ cảnh đã mất hàng chục giây cho mỗi đường.'''),
    ("code", "sweep-run", '''swept = ["fp32", "int4-ours-head8"] if fast_kernels else ["fp32"]
sweep = fast.context_sweep({n: timers[n] for n in swept}, tokens, (CONTEXT, 512), NEW, rounds=3)'''),
    ("code", "sweep-table", '''print(f"{'đường chạy':>16} {'C':>5} {'tg token/s':>20} {'trần':>7} {'% trần':>7} {'pp token/s':>11}")
for length, group in sweep.items():
    for n, r in group.items():
        b = R.context_bound(weight_bytes[n], kv_bytes[n], length, machine.bandwidth)
        tg = f"{r.tg.median:.1f} ({r.tg.low:.1f}–{r.tg.high:.1f})"
        pp = "—" if r.pp is None else f"{r.pp.median:.0f}"
        print(f"{n:>16} {length:>5} {tg:>20} {b:>7.1f} {r.tg.median / b:>7.0%} {pp:>11}")'''),
    ("code", "sweep-claims", '''long = sweep[512]
assert long["fp32"].pp.median > 2 * long["fp32"].tg.median, (long["fp32"].pp, long["fp32"].tg)
print("Ở 512 token, FP32 xử lý lời nhắc nhanh gấp hơn 2 lần tốc độ sinh từng token (pp > 2 × tg).")
if fast_kernels:
    assert long["int4-ours-head8"].tg.median > 1.1 * long["fp32"].tg.median
    print("Sau 512 token ngữ cảnh, INT4 của ta vẫn sinh nhanh hơn FP32 (hơn 1,1 lần).")'''),
    ("markdown", "sweep-read", r'''Hai điều đọc được từ bảng. Thứ nhất, pp lớn hơn tg nhiều lần: xử lý lời nhắc đưa cả trăm token qua mỗi trọng số trong **một** lượt đọc, nên nó là bài toán tính (compute-bound), còn sinh từng token là bài toán đọc bộ nhớ. Vì thế hai con số phải được báo riêng, và "token/giây" của cả một lời gọi `generate` (gộp cả hai) thay đổi theo độ dài lời nhắc chứ không nói gì rõ ràng. Thứ hai, trần của tg giảm khi $C$ tăng, và giảm nhanh hơn với các đường đọc ít byte trọng số: ở ngữ cảnh dài, nén bộ đệm KV (lượng tử hóa bộ đệm, ít đầu KV hơn) mua được nhiều hơn nén trọng số thêm nữa. Bảng đo chuẩn (`python -m lightweight.bench.fast`) đo tới 2.048 token, với một luồng và mọi luồng, và cả llama.cpp.'''),
]

# ----------------------------------------------------------------------------- markdown: single paragraphs
PARAGRAPHS = [  # (cell id, the paragraph's first words, its new text)
    ("6149f9f3", "Đo tốc độ", r'''Đo tốc độ theo cách của `llama-bench` (công cụ đo của llama.cpp): hai con số **tách riêng**. **pp** (prompt processing — xử lý lời nhắc) là số token mỗi giây của **một** lượt forward qua cả lời nhắc $P$ token: mọi token cùng đi qua mỗi ma trận trọng số trong một lần đọc. **tg** (text generation — sinh văn bản) là số token mỗi giây khi sinh $n$ token mới, từng token một, sau $C$ token ngữ cảnh đã nạp sẵn vào bộ đệm KV; thời gian nạp ngữ cảnh ấy **không** tính vào tg. Đo cả lời gọi `generate` bằng một đồng hồ là trộn hai bài toán khác hẳn nhau. Mọi đường PyTorch chạy **cùng một vòng lặp** (`fast.StaticLoop`: bộ đệm KV cấp phát trước, chọn token có xác suất lớn nhất — greedy); `generate` của transformers có một dòng riêng, `fp32 (generate)`, vì đó là thứ người dùng thường chạy. Ngữ cảnh là `CONTEXT` token đầu tiên của phần Shakespeare giữ lại (không ngẫu nhiên: giống nhau mọi lần chạy). Mỗi vòng chạy lần lượt mọi đường, vòng sau bắt đầu lệch một đường; ta lấy trung vị và min–max qua `ROUNDS` vòng (24 token mới sau 64 token ngữ cảnh, 5 vòng khi nhân int4 vector hóa; 8 token sau 16, 3 vòng khi không, để notebook vẫn chạy xong trong vài phút).'''),
    ("ca81b21c", "Bảng đo chuẩn (`python -m lightweight.bench.fast`)", r'''Bảng đo chuẩn (`python -m lightweight.bench.fast`) ghi token/giây tuyệt đối của pp và tg cho mọi đường chạy (cả bản biên dịch, `generate` và llama.cpp), lượt quét ngữ cảnh tới 2.048 token với một luồng và mọi luồng, cỡ lô 8, băng thông đo được và số byte mỗi bước (để ai cũng tính lại được mọi phần trăm của trần), cùng tỉ số perplexity so với FP32 kèm khoảng tin cậy 95%.'''),
]
TAILS = [  # (cell id, the words a tail of one paragraph starts with, its new text)
    ("compile-intro", "Để mọi bước có cùng kích thước", r'''Để phép so công bằng, bản biên dịch chạy **đúng vòng lặp** của bản eager ở trên (`fast.StaticLoop`: bộ đệm KV cấp phát trước, nên mọi bước có cùng kích thước và không phải biên dịch lại); chỉ bước sinh một token đi qua `torch.compile`, còn lượt nạp lời nhắc vẫn chạy eager, nên ở đây chỉ có tg. So bản biên dịch với `generate` sẽ trộn phần của trình biên dịch với phần của một vòng lặp khác. Lần gọi đầu tiên biên dịch: khoảng một đến hai phút cho mỗi mô hình trên CPU 2 lõi khi bộ đệm biên dịch của Inductor còn trống; các lần sau dùng lại bộ đệm đó nên nhanh hơn nhiều. Ta biên dịch cả FP32 lẫn `int4-ours-head8` (INT4 GPTQ trong các khối, `lm_head` INT8: gần như cùng chất lượng với `int4-ours`, ít byte hơn), để có cả tỉ số trong **cùng một cách chạy**. Các nhân đã biên dịch giữ số luồng của lúc biên dịch, nên ta chỉ đo chúng với số luồng ấy.'''),
]
BULLETS = [  # (cell id, the line after which to insert, the new line)
    ("ca81b21c", "- Phần việc không phụ thuộc số bit", "- Xử lý lời nhắc (pp) là bài toán tính, sinh từng token (tg) là bài toán đọc bộ nhớ: đo riêng hai việc, và so eager với biên dịch trong cùng một vòng lặp. Mỗi bước sinh còn đọc cả bộ đệm KV: với trọng số INT4, bộ đệm BF16 vượt trọng số trước khi hết ngữ cảnh của mô hình."),
]
SUBSTITUTIONS = [  # (cell id, old text, new text): the evaluator's new API (windows of 512 tokens)
    ("fe88b704", "Evaluator(model, tokenizer, n_tokens=1024, kl_tokens=512)", "Evaluator(model, tokenizer, n_windows=2, kl_windows=1)"),
]


def _clear(cell) -> None:
    cell.outputs, cell.execution_count = [], None


def patch(nb) -> list[str]:
    """Apply every change to ``nb`` in place; return one line per change (or warning)."""
    log = []
    by_id = {c.get("id"): c for c in nb.cells}
    for cid, source in CODE.items():
        cell = by_id.get(cid)
        if cell is None or cell.cell_type != "code":
            log.append(f"WARNING: code cell {cid} not found: not changed")
        elif cell.source != source:
            cell.source = source
            _clear(cell)
            log.append(f"code cell {cid}: replaced (outputs cleared)")
    for cid, start, new in PARAGRAPHS:
        cell = by_id.get(cid)
        paras = cell.source.split("\n\n") if cell is not None else []
        if new in paras:
            continue
        hits = [i for i, p in enumerate(paras) if p.startswith(start)]
        if len(hits) != 1:
            log.append(f"WARNING: markdown cell {cid}: no single paragraph starting {start!r}: not changed")
            continue
        paras[hits[0]] = new
        cell.source = "\n\n".join(paras)
        log.append(f"markdown cell {cid}: paragraph {start!r}… rewritten")
    for cid, start, new in TAILS:
        cell = by_id.get(cid)
        if cell is None or new in cell.source:
            continue
        paras = cell.source.split("\n\n")
        hits = [i for i, p in enumerate(paras) if start in p]
        if len(hits) != 1:
            log.append(f"WARNING: markdown cell {cid}: no single paragraph containing {start!r}: not changed")
            continue
        p = paras[hits[0]]
        paras[hits[0]] = p[: p.index(start)] + new
        cell.source = "\n\n".join(paras)
        log.append(f"markdown cell {cid}: from {start!r} to the paragraph's end rewritten")
    for cid, after, line in BULLETS:
        cell = by_id.get(cid)
        if cell is None or line in cell.source:
            continue
        lines = cell.source.split("\n")
        hits = [i for i, x in enumerate(lines) if x.startswith(after)]
        if len(hits) != 1:
            log.append(f"WARNING: markdown cell {cid}: no single line starting {after!r}: bullet not added")
            continue
        lines.insert(hits[0] + 1, line)
        cell.source = "\n".join(lines)
        log.append(f"markdown cell {cid}: bullet added after {after!r}…")
    for cid, old, new in SUBSTITUTIONS:
        cell = by_id.get(cid)
        if cell is None or new in cell.source:
            continue
        if old not in cell.source:
            log.append(f"WARNING: cell {cid}: {old!r} not found (changed by someone else?): not changed")
            continue
        cell.source = cell.source.replace(old, new)
        if cell.cell_type == "code":
            _clear(cell)
        log.append(f"cell {cid}: {old!r} -> {new!r}")
    anchor = "fast-roofline"
    for kind, cid, source in NEW_CELLS:
        ids = [c.get("id") for c in nb.cells]
        if cid in ids:
            cell = nb.cells[ids.index(cid)]
            if cell.source != source:
                cell.source = source
                if kind == "code":
                    _clear(cell)
                log.append(f"{kind} cell {cid}: updated")
        else:
            if anchor not in ids:
                log.append(f"WARNING: cell {anchor} not found: {cid} not inserted")
                continue
            cell = nbformat.v4.new_code_cell(source) if kind == "code" else nbformat.v4.new_markdown_cell(source)
            cell["id"] = cid
            nb.cells.insert(ids.index(anchor) + 1, cell)
            log.append(f"{kind} cell {cid}: inserted after {anchor}")
        anchor = cid
    return log


def leftovers(nb) -> list[str]:
    """Names the old timing cells defined that no cell defines any more, if some cell still uses them."""
    import re

    gone = ("byte_count", "runs[", "runs_b", "prompt", "interleaved_rates")
    out = []
    for i, c in enumerate(nb.cells):
        if c.cell_type == "code":
            for name in gone:
                if re.search(rf"(?<![\w.]){re.escape(name)}(?!\w)", c.source):
                    out.append(f"cell {i} ({c.get('id')}) still uses {name!r}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dry-run", action="store_true", help="print the changes, write nothing")
    parser.add_argument("--path", type=Path, default=PATH)
    args = parser.parse_args(argv)
    if not args.path.exists():
        print(f"{args.path} not found: run from the repository root", file=sys.stderr)
        return 2
    nb = nbformat.read(args.path, as_version=4)
    log = patch(nb)
    nbformat.validate(nb)
    for line in log + [f"WARNING: {x}" for x in leftovers(nb)]:
        print(line)
    if not log:
        print("nothing to change: the notebook is already patched")
        return 0
    if args.dry_run:
        print("(dry run: nothing written)")
        return 0
    nbformat.write(nb, args.path)
    print(f"wrote {args.path}. Next: re-execute it and regenerate the labs (see this script's docstring).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
