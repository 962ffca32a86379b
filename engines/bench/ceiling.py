"""The GPU's measured dense matmul rates: the ceilings the crop scorer is held to.

Measured in the same run as the scorer, because the rate a GPU sustains (clocks, power, other
tenants) is what a fraction of it means; the datasheet peak is not.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch

CEILING_SIZE = 8192


def _rate(run: Callable[[], object], device: str, size: int, seconds: float) -> float:
    def sync() -> None:
        if torch.device(device).type == "cuda":
            torch.cuda.synchronize(device)

    for _ in range(3):
        run()
    sync()
    runs, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds or runs < 10:
        run()
        runs += 1
        if runs % 10 == 0:
            sync()
    sync()
    return 2 * size**3 * runs / (time.perf_counter() - start) / 1e12


def matmul_tflops(device: str = "cuda", dtype: torch.dtype = torch.bfloat16,
                  size: int = CEILING_SIZE, seconds: float = 2.0) -> float:
    """TFLOP/s of ``size``^3 matmuls in ``dtype`` (bf16 on a GPU; fp32 is the CPU's)."""
    a = torch.randn(size, size, device=device, dtype=dtype)
    b = torch.randn(size, size, device=device, dtype=dtype)
    return _rate(lambda: torch.matmul(a, b), device, size, seconds)


def fp8_matmul_tflops(device: str = "cuda", size: int = CEILING_SIZE,
                      seconds: float = 2.0) -> float:
    """TFLOP/s of ``size``^3 e4m3 matmuls with bf16 output (``torch._scaled_mm``, the kernel
    FP8 linear layers run); needs compute capability >= 8.9."""
    a = torch.randn(size, size, device=device).to(torch.float8_e4m3fn)
    b = torch.randn(size, size, device=device).to(torch.float8_e4m3fn).t()  # column-major
    one = torch.ones((), device=device)
    return _rate(lambda: torch._scaled_mm(a, b, scale_a=one, scale_b=one,
                                          out_dtype=torch.bfloat16), device, size, seconds)
