"""Generation backends: one interface for sampling responses and for taking new weights after an update.

Used alike by RL rollouts, `rlcf label` and `rlcf eval` (`rollout.backend`):
- `hf`: transformers' generate() on the policy module itself; it shares the trained weights, so there is
  nothing to sync. It can also record the hidden state entering one block at every position (top_blocks
  mode keeps the frozen trunk's output from sampling, so no second trunk pass is needed).
- `vllm`: an in-process, colocated `vllm.LLM` (`pip install rlcf[vllm]`, see vllm_backend.py); after each
  optimizer step the changed tensors are pushed into it.

Whatever the backend, the policy's own forward re-scores the sampled tokens, and that alone feeds the loss.
Token ids in, token ids out: prompts are left-padded [B, Q] with a mask, responses come back right-padded
[B, T] with pad_id after EOS (the EOS itself kept), and K samples of one prompt are K consecutive rows.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Iterable, Protocol

import torch
from torch import Tensor, nn

from .config import RolloutConfig


@dataclass
class Generation:
    """What a backend returns for a batch of left-padded prompts [B, Q]."""

    response_ids: Tensor  # [B, T] long, sampled tokens, right-padded with pad_id after EOS
    logprobs: Tensor | None = None  # [B, T] float, the backend's own log-probs of the sampled tokens (diagnostics only)
    hidden: Tensor | None = None  # [B, Q + T, H] input of the captured block at every position (hf only), or None


class GenerationBackend(Protocol):
    name: str

    def generate(self, query_ids: Tensor, query_mask: Tensor, sampling: RolloutConfig,
                 capture: nn.Module | None = None) -> Generation:
        """Sample one response per row with sampling.{temperature, top_k, top_p, max_new_tokens}, nothing else.
        capture: a block of the policy whose input hidden state to record, if the backend can (else hidden=None)."""
        ...

    def update_weights(self, model: nn.Module, names: Iterable[str] | None = None) -> None:
        """Take the weights of `model` (a plain transformers causal LM); names: only these tensors changed."""
        ...


@contextlib.contextmanager
def plain_generation_config(model, pad_id: int, eos_ids: set[int]):
    """Generate with ONLY the sampling settings we pass: a model's own generation_config may carry a
    repetition penalty, min_new_tokens, suppressed tokens... that would make the samples come from a
    distribution other than the tempered softmax the log-probs are computed under."""
    from transformers import GenerationConfig

    saved = model.generation_config
    model.generation_config = GenerationConfig(pad_token_id=pad_id, eos_token_id=sorted(eos_ids),
                                               bos_token_id=saved.bos_token_id)
    try:
        yield
    finally:
        model.generation_config = saved


@contextlib.contextmanager
def eval_mode(*models):
    """Dropout off while sampling and scoring; each model's train/eval mode is restored after."""
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)


def sample_from_logits(logits: Tensor, temperature: float) -> Tensor:
    """One token per row from softmax(logits / temperature) [B, V] -> [B], by inverting the CDF at one uniform per
    row. The same distribution as torch.multinomial, which on a CPU costs about 50 ms for 32 rows of a 49k
    vocabulary (more than the model's own decode step): this takes about 4 ms."""
    probs = torch.softmax(logits.float() / temperature, dim=-1).double()
    cdf = probs.cumsum_(dim=-1)
    u = torch.rand(cdf.shape[0], 1, dtype=cdf.dtype, device=cdf.device) * cdf[:, -1:]
    return torch.searchsorted(cdf, u, right=True).squeeze(1).clamp_(max=cdf.shape[1] - 1)


@torch.no_grad()
def decode(model, query_ids: Tensor, query_mask: Tensor, sampling: RolloutConfig, pad_id: int,
           eos_ids: set[int], warpers=()) -> Tensor:
    """Sampling with the model's KV cache and `sample_from_logits`: samples from the same distribution as
    generate(do_sample=True), without its per-step overheads. `warpers` (transformers' logits warpers, e.g.
    top-k, top-p) act on the temperature-scaled logits, in transformers' order, and the token is then drawn as
    generate() draws it (ILQL's decoding wrapper uses this; HFBackend itself uses generate() for top-k/top-p). Position ids follow the attention mask; a finished row gets pad_id after its EOS.
    Returns [B, T] new tokens."""
    B = query_ids.shape[0]
    eos = torch.tensor(sorted(eos_ids), device=query_ids.device)
    attention_mask = query_mask.clone()
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    input_ids, cache, tokens = query_ids, None, []
    finished = torch.zeros(B, dtype=torch.bool, device=query_ids.device)
    for _ in range(sampling.max_new_tokens):
        out = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                    past_key_values=cache, use_cache=True, logits_to_keep=1)
        cache = out.past_key_values
        if warpers:  # drawn as generate() draws, so the same seed gives the same tokens
            scores = out.logits[:, -1].float() / sampling.temperature
            for w in warpers:
                scores = w(input_ids, scores)
            nxt = torch.multinomial(torch.softmax(scores, dim=-1), 1).squeeze(1)
        else:
            nxt = sample_from_logits(out.logits[:, -1], sampling.temperature)
        nxt = torch.where(finished, torch.full_like(nxt, pad_id), nxt)
        tokens.append(nxt)
        finished |= torch.isin(nxt, eos)
        if bool(finished.all()):
            break
        input_ids = nxt[:, None]
        position_ids = position_ids[:, -1:] + 1
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(B, 1)], dim=1)
    return torch.stack(tokens, dim=1)


