"""Rollout engine pieces: response masks, batched log-probs against a slow per-row computation,
the three reference modes, reward sources and preprocessing."""

from __future__ import annotations

import math

import pytest
import torch

from rlcf.config import ModelConfig
from rlcf.data import left_pad
from rlcf.models import build_models, load_causal_lm, load_tokenizer
from rlcf.rewards import RewardScaler, RewardSource
from rlcf.train.rollout import last_token_index, response_mask_from_ids


def test_response_mask_stops_at_first_eos_and_flags_truncation():
    eos, pad = 2, 0
    ids = torch.tensor([
        [5, 6, eos, pad, pad],   # EOS then padding
        [5, eos, eos, eos, eos],  # pad == eos: the first EOS is real, the rest are padding
        [5, 6, 7, 8, 9],          # cut at max_new_tokens: no EOS
        [eos, pad, pad, pad, pad],  # empty answer: only EOS
    ])
    mask, truncated = response_mask_from_ids(ids, {eos})
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 0, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]]
    assert truncated.tolist() == [False, False, True, False]
    # the score lands on the last real token: the EOS itself, or the last token of a truncated answer
    assert last_token_index(mask).tolist() == [2, 1, 4, 0]


def test_multiple_eos_ids():
    ids = torch.tensor([[4, 9, 3, 9], [4, 3, 9, 9]])
    mask, _ = response_mask_from_ids(ids, {9, 3})
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 0, 0]]


def _slow_logprobs(model, prompt: list[int], response: list[int]) -> torch.Tensor:
    """Unpadded, one row at a time, full log-softmax: the independent reference."""
    ids = torch.tensor([prompt + response])
    logits = model(input_ids=ids).logits[0].double()
    logp = torch.log_softmax(logits, -1)
    return torch.stack([logp[len(prompt) - 1 + t, tok] for t, tok in enumerate(response)])


def _toy_batch(tok):
    prompts = [tok("the cat sat")["input_ids"], tok("a happy dog ran in the park")["input_ids"], tok("sea")["input_ids"]]
    responses = [[7, 8, 9, tok.eos_token_id], [10, tok.eos_token_id, tok.pad_token_id, tok.pad_token_id], [11, 12, 13, 14]]
    q_ids, q_mask = left_pad(prompts, tok.pad_token_id)
    r_ids = torch.tensor(responses)
    r_mask, _ = response_mask_from_ids(r_ids, {tok.eos_token_id})
    return prompts, responses, q_ids, q_mask, r_ids, r_mask


@pytest.mark.parametrize("mode", ["copy", "top_blocks", "lora"])
def test_batched_logprobs_match_slow_per_row(tiny_model_dir, mode):
    models = build_models(ModelConfig(name_or_path=tiny_model_dir, reference=mode, trainable_blocks=1), None)
    tok = models.tokenizer
    prompts, responses, q_ids, q_mask, r_ids, r_mask = _toy_batch(tok)
    logprobs, ref, _, _ = models.old_and_ref_logprobs(q_ids, q_mask, r_ids, r_mask)
    plain = load_causal_lm(tiny_model_dir)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        n = int(r_mask[i].sum())
        slow = _slow_logprobs(plain, p, r[:n])
        torch.testing.assert_close(logprobs[i, :n].double(), slow, atol=1e-5, rtol=0)
        torch.testing.assert_close(ref[i, :n].double(), slow, atol=1e-5, rtol=0)


@pytest.mark.parametrize("mode", ["copy", "top_blocks", "lora"])
def test_reference_stays_at_the_initial_policy_when_the_policy_moves(tiny_model_dir, mode):
    models = build_models(ModelConfig(name_or_path=tiny_model_dir, reference=mode, trainable_blocks=2, lora_r=4), None)
    prompts, responses, q_ids, q_mask, r_ids, r_mask = _toy_batch(models.tokenizer)
    before, ref_before, _, _ = models.old_and_ref_logprobs(q_ids, q_mask, r_ids, r_mask)
    with torch.no_grad():
        for p in models.trainable_parameters():
            p.add_(0.5 * torch.randn_like(p))
    after, ref_after, _, _ = models.old_and_ref_logprobs(q_ids, q_mask, r_ids, r_mask)
    assert (after - before).abs().max() > 1e-3, "the policy should have changed"
    torch.testing.assert_close(ref_after, ref_before, atol=1e-6, rtol=0)
    if mode == "top_blocks":  # only the top blocks and the final norm train
        n_train = sum(p.numel() for p in models.trainable_parameters())
        n_blocks = sum(p.numel() for b in models.policy.model.layers[-2:] for p in b.parameters())
        assert n_train == n_blocks + models.policy.model.norm.weight.numel()


