"""The rollout engine: K responses per prompt -> response masks -> scores -> old / reference log-probs."""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from .config import RolloutConfig
from .models import PolicyModels
from .rewards import RewardSource, RewardScaler
from .types import Rollout


def response_mask_from_ids(response_ids: Tensor, eos_ids: set[int]) -> tuple[Tensor, Tensor]:
    """Mask [B, T] of real response tokens (up to and including the first EOS) and truncated [B] flags.

    Works from the position of the first EOS, never from pad ids, so pad == eos cannot hide a real EOS.
    A response with no EOS (cut at max_new_tokens) keeps all its tokens and is flagged truncated.
    """
    is_eos = torch.zeros_like(response_ids, dtype=torch.bool)
    for e in eos_ids:
        is_eos |= response_ids == e
    T = response_ids.shape[1]
    positions = torch.arange(T, device=response_ids.device).expand_as(response_ids)
    first_eos = torch.where(is_eos, positions, torch.full_like(positions, T)).min(dim=1).values
    mask = (positions <= first_eos[:, None]).float()
    return mask, first_eos == T


def last_token_index(mask: Tensor) -> Tensor:
    """Index [B] of the last real token of each row of a right-padded mask."""
    return (mask.sum(dim=1).long() - 1).clamp(min=0)


def eos_token_ids(tokenizer, model) -> set[int]:
    ids = set()
    gen_eos = getattr(model.generation_config, "eos_token_id", None)
    for e in gen_eos if isinstance(gen_eos, (list, tuple)) else [gen_eos]:
        if e is not None:
            ids.add(int(e))
    if tokenizer.eos_token_id is not None:
        ids.add(int(tokenizer.eos_token_id))
    return ids


@dataclass
class Timings:
    generate: float = 0.0
    score: float = 0.0
    logprobs: float = 0.0


@contextlib.contextmanager
def _plain_generation_config(model, pad_id: int, eos_ids: set[int]):
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
def _eval_mode(*models):
    """Dropout off while sampling and scoring; each model's train/eval mode is restored after."""
    modes = [m.training for m in models]
    for m in models:
        m.eval()
    try:
        yield
    finally:
        for m, mode in zip(models, modes):
            m.train(mode)


@torch.no_grad()
def sample_responses(model, query_ids: Tensor, query_mask: Tensor, rollout: RolloutConfig, pad_id: int,
                     eos_ids: set[int], chunk_rows: int | None = None) -> Tensor:
    """Response ids [B, T] sampled for left-padded prompts [B, Q]; right-padded with pad_id after EOS.
    The one sampler of the RL loop, `rlcf label` and `rlcf eval`.

    Sampling: temperature, top_k, top_p and max_new_tokens of `rollout`, nothing else. Uses the torch
    random state: seed it (or fork it) around the call.
    """
    chunk_rows = chunk_rows or rollout.generation_chunk
    chunks = []
    with _eval_mode(model), _plain_generation_config(model, pad_id, eos_ids):
        for s in range(0, query_ids.shape[0], chunk_rows):
            q, m = query_ids[s : s + chunk_rows], query_mask[s : s + chunk_rows]
            out = model.generate(input_ids=q, attention_mask=m, do_sample=True, temperature=rollout.temperature,
                                 top_k=rollout.top_k, top_p=rollout.top_p, max_new_tokens=rollout.max_new_tokens)
            chunks.append(out[:, q.shape[1] :])
    width = max(c.shape[1] for c in chunks)
    return torch.cat([torch.nn.functional.pad(c, (0, width - c.shape[1]), value=pad_id) for c in chunks])


def decode_responses(tokenizer, response_ids: Tensor, response_mask: Tensor) -> list[str]:
    """The text of each response's real tokens (special tokens such as EOS dropped)."""
    return tokenizer.batch_decode([ids[: int(n)] for ids, n in zip(response_ids, response_mask.sum(1))],
                                  skip_special_tokens=True)


