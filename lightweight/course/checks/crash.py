"""What a student's crash report says: the line of their code that raised, the tensors on it, and a hint.

:func:`crash_message` walks the traceback to the last frame in the student's own code (a notebook
cell or any file outside the ``lightweight`` package, the standard library and site-packages),
names that line, lists the shapes and dtypes of the tensors named on it, and adds a hint for the
common errors (a matmul with mismatched shapes, a wrong broadcast, ``view`` of a non-contiguous
tensor, ``k`` too large for ``topk``, a dtype mismatch, an undefined name).
"""

from __future__ import annotations

import linecache
import os
import re
import site
import sys
import sysconfig
import traceback
from pathlib import Path

import torch


def _library_dirs() -> tuple[str, ...]:
    dirs = {str(Path(__file__).resolve().parents[2])}  # the whole lightweight package
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        if sysconfig.get_paths().get(key):
            dirs.add(str(Path(sysconfig.get_paths()[key]).resolve()))
    try:
        dirs.update(str(Path(p).resolve()) for p in [*site.getsitepackages(), site.getusersitepackages()])
    except AttributeError:  # site is stripped down in some embedded interpreters
        pass
    dirs.update(str(Path(p).resolve()) for p in {sys.prefix, sys.base_prefix, sys.exec_prefix})
    return tuple(sorted(dirs))


_LIBRARY_DIRS = _library_dirs()


def _is_student_file(filename: str) -> bool:
    if filename.startswith("<"):
        return filename.startswith("<ipython-input")
    path = str(Path(filename).resolve())
    return not any(path == d or path.startswith(d + os.sep) for d in _LIBRARY_DIRS)


_HINTS: list[tuple[str, str]] = [
    (r"cannot be multiplied|size mismatch, got|Expected size for first two dimensions of batch2|"
     r"both arguments to matmul|inconsistent tensor size",
     "phép nhân ma trận cần số cột của toán hạng trái bằng số hàng của toán hạng phải. Hãy in hình dạng hai toán hạng "
     "(print(a.shape, b.shape)); có thể một bên cần chuyển vị (.T)."),
    (r"must match the size of tensor b|The size of tensor a .* must match",
     "hai tensor không khớp hình dạng để phát (broadcast) theo từng phần tử. In hình dạng của chúng; "
     "thêm một chiều bằng [:, None] hoặc [None, :] cho đúng trục."),
    (r"view size is not compatible", "tensor không liên tục trong bộ nhớ: dùng .reshape(...) thay cho .view(...)."),
    (r"is invalid for input of size", "số phần tử không khớp với hình dạng mới trong view/reshape: kiểm tra lại các kích thước."),
    (r"selected index k out of range|k not in range|out of range for tensor of size",
     "k lớn hơn số phần tử trên chiều đó (topk/kthvalue): kiểm tra cách tính k và chiều dim."),
    (r"Dimension out of range|IndexError|out of bounds|index .* is out of",
     "chỉ số hoặc chiều (dim) vượt quá kích thước tensor: in hình dạng tensor và kiểm tra chiều bạn dùng."),
    (r"expected scalar type|must have the same dtype|expected m1 and m2 to have the same dtype|"
     r"found dtype|Expected object of scalar type|result type .* can't be cast",
     "kiểu dữ liệu (dtype) của hai tensor không khớp: đổi bằng .float(), .to(torch.int16) hay .to(x.dtype) cho cùng kiểu."),
    (r"leaf Variable that requires grad is being used in an in-place operation",
     "đừng sửa tại chỗ một tensor cần gradient: làm trên bản sao (.clone()) hoặc trong `with torch.no_grad():`."),
    (r"does not require grad and does not have a grad_fn",
     "loss không còn gắn với đồ thị tính gradient: đừng tính nó trong torch.no_grad(), đừng .detach() hay .item() trước .backward()."),
    (r"backward through the graph a second time", "đồ thị đã được dùng cho một lần .backward(): tính lại loss trước mỗi lần lan truyền ngược."),
    (r"Can't call numpy\(\) on Tensor that requires grad", "gọi .detach() trước .numpy() hoặc .tolist()."),
    (r"positional argument|unexpected keyword argument|takes \d+ positional",
     "giữ nguyên chữ ký của hàm (tên, số và thứ tự tham số) như trong ô bài tập."),
]


def _hint(e: BaseException) -> str:
    if isinstance(e, NameError):
        return ("tên này chưa được định nghĩa: ô định nghĩa nó đã chạy chưa, hay bị lỗi? Chạy lại các ô phía trên "
                "(Run All Above).")
    if isinstance(e, ZeroDivisionError):
        return "phép chia cho 0: xem lại trường hợp biên (chẳng hạn k = 0, sparsity = 0 hay một nhóm toàn số 0)."
    if isinstance(e, KeyError):
        return f"khóa {e} không có trong dict: in các khóa có thật bằng print(d.keys())."
    if isinstance(e, RecursionError):
        return "hàm gọi lại chính nó mãi không dừng."
    text = f"{type(e).__name__}: {e}"
    return next((hint for pattern, hint in _HINTS if re.search(pattern, text)), "")


def _tensor_shapes(frame, line: str) -> str:
    """``name (shape) dtype`` for the tensors named in ``line`` (looked up in the raising frame)."""
    found = []
    for name, transpose in re.findall(r"\b([A-Za-z_]\w*)(\.mT|\.T)?\b", line):
        value = frame.f_locals.get(name, frame.f_globals.get(name))
        label = name + transpose
        if isinstance(value, torch.Tensor) and label not in (f[0] for f in found):
            shape = tuple(value.mT.shape if transpose and value.dim() >= 2 else value.shape)
            found.append((label, f"{label} {shape} {str(value.dtype).replace('torch.', '')}"))
    return "; ".join(text for _, text in found)


def crash_message(e: BaseException) -> str:
    """What crashed, where in the student's code, and a hint for the common mistakes."""
    summary = str(e).strip().splitlines()[0] if str(e).strip() else ""
    text = f"hàm của bạn gây lỗi {type(e).__name__}" + (f": {summary}" if summary else "")
    frames = [(frame, lineno) for frame, lineno in traceback.walk_tb(e.__traceback__)
              if _is_student_file(frame.f_code.co_filename)]
    if frames:
        frame, lineno = frames[-1]
        line = linecache.getline(frame.f_code.co_filename, lineno, frame.f_globals).strip()
        text += f" — ở dòng {lineno} của `{frame.f_code.co_name}`" + (f": `{line}`" if line else "")
        shapes = _tensor_shapes(frame, line) if line and not isinstance(e, NameError) else ""
        if shapes:
            text += f" (trên dòng đó: {shapes})"
    hint = _hint(e)
    return text + "." + (f" Gợi ý: {hint}" if hint else "")
