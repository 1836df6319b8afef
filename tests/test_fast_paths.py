"""The throughput paths give the numbers of the plain ones: memory-lean token log-probs, the top_blocks cache
(trunk computed once, captured during sampling), and pi_old taken from the update's own forward."""

from __future__ import annotations

import pytest
import torch

import rlcf.models.logprobs as models_mod
import rlcf.trainer as trainer_mod
from rlcf.config import ModelConfig, RolloutConfig
from rlcf.data import left_pad
from rlcf.generation import HFBackend
from rlcf.models import build_models, token_logprobs
from rlcf.train.rollout import eos_token_ids, response_mask_from_ids
from rlcf.trainer import train
from helpers.common import read_metrics
from test_trainer import tiny_config


def _naive(logits, targets, temperature):
    return torch.log_softmax(logits.double() / temperature, -1).gather(-1, targets.unsqueeze(-1)).squeeze(-1)


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_token_logprobs_values_and_gradients_match_a_full_log_softmax(monkeypatch, temperature):
    monkeypatch.setattr(models_mod, "_CHUNK_ELEMENTS", 2 * 5 * 11)  # several chunks of 2 rows
    g = torch.Generator().manual_seed(0)
    logits = (3 * torch.randn(5, 6, 11, generator=g)).requires_grad_()
    targets = torch.randint(0, 11, (5, 6), generator=g)
    weights = torch.randn(5, 6, generator=g)
    fast = token_logprobs(logits, targets, temperature)
    (fast * weights).sum().backward()
    grad_fast = logits.grad.clone()
    logits.grad = None
    slow = _naive(logits, targets, temperature)
    (slow * weights.double()).sum().backward()
    assert fast.dtype == torch.float32
    torch.testing.assert_close(fast.double(), slow, atol=1e-5, rtol=0)
    torch.testing.assert_close(grad_fast, logits.grad, atol=1e-5, rtol=0)


def _batch(tok, n=4, T=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    prompts = [tok("the cat sat on the mat")["input_ids"], tok("sea")["input_ids"], tok("a happy dog")["input_ids"],
               tok("describe a rainy morning please")["input_ids"]][:n]
    q_ids, q_mask = left_pad(prompts, tok.pad_token_id)
    r_ids = torch.randint(10, 300, (n, T), generator=g)
    r_ids[1, 2] = tok.eos_token_id  # one short response, padded after its EOS
    r_ids[1, 3:] = tok.pad_token_id
    r_mask, _ = response_mask_from_ids(r_ids, {tok.eos_token_id})
    return q_ids, q_mask, r_ids, r_mask


def test_top_blocks_cached_trunk_gives_the_same_logprobs_and_gradients(tiny_model_dir):
    models = build_models(ModelConfig(name_or_path=tiny_model_dir, reference="top_blocks", trainable_blocks=2), None)
    q_ids, q_mask, r_ids, r_mask = _batch(models.tokenizer)
    with torch.no_grad():  # move the policy away from the reference so both paths are exercised
        for p in models.trainable_parameters():
            p.add_(0.3 * torch.randn_like(p))
    params = models.trainable_parameters()

    def loss_and_grads(hidden):
        for p in params:
            p.grad = None
        logprobs, _ = models(q_ids, q_mask, r_ids, r_mask, 0.9, hidden=hidden)
        (logprobs * r_mask).sum().backward()
        return logprobs.detach(), [p.grad.clone() for p in params]

    plain, plain_grads = loss_and_grads(None)
    hidden = models.trunk_hidden(q_ids, q_mask, r_ids, r_mask)
    assert hidden.shape == (*torch.cat([q_ids, r_ids], 1).shape, 32)
    cached, cached_grads = loss_and_grads(hidden)
    torch.testing.assert_close(cached * r_mask, plain * r_mask, atol=1e-6, rtol=0)
    for a, b in zip(cached_grads, plain_grads):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5)
    # the reference from the cached trunk equals the one computed from scratch, and differs from the policy
    _, ref_cached, _, _ = models.old_and_ref_logprobs(q_ids, q_mask, r_ids, r_mask, 0.9, hidden=hidden)
    _, ref_plain, _, _ = models.old_and_ref_logprobs(q_ids, q_mask, r_ids, r_mask, 0.9)
    torch.testing.assert_close(ref_cached, ref_plain, atol=1e-6, rtol=0)
    assert ((ref_plain - plain) * r_mask).abs().max() > 1e-3
    # and the top-blocks swap is undone: a plain forward still runs every block
    assert len(models.policy.model.layers) == 3


