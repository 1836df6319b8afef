"""`rlcf train --algo ilql --offline-data FILE`: ILQL on fixed rows, through the supervised loop.

ILQL learns from a fixed dataset, so its loop is the supervised one (train/supervised.py: held-out split, epochs x
minibatches, checkpoints and exact resume, the non-finite guard, signals): `optim.epochs` passes over the rows
in minibatches of `optim.minibatch_prompts` rows (`steps` and `rollout.prompts_per_step` are not used). Each row
is (prompt, response, reward); rewards are standardised over the dataset (as trlX does) and sit on the
response's last token. The target Q heads follow the Q
heads by Polyak averaging every `ilql.steps_for_target_q_sync` optimiser steps. The final model is the
behaviour-cloned LM (a plain transformers folder) with the heads and the decoding beta beside it, so `rlcf eval`
and `rlcf label` sample from logits + beta * (min target Q - V).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import torch
from accelerate.utils import set_seed

from .config import TrainConfig
from .data.loading import Prompt, tokenize_prompts
from .data.tokens import left_pad, right_pad, tokenize_responses
from .losses.ilql import ilql_loss
from .models.hub import load_tokenizer
from .models.ilql import ILQLModel, save_ilql
from .models.load import load_causal_lm
from .models.reference import make_reference
from .train.checkpoint import latest_checkpoint
from .train.offline import load_offline_rows
from .train.supervised import Stage, StageConfig, claim_run, run_stage
from .validate import validate


def _collate(rows: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    query_ids, query_mask = left_pad([r["prompt_ids"] for r in rows], pad_id)
    response_ids, response_mask = right_pad([r["response_ids"] for r in rows], pad_id)
    return {"query_ids": query_ids, "query_mask": query_mask, "response_ids": response_ids,
            "response_mask": response_mask, "scores": torch.tensor([r["reward"] for r in rows], dtype=torch.float32)}


def token_rewards(scores: torch.Tensor, response_mask: torch.Tensor) -> torch.Tensor:
    """[B, T]: each row's score on its last real response token, 0 elsewhere."""
    last = (response_mask.sum(1) - 1).clamp(min=0).long()
    out = torch.zeros(response_mask.shape, dtype=scores.dtype, device=scores.device)
    out[torch.arange(len(scores), device=scores.device), last] = scores
    return out * response_mask


def run_ilql(cfg: TrainConfig) -> Path:
    validate(cfg)
    set_seed(cfg.seed)
    # data first (before any model loads): rows, then their tokens
    rows = load_offline_rows(cfg)
    tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.trust_remote_code)
    prompts = [Prompt(text=r["prompt"], chat=r.get("chat")) for r in rows]
    prompt_ids = tokenize_prompts(prompts, tokenizer, cfg.rollout.max_prompt_tokens, cfg.chat_template,
                                  cfg.offline_data)
    response_ids = tokenize_responses([r["response"] for r in rows], tokenizer, cfg.rollout.max_new_tokens,
                                      cfg.offline_data)
    # rewards standardised over the dataset (as trlX does), so gamma, tau and beta mean the same on any scale
    rewards = torch.tensor([row["reward"] for row in rows], dtype=torch.float64)
    spread = float(rewards.std()) if len(rows) > 1 else 0.0
    rewards = (rewards - rewards.mean()) / spread if spread > 1e-8 else rewards - rewards.mean()
    examples = [{"prompt_ids": p, "response_ids": r, "reward": float(v)}
                for p, r, v in zip(prompt_ids, response_ids, rewards)]
    run = claim_run(cfg)

    lm = load_causal_lm(cfg.model.name_or_path, cfg.model.dtype, cfg.model.trust_remote_code, ilql_decoding=False)
    model = ILQLModel(lm, two_qs=cfg.ilql.two_qs, trainable_blocks=make_reference(cfg.model).top_blocks)
    icfg = cfg.ilql
    # the targets are not trained, so not checkpointed: a resumed run restarts them as copies of its Q heads
    updates = {"n": 0, "resumed": cfg.resume and latest_checkpoint(Path(cfg.output_dir)) is not None}

    def loss_fn(m, batch):
        inner = getattr(m, "module", m)
        if inner.training:  # Polyak target update every N optimiser steps (one minibatch per step here)
            if updates["n"] == 0 and updates["resumed"]:
                inner.heads.sync_targets(1.0)
            elif updates["n"] and updates["n"] % icfg.steps_for_target_q_sync == 0:
                inner.heads.sync_targets(icfg.alpha)
            updates["n"] += 1
        out = m(batch["query_ids"], batch["query_mask"], batch["response_ids"], batch["response_mask"])
        return ilql_loss(out["lm_logits"], out["qs"], out["target_qs"], out["vs"], batch["response_ids"],
                         batch["response_mask"], token_rewards(batch["scores"], batch["response_mask"]), icfg)

    def save(folder: Path, gathered: dict | None) -> None:
        save_ilql(model, tokenizer, folder, icfg.beta, dataclasses.asdict(icfg), gathered)

    # one minibatch per optimiser step: the Polyak target update counts optimiser steps
    stage_cfg = dataclasses.replace(StageConfig.of(cfg, command="rlcf train --algo ilql"),
                                    optim=dataclasses.replace(cfg.optim, grad_accum=1))
    stage = Stage(name="ilql", model=model, rows=examples, collate=lambda rs: _collate(rs, tokenizer.pad_token_id),
                  loss_fn=loss_fn, save=save, eval_fraction=0.05)
    return run_stage(stage_cfg, stage, run)
