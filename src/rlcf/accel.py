"""The one place an accelerate.Accelerator is made, for the RL loop and the supervised stages."""

from __future__ import annotations

import torch


def make_accelerator(**kwargs):
    """accelerate.Accelerator(**kwargs). On a machine with no accelerator it is told so (cpu=True): processes
    started by `accelerate launch --multi_gpu --num_processes N` (torchrun) then join one gloo process group on
    the CPU, where accelerate would otherwise leave each of them training alone."""
    from accelerate import Accelerator

    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    has_xpu = hasattr(torch, "xpu") and torch.xpu.is_available()
    return Accelerator(cpu=not (torch.cuda.is_available() or has_mps or has_xpu), **kwargs)
