"""The rollout engine: K responses per prompt -> response masks -> scores -> old / reference log-probs."""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import sys
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from ..config import RolloutConfig
from ..data.tokens import left_pad, right_pad
from ..generation.base import GenerationBackend, eval_mode
from ..generation.hf import HFBackend
from ..models.policy import PolicyModels
from ..rewards.sources import RewardScaler, RewardSource
from ..types import Rollout
from .accel import gathered

_LIBC = None
if sys.platform.startswith("linux"):
    try:
        _LIBC = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        _LIBC.malloc_trim  # noqa: B018 (glibc only; musl has none)
    except (OSError, AttributeError):
        _LIBC = None


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


def release_memory() -> None:
    """Give freed memory back to the system between phases: generation's cache is gone before the update's
    activations are allocated (glibc keeps freed blocks in its arenas, and the resident size would grow).
    No gc.collect(): tensors are freed by reference counting, and a full collection costs seconds in a big process."""
    if _LIBC is not None:
        _LIBC.malloc_trim(0)


def decode_responses(tokenizer, response_ids: Tensor, response_mask: Tensor) -> list[str]:
    """The text of each response's real tokens (special tokens such as EOS dropped)."""
    return tokenizer.batch_decode([ids[: int(n)] for ids, n in zip(response_ids, response_mask.sum(1))],
                                  skip_special_tokens=True)


class RolloutEngine:
    """Samples through a generation backend, scores, and computes the log-probs the update needs."""

    def __init__(self, models: PolicyModels, reward: RewardSource | None, scaler: RewardScaler, cfg: RolloutConfig,
                 with_values: bool, backend: GenerationBackend | None = None):
        self.models = models
        self.reward = reward
        self.scaler = scaler
        self.cfg = cfg
        self.with_values = with_values
        self.tokenizer = models.tokenizer
        self.eos_ids = eos_token_ids(self.tokenizer, models.base_policy())
        self.backend = backend or HFBackend(models.policy, self.tokenizer.pad_token_id, self.eos_ids,
                                            cfg.generation_chunk)
        self.gather = lambda t: t  # all processes' rows of a tensor (the trainer sets accelerator.gather)

    @torch.no_grad()
    def run(self, prompts: list[str], query_ids: Tensor, query_mask: Tensor, timings: Timings,
            need_old: bool = True, columns: list[dict] | None = None, scale: bool = True) -> Rollout:
        """prompts/query_* hold one row per prompt; each is repeated K times on consecutive rows.
        need_old=False: leave logprobs (and values) to the update's own forward (a rollout used exactly once).
        columns: each prompt row's other columns, handed to the reward (repeated K times, one value per response).
        scale=False: leave the reward scaler's statistics alone (an evaluation, not a training batch)."""
        k = self.cfg.group_size
        prompts_k = [p for p in prompts for _ in range(k)]
        extra = {}
        if columns and any(columns):
            extra["columns"] = {name: [row.get(name) for row in columns for _ in range(k)]
                                for name in dict.fromkeys(n for row in columns for n in row)}
        query_ids = query_ids.repeat_interleave(k, dim=0)
        query_mask = query_mask.repeat_interleave(k, dim=0)

        # 1. sample (top_blocks: the frozen trunk's output is recorded on the way, when the backend can)
        t0 = time.perf_counter()
        # sharded, the policy is gathered once for all the tokens it samples (another backend samples its own copy)
        own = gathered(self.models.policy) if self.backend.name == "hf" else contextlib.nullcontext()
        with eval_mode(self.models), own:
            gen = self.models.sample(self.backend.generate, query_ids, query_mask, self.cfg,
                                     capture=self.models.first_trainable_block())
        response_ids = gen.response_ids.to(query_ids.device)
        response_mask, truncated = response_mask_from_ids(response_ids, self.eos_ids)
        timings.generate += time.perf_counter() - t0

        # 2. score the decoded text (the reward may use its own tokenizer)
        t0 = time.perf_counter()
        responses = decode_responses(self.tokenizer, response_ids, response_mask)
        raw = self.reward(prompts_k, responses, **extra)
        timings.score += time.perf_counter() - t0
        with eval_mode(self.models):
            rollout = self.complete(prompts_k, responses, query_ids, query_mask, response_ids, response_mask,
                                    truncated, raw, k, timings, need_old, gen.hidden, scale)
        if gen.logprobs is not None:
            rollout.sampler_logprobs = gen.logprobs.to(response_mask.device) * response_mask
        return rollout

    @torch.no_grad()
    def from_data(self, prompts: list[str], responses: list[str], query_ids: Tensor, query_mask: Tensor,
                  response_ids: Tensor, rewards: Tensor, timings: Timings, need_old: bool = True) -> Rollout:
        """A rollout made of fixed (prompt, response, reward) rows (offline APA/AWR): nothing is sampled, the
        responses' log-probs under the current policy play pi_old's part. response_ids end with EOS."""
        response_mask, truncated = response_mask_from_ids(response_ids, self.eos_ids)
        with eval_mode(self.models):
            return self.complete(prompts, responses, query_ids, query_mask, response_ids, response_mask, truncated,
                                 rewards, 1, timings, need_old)

    def complete(self, prompts, responses, query_ids, query_mask, response_ids, response_mask, truncated, raw, k,
                 timings, need_old: bool = True, hidden: Tensor | None = None, scale: bool = True) -> Rollout:
        """Preprocess the scores, then reference (and old, values) log-probs in bounded chunks."""
        # a reward function's scores (and an offline file's rewards) arrive on the CPU; every tensor the update and
        # the gathers across processes meet must sit on the model's device
        raw = raw.to(response_ids.device)
        scores = raw.clone()
        if self.cfg.missing_eos_penalty is not None:
            scores = scores - self.cfg.missing_eos_penalty * truncated.float()
        every = self.gather(scores)
        if scale and bool(torch.isfinite(every).all()):  # a non-finite batch is skipped by the trainer: keep it out
            scores = self.scaler(scores, every)
        t0 = time.perf_counter()
        logprobs, ref_logprobs, values, hiddens = [], [], [], []
        n = self.cfg.forward_chunk
        for s in range(0, response_ids.shape[0], n):
            lp, ref, v, h = self.models.old_and_ref_logprobs(
                query_ids[s : s + n], query_mask[s : s + n], response_ids[s : s + n], response_mask[s : s + n],
                self.cfg.temperature, self.with_values and need_old, need_old,
                None if hidden is None else hidden[s : s + n],
            )
            logprobs.append(lp)
            ref_logprobs.append(ref)
            values.append(v)
            hiddens.append(h)
        timings.logprobs += time.perf_counter() - t0
        mask = response_mask
        return Rollout(
            query_ids=query_ids,
            query_mask=query_mask,
            response_ids=response_ids,
            response_mask=mask,
            logprobs=torch.cat(logprobs) * mask if need_old else None,
            ref_logprobs=torch.cat(ref_logprobs) * mask,
            scores=scores,
            raw_scores=raw,
            group_size=k,
            values=torch.cat(values) * mask if self.with_values and need_old else None,
            prompts=list(prompts),
            responses=list(responses),
            truncated=truncated,
            trunk_hidden=torch.cat(hiddens) if hiddens[0] is not None else None,
        )