class HFBackend:
    """The policy module itself, in chunks of `chunk_rows` rows: `decode` (plain temperature sampling), or
    transformers' generate() when top-k or top-p truncates the distribution."""

    name = "hf"

    def __init__(self, model: nn.Module, pad_id: int, eos_ids: set[int], chunk_rows: int = 64):
        self.model, self.pad_id, self.eos_ids, self.chunk_rows = model, pad_id, set(eos_ids), chunk_rows

    @torch.no_grad()
    def generate(self, query_ids: Tensor, query_mask: Tensor, sampling: RolloutConfig,
                 capture: nn.Module | None = None) -> Generation:
        from .models import capture_block_inputs

        chunks, hiddens = [], []
        Q = query_ids.shape[1]
        with eval_mode(self.model), plain_generation_config(self.model, self.pad_id, self.eos_ids):
            for s in range(0, query_ids.shape[0], self.chunk_rows):
                q, m = query_ids[s : s + self.chunk_rows], query_mask[s : s + self.chunk_rows]
                recorder = capture_block_inputs(capture) if capture is not None else contextlib.nullcontext(None)
                with recorder as captured:
                    if sampling.top_k or sampling.top_p < 1.0:
                        out = self.model.generate(input_ids=q, attention_mask=m, do_sample=True,
                                                  temperature=sampling.temperature, top_k=sampling.top_k,
                                                  top_p=sampling.top_p, max_new_tokens=sampling.max_new_tokens)[:, Q:]
                    else:
                        out = decode(self.model, q, m, sampling, self.pad_id, self.eos_ids)
                chunks.append(out)
                if captured is not None:
                    # prefill sees the Q prompt positions, then one call per new token but the last
                    h = torch.cat(captured, dim=1) if captured else None
                    hiddens.append(h if h is not None and h.shape[1] == Q + chunks[-1].shape[1] - 1 else None)
        width = max(c.shape[1] for c in chunks)
        response_ids = torch.cat([nn.functional.pad(c, (0, width - c.shape[1]), value=self.pad_id) for c in chunks])
        hidden = None
        if hiddens and all(h is not None for h in hiddens):
            # positions never fed to the model (the last token of each chunk, padding) stay zero: they only
            # influence their own outputs, which no log-prob reads
            hidden = torch.cat([nn.functional.pad(h, (0, 0, 0, Q + width - h.shape[1])) for h in hiddens])
        return Generation(response_ids=response_ids, hidden=hidden)

    def update_weights(self, model: nn.Module, names: Iterable[str] | None = None) -> None:
        """Nothing to do: generate() runs on the trained module itself."""


def make_backend(sampling: RolloutConfig, model: nn.Module, tokenizer, eos_ids: set[int],
                 model_path: str | None = None, dtype: str = "float32", seed: int = 0,
                 trust_remote_code: bool = False) -> GenerationBackend:
    """The backend `sampling.backend` names, for `model` (hf) or for the weights in `model_path` (vllm, which
    loads its own copy; the caller pushes trained weights with update_weights)."""
    if sampling.backend == "hf":
        return HFBackend(model, tokenizer.pad_token_id, eos_ids, sampling.generation_chunk)
    if sampling.backend == "vllm":
        from .ilql import is_ilql_folder
        from .vllm_backend import VLLMBackend

        if model_path is not None and is_ilql_folder(model_path):
            raise ValueError(f"{model_path} is an ILQL model: vLLM would sample its language model without the "
                             "advantage term; use --rollout.backend hf")

        return VLLMBackend(model_path, tokenizer, eos_ids, sampling, dtype=dtype, seed=seed,
                           trust_remote_code=trust_remote_code)
    raise ValueError(f"rollout.backend={sampling.backend!r}: choose hf or vllm")
