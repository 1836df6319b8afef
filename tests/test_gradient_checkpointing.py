"""--model.gradient-checkpointing: the same gradients as without it, in every reference mode and for both critics,
and the blocks really do run again in the backward pass (so memory is traded for compute)."""

from __future__ import annotations

import pytest
import torch
from test_rollout import _toy_batch

from rlcf.config import ModelConfig
from rlcf.models import build_models, decoder_layers


def _grads(tiny_model_dir, mode: str, critic: str | None, checkpointing: bool):
    torch.manual_seed(0)  # the critic's head and LoRA's adapters start the same in both builds
    cfg = ModelConfig(name_or_path=tiny_model_dir, reference=mode, trainable_blocks=2, gradient_checkpointing=checkpointing,
                      lora_dropout=0.0, **({"critic": critic} if critic else {}))
    models = build_models(cfg, critic)
    if mode == "lora":  # peft starts LoRA's B at zero: move it, so the adapters' A matrices get a gradient too
        with torch.no_grad():
            for n, p in models.policy.named_parameters():
                if "lora_B" in n:
                    p.copy_(torch.randn_like(p) * 0.1)
    _, _, q_ids, q_mask, r_ids, r_mask = _toy_batch(models.tokenizer)
    calls = []
    # inside the block (transformers checkpoints a block's forward, its own hooks stay outside); a pre-hook, since the
    # recompute may stop early once it has what the backward needs
    handle = decoder_layers(models.base_policy())[-1].mlp.register_forward_pre_hook(lambda *a: calls.append(1))
    models.train()
    hidden = models.trunk_hidden(q_ids, q_mask, r_ids, r_mask) if mode == "top_blocks" else None
    logprobs, values = models(q_ids, q_mask, r_ids, r_mask, with_values=critic is not None, hidden=hidden)
    loss = (logprobs * r_mask).sum() + ((values * r_mask).pow(2).sum() if values is not None else 0.0)
    loss.backward()
    handle.remove()
    grads = {n: p.grad.clone() for n, p in models.named_parameters() if p.requires_grad and p.grad is not None}
    return grads, len(calls)


@pytest.mark.parametrize("mode,critic", [("copy", "separate"), ("top_blocks", "value_head"), ("lora", None),
                                         ("copy", "value_head")])
def test_same_gradients_with_and_without_checkpointing(tiny_model_dir, mode, critic):
    plain, plain_calls = _grads(tiny_model_dir, mode, critic, False)
    ckpt, ckpt_calls = _grads(tiny_model_dir, mode, critic, True)
    assert plain.keys() == ckpt.keys() and len(plain) > 0
    if critic == "separate":
        assert any(n.startswith("critic.trunk.") for n in plain)
    for name in plain:
        torch.testing.assert_close(ckpt[name], plain[name], rtol=1e-5, atol=1e-6, msg=name)
    # the top block ran once without checkpointing, and again in the backward pass with it
    assert plain_calls == 1 and ckpt_calls == 2


def test_checkpointing_is_off_while_sampling(tiny_model_dir):
    """Sampling runs in eval mode: the KV cache is used and nothing is recomputed."""
    models = build_models(ModelConfig(name_or_path=tiny_model_dir, gradient_checkpointing=True), None)
    models.eval()
    _, _, q_ids, q_mask, r_ids, r_mask = _toy_batch(models.tokenizer)
    with torch.no_grad():
        out = models.policy(input_ids=q_ids, attention_mask=q_mask, use_cache=True)
    cache = getattr(out, "cache", None) or out.past_key_values
    assert cache is not None and cache.get_seq_length() == q_ids.shape[1]
