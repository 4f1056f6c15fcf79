"""Device and dtype resolution shared by the backends and the discriminator."""

from __future__ import annotations

import gc
from typing import TYPE_CHECKING

from workers.errors import DeviceError

if TYPE_CHECKING:
    import torch

DTYPES = ("fp32", "fp16", "bf16")


def resolve_device(device: str | None = "auto") -> torch.device:
    """``auto`` picks CUDA when present; asking for CUDA on a machine without it fails now,
    not at the first batch."""
    import torch

    name = (device or "auto").strip().lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except (RuntimeError, ValueError) as exc:
        raise DeviceError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from exc
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            raise DeviceError(f"device {device!r} asked for, but CUDA is not available here")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            raise DeviceError(
                f"device {device!r} asked for, but only {torch.cuda.device_count()} GPU(s) exist"
            )
    elif dev.type != "cpu":
        raise DeviceError(f"unsupported device {device!r} (use auto, cpu, cuda or cuda:N)")
    return dev


def resolve_dtype(dtype: str | None, device: torch.device) -> torch.dtype:
    """Half precision on GPUs by default (fp16), fp32 on CPU; fp16 on CPU is refused because
    most CPU kernels lack it and it would fail half-way through a batch."""
    import torch

    name = (dtype or ("fp16" if device.type == "cuda" else "fp32")).lower()
    table = {"fp32": torch.float32, "float32": torch.float32, "fp16": torch.float16,
             "float16": torch.float16, "bf16": torch.bfloat16, "bfloat16": torch.bfloat16}
    if name not in table:
        raise DeviceError(f"unknown dtype {dtype!r} (use one of {', '.join(DTYPES)})")
    if table[name] is torch.float16 and device.type != "cuda":
        raise DeviceError("dtype fp16 needs a CUDA device; use fp32 or bf16 on CPU")
    return table[name]


def free_memory(device: torch.device | None) -> None:
    """Collect garbage and give cached CUDA blocks back to the driver."""
    gc.collect()
    if device is not None and device.type == "cuda":
        import torch

        torch.cuda.empty_cache()