class SampledRollouts:
    """Online source of the trainer's rollouts: each step samples K responses to its prompts and scores them."""

    def __init__(self, engine: RolloutEngine, prompts: list[str], prompt_ids: list[list[int]], group_size: int,
                 device="cpu", columns: list[dict] | None = None):
        self.engine, self.prompts, self.prompt_ids, self.group_size = engine, prompts, prompt_ids, group_size
        self.device = device
        self.columns = columns
        """Each prompt row's other columns (for rewards that take them), or None."""

    def __len__(self) -> int:
        return len(self.prompts)

    def rollout(self, idx: list[int], timings: Timings, need_old: bool = True) -> Rollout:
        ids, mask = _queries(self.engine, [self.prompt_ids[i] for i in idx], self.device)
        columns = [self.columns[i] for i in idx] if self.columns else None
        return self.engine.run([self.prompts[i] for i in idx], ids, mask, timings, need_old=need_old, columns=columns)


class FixedRollouts:
    """Offline source (APA, AWR on --offline-data): each step's rollout is fixed (prompt, response, reward) rows,
    one response per prompt; nothing is sampled."""

    group_size = 1

    def __init__(self, engine: RolloutEngine, rows: list[dict], prompt_ids: list[list[int]],
                 response_ids: list[list[int]], device="cpu"):
        self.engine, self.rows, self.prompt_ids, self.response_ids = engine, rows, prompt_ids, response_ids
        self.device = device

    def __len__(self) -> int:
        return len(self.rows)

    def rollout(self, idx: list[int], timings: Timings, need_old: bool = True) -> Rollout:
        ids, mask = _queries(self.engine, [self.prompt_ids[i] for i in idx], self.device)
        responses = right_pad([self.response_ids[i] for i in idx], self.engine.tokenizer.pad_token_id)[0]
        return self.engine.from_data([self.rows[i]["prompt"] for i in idx], [self.rows[i]["response"] for i in idx],
                                     ids, mask, responses.to(ids.device),
                                     torch.tensor([self.rows[i]["reward"] for i in idx]), timings, need_old=need_old)


def _queries(engine: RolloutEngine, prompt_ids: list[list[int]], device) -> tuple[Tensor, Tensor]:
    """Left-padded prompt ids and mask on `device`."""
    ids, mask = left_pad(prompt_ids, engine.tokenizer.pad_token_id)
    return ids.to(device), mask.to(device)