class RolloutEngine:
    def __init__(self, models: PolicyModels, reward: RewardSource, scaler: RewardScaler, cfg: RolloutConfig, with_values: bool):
        self.models = models
        self.reward = reward
        self.scaler = scaler
        self.cfg = cfg
        self.with_values = with_values
        self.tokenizer = models.tokenizer
        self.eos_ids = eos_token_ids(self.tokenizer, models._base_policy())

    @torch.no_grad()
    def run(self, prompts: list[str], query_ids: Tensor, query_mask: Tensor, unwrapped_policy, timings: Timings) -> Rollout:
        """prompts/query_* hold one row per prompt; each is repeated K times on consecutive rows."""
        k = self.cfg.group_size
        prompts_k = [p for p in prompts for _ in range(k)]
        query_ids = query_ids.repeat_interleave(k, dim=0)
        query_mask = query_mask.repeat_interleave(k, dim=0)

        # 1. sample
        t0 = time.perf_counter()
        was_training = self.models.training
        self.models.eval()
        response_ids = sample_responses(unwrapped_policy, query_ids, query_mask, self.cfg, self.tokenizer.pad_token_id,
                                        self.eos_ids)
        response_mask, truncated = response_mask_from_ids(response_ids, self.eos_ids)
        timings.generate += time.perf_counter() - t0

        # 2. score the decoded text (the reward may use its own tokenizer)
        t0 = time.perf_counter()
        responses = decode_responses(self.tokenizer, response_ids, response_mask)
        raw = self.reward(prompts_k, responses)
        timings.score += time.perf_counter() - t0
        rollout = self.complete(prompts_k, responses, query_ids, query_mask, response_ids, response_mask, truncated, raw,
                                k, timings)
        if was_training:
            self.models.train()
        return rollout

    @torch.no_grad()
    def from_data(self, prompts: list[str], responses: list[str], query_ids: Tensor, query_mask: Tensor,
                  response_ids: Tensor, rewards: Tensor, timings: Timings) -> Rollout:
        """A rollout made of fixed (prompt, response, reward) rows (offline APA/AWR): nothing is sampled, the
        responses' log-probs under the current policy play pi_old's part. response_ids end with EOS."""
        was_training = self.models.training
        self.models.eval()
        response_mask, truncated = response_mask_from_ids(response_ids, self.eos_ids)
        rollout = self.complete(prompts, responses, query_ids, query_mask, response_ids, response_mask, truncated,
                                rewards, 1, timings)
        if was_training:
            self.models.train()
        return rollout

    def complete(self, prompts, responses, query_ids, query_mask, response_ids, response_mask, truncated, raw, k,
                 timings) -> Rollout:
        """Preprocess the scores, then old and reference log-probs (and values) in bounded chunks."""
        scores = raw.clone()
        if self.cfg.missing_eos_penalty is not None:
            scores = scores - self.cfg.missing_eos_penalty * truncated.float()
        scores = self.scaler(scores)
        t0 = time.perf_counter()
        logprobs, ref_logprobs, values = [], [], []
        n = self.cfg.forward_chunk
        for s in range(0, response_ids.shape[0], n):
            lp, ref, v = self.models.old_and_ref_logprobs(
                query_ids[s : s + n], query_mask[s : s + n], response_ids[s : s + n], response_mask[s : s + n],
                self.cfg.temperature, self.with_values,
            )
            logprobs.append(lp)
            ref_logprobs.append(ref)
            values.append(v)
        timings.logprobs += time.perf_counter() - t0
        mask = response_mask
        return Rollout(
            query_ids=query_ids,
            query_mask=query_mask,
            response_ids=response_ids,
            response_mask=mask,
            logprobs=torch.cat(logprobs) * mask,
            ref_logprobs=torch.cat(ref_logprobs) * mask,
            scores=scores,
            raw_scores=raw,
            group_size=k,
            values=torch.cat(values) * mask if self.with_values else None,
            prompts=list(prompts),
            responses=list(responses),
            truncated=truncated,
        )
