"""`rlcf rm`: a scalar reward model from (prompt, chosen, rejected) pairs, Bradley-Terry loss (losses/reward.py).

The model is AutoModelForSequenceClassification with one label on any backbone (a decoder such as the embedded
model, or an encoder); num_layers keeps only its first N blocks. It reads exactly the text the scorer
(rewards.HFRewardModel) will read, from the same function `reward_texts`, tokenized the same way.

Where the score is read: transformers pools a decoder's logits at the rightmost token that is not the pad
token. When the tokenizer has no pad token, or pads with EOS, a real EOS at the end of a text would be taken
for padding and the score read one token early; so the model gets its own '<|pad|>' token (embeddings
resized) and model.config.pad_token_id, and texts are right-padded. The saved folder (model + tokenizer)
loads with `rlcf train --reward.model OUTPUT_DIR/final`.
"""

from __future__ import annotations

import json
from pathlib import Path

import jinja2
import torch
from accelerate.utils import set_seed
from torch import Tensor, nn
from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

from .config import RMConfig
from .data.loading import check_length
from .data.pairs import load_pairs
from .data.tokens import right_pad
from .errors import DataError
from .files import main_process
from .losses.reward import bradley_terry_loss
from .models.hub import DTYPES, resolve_model_path
from .rewards.sources import chat_reward_texts, reward_texts
from .train.supervised import Stage, claim_run, run_stage
from .validate import validate

PAD_TOKEN = "<|pad|>"

def run_rm(cfg: RMConfig) -> Path:
    """Train a reward model on cfg.data.path; returns the folder of the final model (OUTPUT_DIR/final)."""
    validate(cfg)  # before anything loads (also: no --data.path)
    check_num_layers(cfg)  # from the backbone's config alone, before the data and weights load
    set_seed(cfg.seed)
    tokenizer = load_rm_tokenizer(cfg.model, cfg.trust_remote_code)
    rows = load_rm_rows(cfg, tokenizer)  # checked before the model is loaded, so bad input fails fast
    eval_rows = load_rm_rows(cfg, tokenizer, cfg.data.eval_path, cfg.data.eval_split) if cfg.data.eval_path else None
    run = claim_run(cfg)  # may the output folder be started or resumed? (before the model loads)
    model = load_rm_model(cfg, tokenizer)

    def save(folder: Path, gathered: dict | None) -> None:
        model.save_pretrained(folder, **({} if gathered is None else {"state_dict": gathered}))
        tokenizer.save_pretrained(folder)

    stage = Stage(name="rm", model=model, rows=rows, collate=lambda batch: rm_collate(batch, tokenizer.pad_token_id),
                  loss_fn=rm_batch_loss, save=save, size=rm_pairs, eval_fraction=cfg.data.eval_fraction,
                  eval_rows=eval_rows)
    return run_stage(cfg, stage, run)


def load_rm_tokenizer(name_or_path: str, trust_remote_code: bool = False):
    """The backbone's tokenizer, right-padded, with a pad token distinct from EOS (added if needed)."""
    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path(name_or_path), trust_remote_code=trust_remote_code)
    tokenizer.padding_side = "right"
    pads_with_eos = tokenizer.eos_token is not None and tokenizer.pad_token_id == tokenizer.eos_token_id
    if tokenizer.pad_token is None or pads_with_eos:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
    return tokenizer


def load_rm_model(cfg: RMConfig, tokenizer) -> nn.Module:
    """A one-label sequence classifier on the backbone (its first cfg.num_layers blocks), pad id set, its
    embeddings resized if the tokenizer grew a pad token. The new score head is initialised from cfg.seed."""
    path = resolve_model_path(cfg.model)
    config = AutoConfig.from_pretrained(path, trust_remote_code=cfg.trust_remote_code, num_labels=1)
    if cfg.num_layers is not None:
        truncate_layers(config, cfg.num_layers, cfg.model)
    # a pad token added to the tokenizer has no embedding row yet: set its id once the embeddings are resized
    in_vocab = tokenizer.pad_token_id < (getattr(config, "vocab_size", None) or 0)
    config.pad_token_id = tokenizer.pad_token_id if in_vocab else None
    torch.manual_seed(cfg.seed)
    model = AutoModelForSequenceClassification.from_pretrained(
        path, config=config, dtype=DTYPES[cfg.dtype], trust_remote_code=cfg.trust_remote_code)
    if len(tokenizer) > model.get_input_embeddings().num_embeddings:
        model.resize_token_embeddings(len(tokenizer))
    model.config.pad_token_id = tokenizer.pad_token_id
    return model


def check_num_layers(cfg: RMConfig, option: str = "--num-layers") -> None:
    """cfg.num_layers against the backbone's block count, read from its config alone (no weights, no data): a
    ValueError naming `option` and the allowed range. `rlcf pipeline` calls it before its label stage."""
    if cfg.num_layers is None:
        return
    config = AutoConfig.from_pretrained(resolve_model_path(cfg.model), trust_remote_code=cfg.trust_remote_code)
    try:
        truncate_layers(config, cfg.num_layers, cfg.model)
    except ValueError as e:
        raise ValueError(str(e).replace("--num-layers", option, 1)) from None


