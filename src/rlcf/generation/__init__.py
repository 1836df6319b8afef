"""Generation backends: one interface for sampling responses and for taking new weights after an update
(`base.GenerationBackend`); `hf` (the policy samples itself) and `vllm` (a colocated engine) behind it."""

from __future__ import annotations

from torch import nn

from ..config import RolloutConfig
from ..models.ilql import is_ilql_folder
from ..models.sampling import decode, sample_from_logits
from .base import Generation, GenerationBackend, eval_mode, plain_generation_config
from .hf import HFBackend
from .vllm import VLLMBackend

__all__ = ["Generation", "GenerationBackend", "HFBackend", "VLLMBackend", "decode", "eval_mode", "make_backend",
           "plain_generation_config", "sample_from_logits"]


def make_backend(sampling: RolloutConfig, model: nn.Module, tokenizer, eos_ids: set[int],
                 model_path: str | None = None, dtype: str = "float32", seed: int = 0,
                 trust_remote_code: bool = False) -> GenerationBackend:
    """The backend `sampling.backend` names, for `model` (hf) or for the weights in `model_path` (vllm, which
    loads its own copy; the caller pushes trained weights with update_weights)."""
    if sampling.backend == "hf":
        return HFBackend(model, tokenizer.pad_token_id, eos_ids, sampling.generation_chunk)
    if sampling.backend == "vllm":
        if model_path is not None and is_ilql_folder(model_path):
            raise ValueError(f"{model_path} is an ILQL model: vLLM would sample its language model without the "
                             "advantage term; use --rollout.backend hf")

        return VLLMBackend(model_path, tokenizer, eos_ids, sampling, dtype=dtype, seed=seed,
                           trust_remote_code=trust_remote_code)
    raise ValueError(f"rollout.backend={sampling.backend!r}: choose hf or vllm")
