"""Offline training on fixed data. `rlcf dpo`: DPO on (prompt, chosen, rejected) pairs (losses/dpo.py), in any
shape `data.pairs` reads (string pairs, conversational with an explicit or implicit prompt, plain-text dialogue).

The reference is the frozen initial policy, in any of PolicyModels' modes (model.reference: copy, top_blocks,
lora). Each pair is one prompt (left-padded, chat template as configured) followed by the chosen and the
rejected response (right-padded, each ending in EOS); both halves go through the policy in one [2B] forward.
The reference's log-probs are computed per minibatch under no_grad, from the same tensors.
"""

from __future__ import annotations

from pathlib import Path

from accelerate.utils import set_seed
from torch import Tensor

from .config import DPOStageConfig
from .data.loading import check_length
from .data.pairs import load_pairs
from .data.tokens import (
    encode_chat_response,
    encode_prompt,
    encode_response,
    left_pad,
    right_pad,
    use_chat_template,
)
from .files import main_process
from .losses.dpo import dpo_loss
from .models.hub import load_tokenizer
from .models.policy import build_models
from .train.supervised import Stage, claim_run, run_stage
from .validate import validate


def run_dpo(cfg: DPOStageConfig) -> Path:
    """DPO of cfg.model on cfg.data.path; returns the folder of the final policy (OUTPUT_DIR/final)."""
    validate(cfg)  # before anything loads (also: no --data.path)
    set_seed(cfg.seed)
    # data are checked before the models are loaded, so bad input fails fast
    tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.trust_remote_code)
    rows = load_dpo_rows(cfg, tokenizer)
    eval_rows = load_dpo_rows(cfg, tokenizer, cfg.data.eval_path, cfg.data.eval_split) if cfg.data.eval_path else None
    run = claim_run(cfg)  # may the output folder be started or resumed? (before the model loads)
    models = build_models(cfg.model, critic_kind=None)
    pad_id = models.tokenizer.pad_token_id

    def collate(batch_rows: list[dict]) -> dict[str, Tensor]:
        return dpo_collate(batch_rows, pad_id)

    def loss_fn(model, batch: dict[str, Tensor]):
        # model is the (possibly wrapped) PolicyModels; the reference pass goes through the unwrapped one
        logprobs, _ = model(batch["query_ids"], batch["query_mask"], batch["response_ids"], batch["response_mask"])
        ref_logprobs = models.ref_logprobs(batch["query_ids"], batch["query_mask"], batch["response_ids"],
                                           batch["response_mask"])
        mask = batch["response_mask"]
        B = mask.shape[0] // 2
        return dpo_loss(logprobs[:B], logprobs[B:], ref_logprobs[:B], ref_logprobs[B:], mask[:B], mask[B:], cfg.beta)

    stage = Stage(name="dpo", model=models, rows=rows, collate=collate, loss_fn=loss_fn, save=models.save_policy,
                  eval_fraction=cfg.data.eval_fraction, eval_rows=eval_rows)
    return run_stage(cfg, stage, run)


def load_dpo_rows(cfg: DPOStageConfig, tokenizer, path: str | None = None, split: str | None = None) -> list[dict]:
    """[{'prompt_ids', 'chosen_ids', 'rejected_ids'}] per pair, validated (errors name the file, row and field).
    Pairs come in any shape `data.pairs` reads (the shape is printed). A string response ends in EOS; a
    conversational one is the chat template of the whole conversation past the prompt's (encode_chat_response).
    path and split default to cfg.data's."""
    path, split = path or cfg.data.path, split or cfg.data.split
    pairs = load_pairs(path, cfg.data.columns, split)
    if main_process():
        print(pairs.summary("rlcf dpo"), flush=True)
    use_chat = use_chat_template(tokenizer, cfg.chat_template)
    limit = cfg.data.max_length
    out = []
    for i, rec in enumerate(pairs.rows):
        row = {"prompt_ids": encode_prompt(tokenizer, rec["prompt"], use_chat, limit, pairs.where(i, "prompt"))}
        for side in ("chosen", "rejected"):
            where = pairs.where(i, side)
            if isinstance(rec[side], list):
                ids = encode_chat_response(tokenizer, rec["prompt"], rec[side], row["prompt_ids"], limit, where)
            else:
                ids = encode_response(tokenizer, rec[side], limit, where)
            row[f"{side}_ids"] = ids
            check_length(len(row["prompt_ids"]) + len(ids), limit, pairs.where(i, "prompt", side))
        out.append(row)
    return out


def dpo_collate(rows: list[dict], pad_id: int) -> dict[str, Tensor]:
    """[2B] rows: each prompt twice (left-padded), then the B chosen and the B rejected responses (right-padded
    to one width); response_mask is 1 on response tokens, EOS included."""
    query_ids, query_mask = left_pad([r["prompt_ids"] for r in rows] * 2, pad_id)
    response_ids, response_mask = right_pad([r["chosen_ids"] for r in rows] + [r["rejected_ids"] for r in rows],
                                            pad_id)
    return {"query_ids": query_ids, "query_mask": query_mask, "response_ids": response_ids,
            "response_mask": response_mask}
