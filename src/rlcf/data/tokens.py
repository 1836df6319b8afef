"""Token ids as the loops want them: prompts with or without the chat template, responses ending in EOS, and
left- or right-padded batches whose masks come from lengths, never from pad ids."""

from __future__ import annotations

import jinja2
import torch
from torch import Tensor

from ..errors import DataError
from .loading import check_length, prompt_token_ids, text_token_ids


def left_pad(batch: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """[B, T] ids and 0/1 mask of left-padded sequences (prompts, so generation continues at the right edge)."""
    width = max(len(x) for x in batch)
    ids = torch.full((len(batch), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for i, x in enumerate(batch):
        ids[i, width - len(x) :] = torch.tensor(x, dtype=torch.long)
        mask[i, width - len(x) :] = 1
    return ids, mask


def use_chat_template(tokenizer, chat_template: str) -> bool:
    """Whether string prompts are wrapped as a user turn: auto = when the tokenizer has a chat template."""
    if chat_template not in ("auto", "on", "off"):
        raise ValueError(f"chat_template={chat_template!r}: choose auto, on or off")
    if chat_template == "on" and not tokenizer.chat_template:
        raise DataError("chat_template=on, but the tokenizer has no chat template; use --chat-template off")
    return chat_template == "on" or (chat_template == "auto" and bool(tokenizer.chat_template))


def encode_prompt(tokenizer, prompt: str | list[dict], use_chat: bool, max_tokens: int | None = None,
                  where: str = "prompt", option: str = "--data.max-length") -> list[int]:
    """Prompt token ids. A message list (or a string when use_chat) goes through the chat template with the
    generation prompt, so the response starts where generation would start. A template that raises, a NUL or a lone
    surrogate is a DataError naming `where` (the file and row) and the tokenizer; with max_tokens, so is a prompt over
    it, a huge one found from a prefix without tokenizing it whole."""
    return prompt_token_ids(tokenizer, prompt, use_chat, where, max_tokens, option)


def encode_response(tokenizer, text: str, max_tokens: int | None = None, where: str = "response",
                    option: str = "--data.max-length") -> list[int]:
    """Response token ids ending in EOS (appended unless the text already ends with it), so the model learns
    to stop, as generation does in the rollout. With max_tokens, a text far over it is refused before it is
    tokenized whole (the caller checks the exact length)."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token; set one (tokenizer.eos_token) in the model folder")
    ids = text_token_ids(tokenizer, text, False, max_tokens, where, option)
    return ids if ids and ids[-1] == tokenizer.eos_token_id else ids + [tokenizer.eos_token_id]


def encode_chat_response(tokenizer, prompt: list[dict], response: list[dict], prompt_ids: list[int],
                         max_tokens: int | None = None, where: str = "response",
                         option: str = "--data.max-length") -> list[int]:
    """Token ids of a conversational response (messages ending in the assistant's turn) after `prompt`, whose ids
    `prompt_ids` are the chat template with the generation prompt (encode_prompt): the template over prompt +
    response, minus those ids, so prompt ids + response ids are the whole conversation's template, closing tokens
    included. When the prompt's ids are not a prefix of the whole (a template that renders earlier turns
    differently once a reply follows), the response's assistant text is encoded as a string response is, ending in
    EOS."""
    text = "\n".join(m["content"] for m in response if m["role"] == "assistant")
    if max_tokens is not None:  # a reply far over the limit is refused from a prefix, before the template runs
        text_token_ids(tokenizer, text, False, max_tokens, where, option)
    try:
        whole = tokenizer.apply_chat_template(prompt + response, tokenize=True, return_dict=True)["input_ids"]
    except jinja2.TemplateError as e:
        owner = getattr(tokenizer, "name_or_path", "") or "the tokenizer"
        raise DataError(f"{where}: the chat template of {owner} refused the conversation ({' '.join(str(e).split())}); "
                        "change the messages to suit the template (roles, order), or the template") from None
    whole = list(whole)
    n = len(prompt_ids)
    if len(whole) > n and whole[:n] == list(prompt_ids):
        return whole[n:]
    return encode_response(tokenizer, text, max_tokens, where, option)


def right_pad(seqs: list[list[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """[B, T] ids and 0/1 mask of right-padded sequences; the mask comes from lengths, never from pad ids."""
    width = max(len(x) for x in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, x in enumerate(seqs):
        ids[i, : len(x)] = torch.tensor(x, dtype=torch.long)
        mask[i, : len(x)] = 1
    return ids, mask


def tokenize_responses(responses: list[str], tokenizer, max_tokens: int, source: str) -> list[list[int]]:
    """Token ids of each fixed response with EOS appended (the response ends there, as a sampled one would)."""
    out = []
    for i, text in enumerate(responses):
        where = f"{source}, row {i + 1}, field 'response'"
        ids = encode_response(tokenizer, text, max_tokens, where, "--rollout.max-new-tokens")
        check_length(len(ids), max_tokens, where, "--rollout.max-new-tokens")
        out.append(ids)
    return out
