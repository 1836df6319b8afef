"""The one place an accelerate.Accelerator is made, for the RL loop and the supervised stages, and the few things a
sharded (FSDP2) run needs beyond it."""

from __future__ import annotations

import contextlib
import os

import torch
from accelerate import Accelerator, PartialState
from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
from torch.distributed.fsdp import FSDPModule, register_fsdp_forward_method

from ..errors import ConfigError

DEEPSPEED_REFUSED = (
    "this launch's accelerate config says distributed_type: DEEPSPEED, which rlcf does not run: a ZeRO optimiser keeps "
    "its state in DeepSpeed's own partitioned format, which rlcf's checkpoints (whole, by parameter name, resumable "
    "on any number of processes) neither write nor read, and the DeepSpeed path has never run in rlcf's tests "
    "(accelerate takes DeepSpeed only on a GPU). Shard with FSDP2 instead, the same memory saving as ZeRO-3: "
    "accelerate launch --config_file configs/accelerate/fsdp.yaml -m rlcf.cli ... (docs/scaling.md)")


def make_accelerator(**kwargs):
    """accelerate.Accelerator(**kwargs). On a machine with no accelerator it is told so (cpu=True): processes
    started by `accelerate launch --multi_gpu --num_processes N` (torchrun) then join one gloo process group on
    the CPU, where accelerate would otherwise leave each of them training alone.

    A launch with FSDP settings (`distributed_type: FSDP`, fsdp_version 2) shards there too: accelerate takes FSDP
    only on an accelerator device, but torch's fully_shard runs on CPU tensors over gloo, so the state is told FSDP
    and `prepare` then shards through accelerate's own FSDP2 code, the path a GPU run takes."""
    if os.environ.get("ACCELERATE_USE_DEEPSPEED", "false").lower() == "true":
        raise ConfigError(DEEPSPEED_REFUSED)
    has_mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    has_xpu = hasattr(torch, "xpu") and torch.xpu.is_available()
    cpu = not (torch.cuda.is_available() or has_mps or has_xpu)
    accelerator = Accelerator(cpu=cpu, **kwargs)
    if (cpu and accelerator.distributed_type == DistributedType.MULTI_CPU
            and os.environ.get("ACCELERATE_USE_FSDP", "false").lower() == "true"):
        accelerator.state.distributed_type = DistributedType.FSDP
        # the launch's FSDP_* settings, as accelerate reads them
        accelerator.state.fsdp_plugin = FullyShardedDataParallelPlugin()
        PartialState._shared_state["distributed_type"] = DistributedType.FSDP  # what later AcceleratorState()s read
    if is_sharded(accelerator) and accelerator.state.fsdp_plugin.fsdp_version != 2:
        raise ConfigError("rlcf shards with FSDP2: set fsdp_version: 2 in the accelerate config's fsdp_config "
                          "(as configs/accelerate/fsdp.yaml does)")
    return accelerator


def is_sharded(accelerator) -> bool:
    """Whether `prepare` shards the model's parameters across processes (FSDP2)."""
    return accelerator.distributed_type == DistributedType.FSDP


@contextlib.contextmanager
def gathered(module: torch.nn.Module):
    """Within the block, every FSDP2 unit in `module` holds its full parameters and keeps them across forwards:
    sampling gathers the policy once per rollout instead of once per decoded token. Outside FSDP, nothing."""
    units = [m for m in module.modules() if isinstance(m, FSDPModule)]
    reshards = [_reshards_after_forward(unit) for unit in units]
    for unit in units:
        unit.unshard()
        unit.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for unit, before in zip(units, reshards):
            unit.reshard()
            unit.set_reshard_after_forward(before, recurse=False)


def _reshards_after_forward(unit) -> bool:
    """Whether an FSDP2 unit frees its gathered parameters after each forward (the launch's fsdp_reshard_after_forward;
    torch has no public getter: read from its parameter group, True when that is not there)."""
    group = getattr(unit._get_fsdp_state(), "_fsdp_param_group", None)
    return group is None or getattr(group, "post_forward_mesh_info", True) is not None


def register_entry_points(model: torch.nn.Module) -> None:
    """FSDP2 gathers a module's parameters before its forward() only; the methods a model lists in `entry_points`
    (PolicyModels: sampling, the reference's log-probs...) are registered as forwards too, so the prepared root is
    set up first, whichever of them runs first, and its own parameters are gathered for each."""
    for name in getattr(model, "entry_points", ()):
        register_fsdp_forward_method(model, name)


def full_state_everywhere(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """A sharded module's full state dict on every process (accelerate's get_state_dict gives it to the main
    process only): each process's sampling engine takes the whole model. A collective."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True))


def adamw(params, lr: float, betas, weight_decay: float) -> torch.optim.AdamW:
    """torch's fused AdamW where it exists (CPU and CUDA, floating-point weights): one kernel over all tensors,
    0.12 s a step for a 135M model on 2 CPU cores against 0.58 s for the default per-tensor loop."""
    groups = list(params)
    tensors = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = bool(tensors) and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in tensors)
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(betas), weight_decay=weight_decay, fused=fused or None)
