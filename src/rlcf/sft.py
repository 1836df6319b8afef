"""`rlcf sft`: supervised fine-tuning, the token NLL of completions only (losses/sft.py).

Rows are either `prompt` + `completion` strings (TRL's names; others through --data.columns) or a chat `messages`
list. In a messages row the LAST message must be the assistant's: it is the completion, and everything before
it is the prompt, rendered by the chat template with its generation prompt. Earlier assistant turns are
context and get no loss: one completion per row keeps the prompt/completion boundary exact under any chat
template (write one row per assistant turn to train on every turn). String prompts are wrapped as a user turn
when the tokenizer has a chat template (--chat-template). Each completion ends with EOS, so the model learns
to stop where the rollout's generation stops.

model.reference picks what trains: copy = every weight; top_blocks = the top model.trainable_blocks blocks and
the final norm; lora = a LoRA adapter, merged into the weights before saving.
"""

from __future__ import annotations

from functools import partial
from pathlib import Path

from accelerate.utils import set_seed
from torch import Tensor, nn

from .config import SFTConfig
from .data.loading import check_length, load_records, load_rows, parse_columns
from .data.tokens import encode_prompt, encode_response, left_pad, right_pad, use_chat_template
from .errors import DataError
from .losses.sft import sft_loss
from .models.hub import load_tokenizer
from .models.load import load_causal_lm
from .models.logprobs import response_logprobs
from .models.policy import enable_gradient_checkpointing
from .models.reference import save_exported, select_trainable
from .train.supervised import Stage, claim_run, run_stage
from .validate import validate

FIELDS = ("prompt", "completion", "messages")


def run_sft(cfg: SFTConfig) -> Path:
    """Fine-tune cfg.model on cfg.data.path; returns the folder of the final model (OUTPUT_DIR/final)."""
    validate(cfg)  # before anything loads (also: no --data.path)
    set_seed(cfg.seed)
    # data are checked before the model is loaded, so bad input fails fast
    tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.trust_remote_code)
    rows = load_sft_rows(cfg, tokenizer)
    eval_rows = load_sft_rows(cfg, tokenizer, cfg.data.eval_path, cfg.data.eval_split) if cfg.data.eval_path else None
    run = claim_run(cfg)  # may the output folder be started or resumed? (before the model loads)
    lm = load_causal_lm(cfg.model.name_or_path, cfg.model.dtype, cfg.model.trust_remote_code)
    lm, mode = select_trainable(lm, cfg.model)  # what trains: the reference mode's choice (models/reference.py)
    if cfg.model.gradient_checkpointing:
        enable_gradient_checkpointing(mode.base(lm))

    def save(folder: Path, gathered: dict | None) -> None:
        save_exported(mode, lm, folder, gathered)
        tokenizer.save_pretrained(folder)

    stage = Stage(name="sft", model=lm, rows=rows, collate=partial(sft_collate, pad_id=tokenizer.pad_token_id),
                  loss_fn=sft_batch_loss, save=save, eval_fraction=cfg.data.eval_fraction, eval_rows=eval_rows)
    return run_stage(cfg, stage, run)


def load_sft_rows(cfg: SFTConfig, tokenizer, path: str | None = None, split: str | None = None) -> list[dict]:
    """[{'prompt_ids': [...], 'completion_ids': [... EOS]}] per row, every row validated (errors name the file,
    the row and the field). path and split default to cfg.data's (data.eval_path and data.eval_split give the
    evaluation rows)."""
    path, split = path or cfg.data.path, split or cfg.data.split
    mapping = parse_columns(cfg.data.columns, FIELDS)
    if "messages" in mapping:
        as_messages = True
    elif "prompt" in mapping or "completion" in mapping:
        as_messages = False
    else:  # no mapping: the columns decide
        first = load_rows(path, split)[:1]
        as_messages = bool(first) and "messages" in first[0] and "prompt" not in first[0]
    fields = ("messages",) if as_messages else ("prompt", "completion")
    col = {f: mapping.get(f, f) for f in fields}
    if as_messages:
        records = load_records(path, messages=fields, columns=cfg.data.columns, split=split)
    else:
        records = load_records(path, text=fields, columns=cfg.data.columns, split=split)
    use_chat = use_chat_template(tokenizer, cfg.chat_template)
    if as_messages and not tokenizer.chat_template:
        raise DataError(f"{path}: messages rows need a chat template, and this tokenizer has none; "
                        "use prompt/completion rows or a model with a chat template")
    out = []
    for i, rec in enumerate(records):
        if as_messages:
            where = f"{path}, row {i + 1}, field '{col['messages']}'"
            messages = rec["messages"]
            if messages[-1]["role"] != "assistant" or len(messages) < 2:
                raise DataError(f"{where}: the last message must be the assistant's reply, after at least one "
                                f"other message (got roles {[m['role'] for m in messages]}); fix or remove the row")
            if not messages[-1]["content"].strip():
                raise DataError(f"{where}: the last (assistant) message is empty; fill it in or remove the row")
            prompt, completion = messages[:-1], messages[-1]["content"]
        else:
            where = f"{path}, row {i + 1}, fields '{col['prompt']}' + '{col['completion']}'"
            prompt, completion = rec["prompt"], rec["completion"]
        prompt_ids = encode_prompt(tokenizer, prompt, use_chat, cfg.data.max_length, where)
        completion_ids = encode_response(tokenizer, completion, cfg.data.max_length, where)
        check_length(len(prompt_ids) + len(completion_ids), cfg.data.max_length, where)
        out.append({"prompt_ids": prompt_ids, "completion_ids": completion_ids})
    return out


def sft_collate(rows: list[dict], pad_id: int) -> dict[str, Tensor]:
    """Prompts left-padded [B, Q], completions right-padded [B, T]; response_mask is 1 on completion tokens
    (EOS included) and 0 on the prompt and padding, so only completions are trained on."""
    query_ids, query_mask = left_pad([r["prompt_ids"] for r in rows], pad_id)
    response_ids, response_mask = right_pad([r["completion_ids"] for r in rows], pad_id)
    return {"query_ids": query_ids, "query_mask": query_mask, "response_ids": response_ids,
            "response_mask": response_mask}


def sft_batch_loss(lm: nn.Module, batch: dict[str, Tensor]) -> tuple[Tensor, dict[str, Tensor]]:
    """Mean NLL over the batch's completion tokens, logged as loss/nll (eval/nll on held-out rows)."""
    logprobs = response_logprobs(lm, batch["query_ids"], batch["query_mask"], batch["response_ids"],
                                 batch["response_mask"])
    loss, metrics = sft_loss(logprobs, batch["response_mask"])
    return loss, {"loss/nll": metrics["loss/sft"]}