def test_trunk_output_recorded_while_sampling_matches_a_full_forward(tiny_model_dir):
    models = build_models(ModelConfig(name_or_path=tiny_model_dir, reference="top_blocks", trainable_blocks=1), None)
    tok = models.tokenizer
    q_ids, q_mask, _, _ = _batch(tok)
    eos = eos_token_ids(tok, models.policy)
    backend = HFBackend(models.policy, tok.pad_token_id, eos, chunk_rows=3)  # two chunks of different lengths
    torch.manual_seed(0)
    gen = backend.generate(q_ids, q_mask, RolloutConfig(max_new_tokens=7), capture=models.first_trainable_block())
    r_mask, _ = response_mask_from_ids(gen.response_ids, eos)
    full = models.trunk_hidden(q_ids, q_mask, gen.response_ids, r_mask)
    assert gen.hidden.shape == full.shape
    # every position that feeds a response token's log-prob: real prompt tokens and response tokens but the last
    keep = torch.cat([q_mask, r_mask], 1).bool()
    keep[:, q_ids.shape[1]:] &= torch.nn.functional.pad(r_mask[:, 1:], (0, 1)).bool() | (
        torch.arange(r_mask.shape[1]) == 0)
    torch.testing.assert_close(gen.hidden[keep], full[keep], atol=1e-5, rtol=1e-4)
    _, ref_gen, _, _ = models.old_and_ref_logprobs(q_ids, q_mask, gen.response_ids, r_mask, hidden=gen.hidden)
    _, ref_full, _, _ = models.old_and_ref_logprobs(q_ids, q_mask, gen.response_ids, r_mask)
    torch.testing.assert_close(ref_gen * r_mask, ref_full * r_mask, atol=1e-5, rtol=0)


@pytest.mark.parametrize("algo,reference", [("p3o", "copy"), ("ppo", "top_blocks")])
def test_pi_old_from_the_update_forward_matches_the_separate_pass(tiny_model_dir, tmp_path, monkeypatch, algo,
                                                                  reference):
    over = {"optim.epochs": 1, "optim.minibatch_prompts": 16, "model.reference": reference,
            "model.trainable_blocks": 2, "model.critic": "value_head"}
    train(tiny_config(tiny_model_dir, tmp_path / "once", algo, steps=3, **over))
    monkeypatch.setattr(trainer_mod, "single_pass", lambda cfg: False)
    train(tiny_config(tiny_model_dir, tmp_path / "twice", algo, steps=3, **over))
    once, twice = read_metrics(tmp_path / "once"), read_metrics(tmp_path / "twice")
    for a, b in zip(once, twice):
        for key in ("reward/mean", "kl/k1_seq", "loss/policy", "policy/grad_norm"):
            assert a[key] == pytest.approx(b[key], abs=1e-4, rel=1e-3), key
    from safetensors.torch import load_file

    w1 = load_file(str(tmp_path / "once" / "final" / "model.safetensors"))
    w2 = load_file(str(tmp_path / "twice" / "final" / "model.safetensors"))
    for name in w1:
        torch.testing.assert_close(w1[name], w2[name], atol=1e-4, rtol=1e-3)  # an Adam step is lr = 3e-3


def test_inverse_cdf_sampler_draws_from_the_tempered_softmax():
    from rlcf.generation import sample_from_logits

    logits = torch.tensor([[2.0, 0.5, -1.0, 1.0, -30.0], [0.0, 0.0, 0.0, 0.0, 0.0]])
    torch.manual_seed(0)
    draws = torch.stack([sample_from_logits(logits, 0.8) for _ in range(20000)])  # [N, 2]
    for row in range(2):
        freq = torch.bincount(draws[:, row], minlength=5).double() / draws.shape[0]
        want = torch.softmax(logits[row].double() / 0.8, -1)
        assert (freq - want).abs().max() < 0.012, (freq, want)  # 4 standard errors at N = 20000
    assert int((draws[:, 0] == 4).sum()) == 0  # a token of probability ~1e-16 is never drawn


def test_decode_loop_matches_transformers_generate_token_for_token_when_greedy(tiny_model_dir):
    """At a vanishing temperature both samplers pick the argmax: the cache, positions under left padding, EOS
    handling and padding of the decode loop must then reproduce generate()'s tokens exactly."""
    from rlcf.generation import decode, plain_generation_config

    models = build_models(ModelConfig(name_or_path=tiny_model_dir), None)
    tok, lm = models.tokenizer, models.policy.eval()
    q_ids, q_mask, _, _ = _batch(tok)
    eos = {tok.eos_token_id, 5}  # a second, frequent EOS id so that some rows stop early
    ours = decode(lm, q_ids, q_mask, RolloutConfig(max_new_tokens=12, temperature=1e-6), tok.pad_token_id, eos)
    with torch.no_grad(), plain_generation_config(lm, tok.pad_token_id, eos):
        ref = lm.generate(input_ids=q_ids, attention_mask=q_mask, do_sample=False, max_new_tokens=12)[:, q_ids.shape[1]:]
    assert ours.shape == ref.shape
    assert torch.equal(ours, ref)
