"""Tiny random models and tokenizers, built locally (nothing is loaded from a hub)."""

from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))

CORPUS = [
    "the cat sat on the mat", "a happy dog ran in the park", "write a short note about the sea",
    "tell me about your day", "describe a rainy morning", "what a lovely bright sunny day",
    "bad sad gloomy awful weather", "good great wonderful amazing", "aeiou aeiou vowels everywhere",
] * 20

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<eos>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tokenizer(chat: bool = True):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    specials = ["<pad>", "<eos>", "<bos>", "<|user|>", "<|assistant|>", "<|system|>"]
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(CORPUS, trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", bos_token="<bos>")
    if chat:
        fast.chat_template = CHAT_TEMPLATE
    return fast


def build_tiny_model_dir(path, pad_is_eos: bool = False, chat: bool = True, seed: int = 0) -> str:
    from transformers import LlamaConfig, LlamaForCausalLM

    tok = build_tokenizer(chat)
    if pad_is_eos:
        tok.pad_token = tok.eos_token
    torch.manual_seed(seed)
    cfg = LlamaConfig(
        vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, tie_word_embeddings=True,
        bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
    )
    model = LlamaForCausalLM(cfg)
    model.generation_config.eos_token_id = tok.eos_token_id
    model.generation_config.pad_token_id = tok.pad_token_id
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny_lm"))


@pytest.fixture(scope="session")
def tiny_model_dir_pad_eos(tmp_path_factory):
    return build_tiny_model_dir(tmp_path_factory.mktemp("tiny_lm_pad_eos"), pad_is_eos=True)


@pytest.fixture()
def prompts_file(tmp_path):
    import json

    p = tmp_path / "prompts.jsonl"
    lines = ["describe the sea", "tell me about a cat", "write a note", "a rainy day", "the park", "good dog",
             "a sunny morning", "what is a mat"]
    p.write_text("".join(json.dumps({"prompt": s}) + "\n" for s in lines))
    return str(p)