def truncate_layers(config, n: int, name: str) -> None:
    """Keep the first n blocks: set the config's layer count (num_hidden_layers, or the name it maps to) before
    loading, so only those blocks are built and the rest of the checkpoint is ignored."""
    total = getattr(config, "num_hidden_layers", None)
    if not isinstance(total, int):
        raise ValueError(f"--num-layers {n}: the config of {name} ({type(config).__name__}) has no "
                         "num_hidden_layers field, so rlcf cannot truncate it; leave --num-layers unset")
    if not 1 <= n <= total:
        raise ValueError(f"--num-layers {n}: {name} has {total} blocks; choose 1 to {total}")
    config.num_hidden_layers = n
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list):  # per-block attention kinds (e.g. sliding window) must match the count
        config.layer_types = layer_types[:n]


def load_rm_rows(cfg: RMConfig, tokenizer, path: str | None = None, split: str | None = None) -> list[dict]:
    """One row per prompt: {'texts': [token ids of each distinct reward text], 'chosen': [i], 'rejected': [j],
    'margin'?: [m]}, one entry of chosen/rejected/margin per judged pair of that prompt, pairs in file order.

    Keeping a prompt's pairs in one row means a response judged in several pairs (`rlcf label` with K > 2) is
    scored once per step, not once per pair, and the held-out split never puts a response on both sides.
    Pairs come in any shape `data.pairs` reads (the shape is printed); texts are built as rewards.reward_texts
    builds them for string prompts, and over the whole conversation (rewards.sources.chat_reward_texts) for
    conversational pairs. Every pair is validated (file, row, field). path and split default to cfg.data's."""
    path, split = path or cfg.data.path, split or cfg.data.split
    numbers = ("margin",) if cfg.data.margin_column else ()
    columns = cfg.data.columns
    if cfg.data.margin_column:
        columns = f"{columns},margin={cfg.data.margin_column}" if columns.strip() else f"margin={cfg.data.margin_column}"
    pairs = load_pairs(path, columns, split, numbers)
    if main_process():
        print(pairs.summary("rlcf rm"), flush=True)
    records = pairs.rows
    encoded = {}
    for side in ("chosen", "rejected"):
        if pairs.conversational:
            texts = [_chat_reward_text(tokenizer, r["prompt"], r[side], pairs.where(i, "prompt", side))
                     for i, r in enumerate(records)]
        else:
            texts = reward_texts(tokenizer, [r["prompt"] for r in records], [r[side] for r in records])
        encoded[side] = tokenizer(texts)["input_ids"]
    groups: dict[str, dict] = {}
    for i, rec in enumerate(records):
        key = rec["prompt"] if isinstance(rec["prompt"], str) else json.dumps(rec["prompt"], sort_keys=True)
        row = groups.setdefault(key, {"texts": [], "chosen": [], "rejected": [], "_index": {}})
        if cfg.data.margin_column:
            row.setdefault("margin", []).append(rec["margin"])
        for side in ("chosen", "rejected"):
            ids = tuple(encoded[side][i])
            check_length(len(ids), cfg.data.max_length, pairs.where(i, "prompt", side))
            if ids not in row["_index"]:
                row["_index"][ids] = len(row["texts"])
                row["texts"].append(list(ids))
            row[side].append(row["_index"][ids])
    for row in groups.values():
        del row["_index"]
    return list(groups.values())


def _chat_reward_text(tokenizer, prompt: list[dict], response: list[dict], where: str) -> str:
    """chat_reward_texts of one pair; a template that refuses the conversation is an error naming the row."""
    try:
        return chat_reward_texts(tokenizer, [prompt], [response])[0]
    except jinja2.TemplateError as e:
        owner = getattr(tokenizer, "name_or_path", "") or "the reward model's tokenizer"
        raise DataError(f"{where}: the chat template of {owner} refused the conversation "
                        f"({' '.join(str(e).split())}); change the messages to suit the template (roles, order), "
                        "or the template") from None


def rm_pairs(rows: list[dict]) -> int:
    """How many judged pairs the rows hold (held-out metrics are averaged over pairs, not prompts)."""
    return sum(len(r["chosen"]) for r in rows)


def rm_collate(rows: list[dict], pad_id: int) -> dict[str, Tensor]:
    """Every row's distinct texts right-padded into one [T, L] batch (one forward for all), and each pair's
    chosen and rejected positions in it ([P] each; 'margin' [P] when the rows have one)."""
    texts, chosen, rejected = [], [], []
    for r in rows:
        offset = len(texts)
        texts += r["texts"]
        chosen += [offset + i for i in r["chosen"]]
        rejected += [offset + j for j in r["rejected"]]
    input_ids, attention_mask = right_pad(texts, pad_id)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask,
             "chosen": torch.tensor(chosen), "rejected": torch.tensor(rejected)}
    if "margin" in rows[0]:
        batch["margin"] = torch.tensor([m for r in rows for m in r["margin"]], dtype=torch.float32)
    return batch


def rm_batch_loss(model: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """Bradley-Terry over the batch's pairs on the pooled scores (score at each text's last real token, each
    distinct text scored once): loss/reward_model, reward/accuracy, reward/margin_mean (eval/accuracy,
    eval/margin_mean on held-out pairs)."""
    scores = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits[:, 0].float()
    return bradley_terry_loss(scores[batch["chosen"]], scores[batch["rejected"]], batch.get("margin"))
