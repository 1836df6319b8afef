"""ILQL model side (src/rlcf/ilql.py): heads, the training forward, saving, and advantage-perturbed decoding."""

from __future__ import annotations

import json

import pytest
import torch

from rlcf.config import RolloutConfig
from rlcf.generation import HFBackend, decode, plain_generation_config
from rlcf.models.ilql import ILQLDecoding, ILQLHeads, ILQLModel, load_ilql, save_ilql
from rlcf.models import (ModelError, load_causal_lm, load_tokenizer, response_logprobs, sequence_inputs,
                         token_logprobs)
from rlcf.train.rollout import eos_token_ids


def _lm(path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()


def _batch(vocab: int = 320, seed: int = 0):
    """3 rows: left-padded prompts (Q = 5) and right-padded responses (T = 4) with 4, 2 and 1 real tokens."""
    g = torch.Generator().manual_seed(seed)
    query_ids = torch.randint(10, vocab, (3, 5), generator=g)
    query_mask = torch.tensor([[1, 1, 1, 1, 1], [0, 0, 1, 1, 1], [0, 1, 1, 1, 1]])
    query_ids = query_ids * query_mask  # pad id 0
    response_ids = torch.randint(10, vocab, (3, 4), generator=g)
    response_mask = torch.tensor([[1, 1, 1, 1], [1, 1, 0, 0], [1, 0, 0, 0]]).float()
    response_ids = torch.where(response_mask > 0, response_ids, torch.zeros_like(response_ids))
    return query_ids, query_mask, response_ids, response_mask


def _scramble_targets(heads: ILQLHeads, seed: int = 1) -> None:
    """Make the target heads differ from the Q heads and from each other (so min over them matters)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in heads.target_q_heads.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))
        for p in heads.v_head.parameters():
            p.add_(0.3 * torch.randn(p.shape, generator=g))


def test_forward_shapes_states_and_lm_logits(tiny_model_dir):
    lm = _lm(tiny_model_dir)
    model = ILQLModel(lm, two_qs=True).eval()
    q, qm, r, rm = _batch()
    B, Q, T, V = 3, 5, 4, lm.config.vocab_size
    out = model(q, qm, r, rm)
    assert out["lm_logits"].shape == (B, T, V)
    assert len(out["qs"]) == 2 and len(out["target_qs"]) == 2
    assert all(x.shape == (B, T, V) for x in out["qs"] + out["target_qs"])
    assert out["vs"].shape == (B, T + 1)
    # the LM logits are those response_logprobs scores the response with
    ref = response_logprobs(lm, q, qm, r, rm)
    torch.testing.assert_close(token_logprobs(out["lm_logits"], r), ref, atol=1e-6, rtol=0)
    # the heads read the last hidden state after the final norm (what the LM head reads), at positions Q-1 .. Q+T-1
    ids, mask, pos = sequence_inputs(q, qm, r, rm)
    full = lm(input_ids=ids, attention_mask=mask, position_ids=pos, output_hidden_states=True, use_cache=False)
    h = full.hidden_states[-1]
    torch.testing.assert_close(lm.lm_head(h[:, Q - 1 : Q + T - 1]), out["lm_logits"], atol=1e-5, rtol=0)
    torch.testing.assert_close(out["lm_logits"], full.logits[:, Q - 1 : Q + T - 1], atol=1e-5, rtol=0)
    torch.testing.assert_close(out["qs"][1], model.heads.q_heads[1](h[:, Q - 1 : Q + T - 1]), atol=1e-5, rtol=0)
    torch.testing.assert_close(out["vs"], model.heads.values(h[:, Q - 1 : Q + T]), atol=1e-5, rtol=0)
    # terminal convention: a row with n real response tokens ends in state n, V there = V after its last real token,
    # the same as on the row alone without any padding
    for i in range(B):
        n = int(rm[i].sum())
        alone = torch.cat([q[i][qm[i] > 0], r[i, :n]])[None]
        h_alone = lm(input_ids=alone, output_hidden_states=True, use_cache=False).hidden_states[-1]
        torch.testing.assert_close(out["vs"][i, n], model.heads.values(h_alone)[0, -1], atol=1e-5, rtol=1e-5)
        # and Q at state t on the unpadded row
        torch.testing.assert_close(out["qs"][0][i, :n], model.heads.q_heads[0](h_alone[0, -n - 1 : -1]),
                                   atol=1e-5, rtol=1e-5)
    one = ILQLModel(_lm(tiny_model_dir), two_qs=False)(q, qm, r, rm)
    assert len(one["qs"]) == 1 and len(one["target_qs"]) == 1


def test_gradients_reach_heads_and_lm_but_never_the_targets(tiny_model_dir):
    model = ILQLModel(_lm(tiny_model_dir))
    out = model(*_batch())
    assert all(t.grad_fn is None and not t.requires_grad for t in out["target_qs"])
    loss = sum(x.mean() for x in out["qs"]) + out["vs"].mean() + out["lm_logits"].mean()
    loss.backward()
    assert all(p.grad is None for p in model.heads.target_q_heads.parameters())
    assert all(p.grad is not None for p in model.heads.q_heads.parameters())
    assert all(p.grad is not None for p in model.heads.v_head.parameters())
    assert model.lm.get_input_embeddings().weight.grad is not None
    targets = {id(p) for p in model.heads.target_q_heads.parameters()}
    assert not targets & {id(p) for p in model.trainable_parameters()}


def test_target_heads_start_as_copies_and_sync_is_the_convex_mix():
    heads = ILQLHeads(8, 11, two_qs=True)
    for q, t in zip(heads.q_heads.parameters(), heads.target_q_heads.parameters()):
        assert torch.equal(q, t) and q.data_ptr() != t.data_ptr()
        assert q.requires_grad and not t.requires_grad
    before = [t.detach().clone() for t in heads.target_q_heads.parameters()]
    with torch.no_grad():
        for p in heads.q_heads.parameters():
            p.add_(torch.randn_like(p))
    heads.sync_targets(0.25)
    for q, t, b in zip(heads.q_heads.parameters(), heads.target_q_heads.parameters(), before):
        torch.testing.assert_close(t, 0.25 * q + 0.75 * b)
        assert not t.requires_grad
    heads.sync_targets(1.0)
    assert all(torch.equal(q, t) for q, t in zip(heads.q_heads.parameters(), heads.target_q_heads.parameters()))
    with pytest.raises(ValueError, match="alpha"):
        heads.sync_targets(1.5)
    # forward shapes and the advantage: min over the target Qs minus V
    _scramble_targets(heads)
    h = torch.randn(2, 3, 8, requires_grad=True)
    qs, tqs, vs = heads(h)
    assert [x.shape for x in qs + tqs] == [(2, 3, 11)] * 4 and vs.shape == (2, 3)
    assert all(not t.requires_grad for t in tqs)
    lm = torch.randn(tqs[0].shape)
    torch.testing.assert_close(heads.decode_logits(lm, h, 2.0), lm + 2.0 * (torch.minimum(tqs[0], tqs[1]) - vs[..., None]))
    assert not torch.equal(tqs[0], tqs[1])


def test_trainable_blocks_freezes_all_but_the_top(tiny_model_dir):
    lm = _lm(tiny_model_dir)
    model = ILQLModel(lm, trainable_blocks=1)
    trainable = {id(p) for p in model.trainable_parameters()}
    top, norm = lm.model.layers[-1], lm.model.norm
    expected = {id(p) for m in (top, norm, model.heads.q_heads, model.heads.v_head) for p in m.parameters()}
    assert trainable == expected  # the tiny model ties its LM head to the embeddings: that stays frozen
    assert not any(p.requires_grad for p in lm.model.layers[0].parameters())
    out = model(*_batch())
    (out["lm_logits"].mean() + out["vs"].mean() + out["qs"][0].mean()).backward()
    assert all(p.grad is not None for p in top.parameters())
    assert all(p.grad is None for p in lm.model.layers[0].parameters())
    with pytest.raises(ValueError, match="trainable_blocks=7"):
        ILQLModel(_lm(tiny_model_dir), trainable_blocks=7)


@pytest.fixture(scope="module")
def ilql_folder(tmp_path_factory, tiny_model_dir):
    """A saved ILQL model (beta 0.7, scrambled targets) and the ILQLModel it came from."""
    torch.manual_seed(0)
    model = ILQLModel(_lm(tiny_model_dir)).eval()
    _scramble_targets(model.heads)
    folder = tmp_path_factory.mktemp("ilql") / "final"
    save_ilql(model, load_tokenizer(tiny_model_dir), folder, beta=0.7, cfg_dict={"gamma": 0.99, "tau": 0.7})
    return folder, model


def test_save_load_round_trip(ilql_folder, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    folder, model = ilql_folder
    names = {p.name for p in folder.iterdir()}
    assert {"config.json", "model.safetensors", "ilql_heads.safetensors", "ilql.json"} <= names
    assert not [n for n in names if n.endswith((".bin", ".pt", ".pth", ".pkl", ".ckpt"))]
    meta = json.loads((folder / "ilql.json").read_text())
    assert meta["beta"] == 0.7 and meta["two_qs"] is True and meta["config"] == {"gamma": 0.99, "tau": 0.7}
    assert meta["hidden_size"] == 32 and meta["vocab_size"] == model.lm.config.vocab_size

    dec = load_ilql(folder)
    assert isinstance(dec, ILQLDecoding) and dec.beta == 0.7 and not dec.training
    q, qm, r, rm = _batch()
    T = r.shape[1]
    with torch.no_grad():
        out = model(q, qm, r, rm)
        expected = out["lm_logits"] + 0.7 * (torch.minimum(*out["target_qs"]) - out["vs"][:, :-1, None])
        ids, mask, pos = sequence_inputs(q, qm, r, rm)
        got = dec(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False, logits_to_keep=T + 1)
    torch.testing.assert_close(got.logits[:, :-1], expected, atol=1e-5, rtol=1e-5)
    assert not torch.allclose(got.logits[:, :-1], out["lm_logits"], atol=1e-2)  # the heads did change something
    # log-prob code reading model(...).logits scores the ILQL policy
    torch.testing.assert_close(response_logprobs(dec, q, qm, r, rm), token_logprobs(expected, r), atol=1e-5, rtol=0)
    # all heads (targets included) came back
    for a, b in zip(model.heads.state_dict().values(), dec.heads.state_dict().values()):
        assert torch.equal(a, b)
    # the folder is a plain transformers LM: the behaviour-cloned LM's logits
    plain = AutoModelForCausalLM.from_pretrained(folder).eval()
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids, attention_mask=mask, position_ids=pos).logits,
                                   model.lm(input_ids=ids, attention_mask=mask, position_ids=pos).logits)
    # a beta override
    assert load_ilql(folder, beta=0.0).beta == 0.0


def test_damaged_ilql_folder_is_one_clear_error(ilql_folder, tmp_path):
    import shutil

    folder, _ = ilql_folder
    bad = tmp_path / "bad"
    shutil.copytree(folder, bad)
    (bad / "ilql_heads.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(ModelError, match="ILQL heads"):
        load_ilql(bad)
    (bad / "ilql.json").write_text("{}")
    with pytest.raises(ModelError, match="lacks beta"):
        load_ilql(bad)
    with pytest.raises(ValueError, match="beta"):
        save_ilql(ILQLModel(_lm(folder)), None, tmp_path / "x", beta=float("nan"), cfg_dict={})


def _prompts(tok):
    from rlcf.data import left_pad

    ids = [tok("the cat sat")["input_ids"], tok("a happy dog ran in the park")["input_ids"], tok("bad")["input_ids"]]
    return left_pad(ids, tok.pad_token_id)


def test_beta_zero_decodes_exactly_like_the_plain_lm(ilql_folder, tiny_model_dir):
    folder, model = ilql_folder
    tok = load_tokenizer(tiny_model_dir)
    q, qm = _prompts(tok)
    dec = ILQLDecoding(model.lm, model.heads, beta=0.0)
    eos = eos_token_ids(tok, dec)
    assert eos == eos_token_ids(tok, model.lm)
    sampling = RolloutConfig(max_new_tokens=12, temperature=1.0)
    torch.manual_seed(5)
    a = decode(dec, q, qm, sampling, tok.pad_token_id, eos)
    torch.manual_seed(5)
    b = decode(model.lm, q, qm, sampling, tok.pad_token_id, eos)
    assert torch.equal(a, b) and a.shape[1] > 1
    # with the saved beta the samples differ
    torch.manual_seed(5)
    c = decode(load_ilql(folder), q, qm, sampling, tok.pad_token_id, eos)
    assert not torch.equal(a, c)
    # top-k / top-p: HFBackend calls model.generate(); the wrapper's matches transformers' on the plain LM
    trunc = RolloutConfig(max_new_tokens=10, temperature=0.8, top_k=20, top_p=0.9)
    torch.manual_seed(7)
    x = HFBackend(dec, tok.pad_token_id, eos).generate(q, qm, trunc).response_ids
    torch.manual_seed(7)
    y = HFBackend(model.lm, tok.pad_token_id, eos).generate(q, qm, trunc).response_ids
    assert torch.equal(x, y)
    with pytest.raises(ValueError, match="num_beams"):
        dec.generate(q, attention_mask=qm, max_new_tokens=3, num_beams=2)


def test_large_beta_follows_the_advantage(tiny_model_dir):
    tok = load_tokenizer(tiny_model_dir)
    lm = _lm(tiny_model_dir)
    heads = ILQLHeads(32, lm.config.vocab_size)
    favoured = 42
    assert favoured not in eos_token_ids(tok, lm) | {tok.pad_token_id}
    with torch.no_grad():
        for head in heads.target_q_heads:
            head[2].weight.zero_()
            head[2].bias.zero_()
            head[2].bias[favoured] = 2.0
        heads.v_head[2].weight.zero_()
        heads.v_head[2].bias.fill_(1.0)  # V shifts every action's advantage alike: the argmax is unchanged
    dec = ILQLDecoding(lm, heads, beta=50.0)
    q, qm = _prompts(tok)
    eos = eos_token_ids(tok, dec)
    torch.manual_seed(0)
    out = decode(dec, q, qm, RolloutConfig(max_new_tokens=6), tok.pad_token_id, eos)
    assert (out == favoured).all()
    # the same through generate() (top-k path) and with greedy decoding
    torch.manual_seed(0)
    out = HFBackend(dec, tok.pad_token_id, eos).generate(q, qm, RolloutConfig(max_new_tokens=6, top_k=5)).response_ids
    assert (out == favoured).all()
    with plain_generation_config(dec, tok.pad_token_id, eos):
        greedy = dec.generate(q, attention_mask=qm, do_sample=False, max_new_tokens=4)
    assert (greedy[:, q.shape[1] :] == favoured).all()
    # with the plain LM that token is not what comes out
    torch.manual_seed(0)
    plain = decode(lm, q, qm, RolloutConfig(max_new_tokens=6), tok.pad_token_id, eos)
    assert not (plain == favoured).all()


def test_kv_cache_decoding_matches_a_full_forward(ilql_folder, tiny_model_dir):
    folder, _ = ilql_folder
    dec = load_ilql(folder, beta=1.5)
    tok = load_tokenizer(tiny_model_dir)
    q, qm = _prompts(tok)
    B, Q = q.shape
    mask, pos = qm.clone(), (qm.cumsum(-1) - 1).clamp(min=0)
    cur, cache, steps, tokens = q, None, [], []
    with torch.no_grad():
        for _ in range(5):
            out = dec(input_ids=cur, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True,
                      logits_to_keep=1)
            assert out.logits.shape == (B, 1, dec.config.vocab_size)
            cache = out.past_key_values
            steps.append(out.logits[:, -1])
            nxt = out.logits[:, -1].argmax(-1)
            tokens.append(nxt)
            cur, pos = nxt[:, None], pos[:, -1:] + 1
            mask = torch.cat([mask, mask.new_ones(B, 1)], dim=1)
        seq = torch.cat([q] + [t[:, None] for t in tokens[:-1]], dim=1)
        full_mask = mask[:, :-1]
        full = dec(input_ids=seq, attention_mask=full_mask, position_ids=(full_mask.cumsum(-1) - 1).clamp(min=0),
                   use_cache=False).logits
    torch.testing.assert_close(torch.stack(steps, dim=1), full[:, Q - 1 :], atol=1e-4, rtol=1e-4)


def test_load_causal_lm_returns_the_wrapper_only_for_ilql_folders(ilql_folder, tiny_model_dir):
    from transformers import PreTrainedModel

    folder, _ = ilql_folder
    dec = load_causal_lm(str(folder))
    assert isinstance(dec, ILQLDecoding) and dec.beta == 0.7
    plain = load_causal_lm(str(folder), ilql_decoding=False)
    assert isinstance(plain, PreTrainedModel) and not isinstance(plain, ILQLDecoding)
    assert isinstance(load_causal_lm(tiny_model_dir), PreTrainedModel)
    half = load_causal_lm(str(folder), "bfloat16")
    assert half.dtype == torch.bfloat16 and half.heads.v_head[0].weight.dtype == torch.float32
    with torch.no_grad():
        logits = half(input_ids=torch.tensor([[5, 6, 7]]), logits_to_keep=1).logits
    assert logits.dtype == torch.float32 and logits.shape == (1, 1, dec.config.vocab_size) and logits.isfinite().all()
    # what rlcf's sampling code touches on a model
    tok = load_tokenizer(str(folder))
    saved = dec.generation_config
    with plain_generation_config(dec, tok.pad_token_id, {tok.eos_token_id}):
        assert dec.lm.generation_config is dec.generation_config is not saved
    assert dec.generation_config is saved
    assert dec.device.type == "cpu" and dec.config is dec.lm.config
    assert dec.get_input_embeddings() is dec.lm.get_input_embeddings()
    with pytest.raises(ValueError, match="no loss"):
        dec(input_ids=torch.tensor([[5, 6]]), labels=torch.tensor([[5, 6]]))


def test_rlcf_eval_runs_the_ilql_policy(tmp_path, ilql_folder, tiny_model_dir, prompts_file):
    """`rlcf eval --model RUN/final` samples and scores the ILQL policy: KL to the base LM is 0 at beta = 0 (the
    behaviour-cloned LM here is the untrained base) and positive at the saved beta."""
    from rlcf.config import EvalConfig
    from rlcf.evaluate import run_eval

    folder, model = ilql_folder

    def report(model_dir, name):
        cfg = EvalConfig(model=str(model_dir), reference=tiny_model_dir, prompts=prompts_file, max_prompts=3,
                         samples_per_prompt=1, rollout=RolloutConfig(max_new_tokens=6, prompts_per_step=3),
                         output=str(tmp_path / f"{name}.json"))
        return json.loads(run_eval(cfg).read_text())

    assert report(folder, "beta")["policy"]["kl/k3_seq"] > 0
    zero = tmp_path / "zero"
    save_ilql(model, load_tokenizer(tiny_model_dir), zero, beta=0.0, cfg_dict={})
    assert report(zero, "zero")["policy"]["kl/k3_seq"] == pytest.approx(0.0, abs=1e-6)