def test_value_head_and_separate_critic_give_values_per_response_token(tiny_model_dir):
    for kind in ("value_head", "separate"):
        models = build_models(ModelConfig(name_or_path=tiny_model_dir, critic=kind), kind)
        _, _, q_ids, q_mask, r_ids, r_mask = _toy_batch(models.tokenizer)
        _, values = models(q_ids, q_mask, r_ids, r_mask, with_values=True)
        assert values.shape == r_ids.shape and values.requires_grad
        values.sum().backward()
        head = models.value_head if kind == "value_head" else models.critic.head
        assert head.net[0].weight.grad.abs().sum() > 0


def test_pad_equal_to_eos_tokenizer(tiny_model_dir_pad_eos):
    tok = load_tokenizer(tiny_model_dir_pad_eos)
    assert tok.pad_token_id == tok.eos_token_id
    ids = torch.tensor([[7, tok.eos_token_id, tok.pad_token_id]])
    mask, truncated = response_mask_from_ids(ids, {tok.eos_token_id})
    assert mask.tolist() == [[1, 1, 0]] and not truncated.item()


def test_reward_scaler_running_ref_none_and_clip():
    batches = [torch.tensor([1.0, 3.0, -2.0]), torch.tensor([20.0, 0.5]), torch.tensor([4.0, -1.0, 2.0])]
    running = RewardScaler(clip=10.0, scaling="running")
    seen = []
    for b in batches:
        out = running(b)
        seen += b.clamp(-10, 10).tolist()
        std = torch.tensor(seen, dtype=torch.float64).std().item()
        torch.testing.assert_close(out, (b.clamp(-10, 10) / std).float())
    ref = RewardScaler(clip=10.0, scaling="ref")
    first_std = batches[0].std().item()
    for b in batches:
        torch.testing.assert_close(ref(b), b.clamp(-10, 10) / first_std)
    none = RewardScaler(clip=2.5, scaling="none")
    assert none(torch.tensor([-4.0, 1.0, 3.0])).tolist() == [-2.5, 1.0, 2.5]
    restored = RewardScaler(scaling="running")
    restored.load_state_dict(running.state_dict())
    assert math.isclose(restored.std, running.std)


def test_reward_function_errors_name_the_problem():
    with pytest.raises(ValueError, match=r"returned 1 values for 2 responses"):
        RewardSource("helpers.vowel_reward:wrong_count")(["a", "b"], ["x", "y"])
    with pytest.raises(ValueError, match=r"row 0.*finite"):
        RewardSource("helpers.vowel_reward:nan_reward")(["a"], ["x"])
    with pytest.raises(ValueError, match=r"module:function"):
        RewardSource("no_colon_here")
    with pytest.raises(ValueError, match=r"cannot import module"):
        RewardSource("not_a_module_xyz:f")


def test_hf_reward_model_uses_its_own_tokenizer(tmp_path, tiny_model_dir):
    from transformers import AutoModelForSequenceClassification

    rm = AutoModelForSequenceClassification.from_pretrained(tiny_model_dir, num_labels=1)
    rm.config.pad_token_id = load_tokenizer(tiny_model_dir).pad_token_id
    rm.save_pretrained(tmp_path / "rm")
    load_tokenizer(tiny_model_dir).save_pretrained(tmp_path / "rm")
    source = RewardSource(model=str(tmp_path / "rm"), batch_size=2)
    scores = source(["a prompt", "another prompt", "p"], ["good", "a longer answer here", "x"])
    # batched, padded scoring equals scoring each text alone
    alone = torch.cat([source(["a prompt"], ["good"]), source(["another prompt"], ["a longer answer here"]), source(["p"], ["x"])])
    torch.testing.assert_close(scores, alone, atol=1e-5, rtol=0)
