"""`rlcf eval`: sample a policy and its reference on held-out prompts; reward, gold, KL, length, win-rate.

For each prompt, `samples_per_prompt` responses are sampled from the policy and as many from the
reference (the initial policy), with independent random streams. Reported, to a JSON file (rows to a
sibling .samples.jsonl) and as a table on the terminal:

- reward/mean and gold/mean of each, when a reward or gold scorer is given;
- KL(pi || pi_ref), sequence level (sum over response tokens, EOS included), in nats, from the log-probs
  of the POLICY's samples under both models, both at the sampling temperature (so it is the KL between
  the two tempered distributions): k1 = sum_t d_t and k3 = sum_t (exp(-d_t) - 1 + d_t),
  d_t = log pi(y_t|x,y_<t) - log pi_ref(y_t|x,y_<t). Both are unbiased; k3 is the one that is >= 0.
  These are the quantities the trainer logs as kl/k1_seq and kl/k3_seq;
- response/length_mean (tokens, EOS included) and response/truncated_frac (no EOS by max_new_tokens);
- win-rate of the policy against the reference: the i-th policy sample of a prompt is paired with the
  i-th reference sample of that prompt and the judge gives P(policy better); ties count 0.5.

Standard errors and the win-rate interval are taken over prompts (a prompt's samples are averaged
first), since samples of one prompt are not independent. The interval is Wilson's score interval on the
mean outcome with n = number of prompts: exact in form for wins/losses with one sample per prompt, and
conservative with ties or several samples per prompt (a [0, 1] outcome has at most Bernoulli variance).
"""

from __future__ import annotations

import dataclasses
import json
import math
import signal
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import Tensor

from .config import EvalConfig, RolloutConfig
from .data.loading import Prompt, load_prompts, prepare_prompts
from .data.tokens import left_pad
from .errors import DataError
from .files import RunLock, atomic_write, main_process
from .generation import make_backend
from .generation.base import GenerationBackend, eval_mode
from .generation.hf import HFBackend
from .kl import sequence_kl
from .models.hub import load_tokenizer, resolve_model_path
from .models.load import load_causal_lm
from .models.logprobs import response_logprobs
from .rewards.judges import Judge, make_judge, public_url
from .rewards.sources import RewardSource, check_scores, load_callable
from .train.rollout import eos_token_ids, response_mask_from_ids
from .train.safety import RunStopped, StopSignals, check_new_tokens, stop_grace_s

Scorer = Callable[[list[str], list[str]], Sequence[float]]


# ---- sampling and scoring on token ids (no tokenizer needed) ----

@torch.no_grad()
def token_logprobs(model, query_ids: Tensor, query_mask: Tensor, response_ids: Tensor, response_mask: Tensor,
                   temperature: float = 1.0, chunk_rows: int = 32) -> Tensor:
    """log pi(y_t | x, y_<t) [B, T] at `temperature`, zero outside the response mask.

    Position ids follow the attention mask (as in generate), so left padding does not shift them.
    """
    out = []
    with eval_mode(model):
        for s in range(0, query_ids.shape[0], chunk_rows):
            out.append(response_logprobs(model, query_ids[s : s + chunk_rows], query_mask[s : s + chunk_rows],
                                         response_ids[s : s + chunk_rows], response_mask[s : s + chunk_rows],
                                         temperature))
    return torch.cat(out) * response_mask


def sequence_kls(logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Per-sample sequence KL estimates [B] of KL(pi || pi_ref), keyed 'k1' and 'k3' (sums over the mask)."""
    return {e: sequence_kl(logprobs, ref_logprobs, mask, e) for e in ("k1", "k3")}


# ---- statistics ----

def mean_stderr(values: Sequence[float], samples_per_prompt: int = 1) -> tuple[float, float | None]:
    """Mean, and its standard error over prompts (rows grouped `samples_per_prompt` at a time); None for 1 prompt."""
    x = torch.tensor(list(values), dtype=torch.float64)
    per_prompt = x.reshape(-1, samples_per_prompt).mean(1)
    n = per_prompt.numel()
    stderr = float(per_prompt.std(unbiased=True) / math.sqrt(n)) if n > 1 else None
    return float(x.mean()), stderr


def wilson_interval(p: float, n: int, z: float = 1.959964) -> tuple[float, float]:
    """Wilson score interval for a proportion p observed over n trials (95% by default)."""
    if n <= 0:
        return 0.0, 1.0
    denom = 1 + z * z / n
    center = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(max(p * (1 - p), 0.0) / n + z * z / (4 * n * n))
    return max(0.0, center - half), min(1.0, center + half)


def win_rate_summary(outcomes: Sequence[float], samples_per_prompt: int = 1) -> dict:
    """Wins (> 0.5), ties (= 0.5), losses (< 0.5), win_rate = mean outcome, 95% interval over prompts."""
    x = [float(o) for o in outcomes]
    if not x:
        raise ValueError("win_rate_summary: no outcomes")
    for i, o in enumerate(x):
        if not 0.0 <= o <= 1.0:
            raise ValueError(f"judge outcome {o} for pair {i}: must be a probability in [0, 1]")
    rate = sum(x) / len(x)
    lo, hi = wilson_interval(rate, len(x) // samples_per_prompt)
    return {
        "wins": sum(o > 0.5 for o in x), "ties": sum(o == 0.5 for o in x), "losses": sum(o < 0.5 for o in x),
        "n": len(x), "win_rate": rate, "ci95": [lo, hi], "ci_method": "wilson over prompts, ties = 0.5",
    }


def reward_gold_agreement(policy_reward: Sequence[float], reference_reward: Sequence[float],
                          policy_gold: Sequence[float], reference_gold: Sequence[float],
                          samples_per_prompt: int = 1) -> dict | None:
    """How often the reward orders each (policy, reference) pair as the gold scorer does, over the pairs whose gold
    scores differ (a reward tie counts 0.5), with a 95% Wilson interval over prompts; None when gold ties everywhere.

    This is the reward model's pairwise accuracy on the trained policy's own samples: well below its held-out
    accuracy on the labelled pairs, the policy has found responses the reward model overrates (reward hacking)."""
    hits = [1.0 if (pr - rr) * (pg - rg) > 0 else 0.5 if pr == rr else 0.0
            for pr, rr, pg, rg in zip(policy_reward, reference_reward, policy_gold, reference_gold) if pg != rg]
    if not hits:
        return None
    rate = sum(hits) / len(hits)
    lo, hi = wilson_interval(rate, max(1, len(hits) // samples_per_prompt))
    return {"agreement": rate, "n": len(hits), "ci95": [lo, hi],
            "note": "policy vs reference response pairs whose gold scores differ; reward tie = 0.5"}


# ---- the evaluation ----

@dataclass
class Side:
    """The samples of one model: response_ids [B, T], mask [B, T], truncated [B], decoded text [B]."""

    response_ids: Tensor
    mask: Tensor
    truncated: Tensor
    responses: list[str]
    rewards: list[float] | None = None
    gold: list[float] | None = None

    def metrics(self, k: int) -> dict:
        m = {}
        for key, values in (("reward", self.rewards), ("gold", self.gold)):
            if values is not None:
                m[f"{key}/mean"], m[f"{key}/stderr"] = mean_stderr(values, k)
        m["response/length_mean"] = float(self.mask.sum(1).mean())
        m["response/truncated_frac"] = float(self.truncated.float().mean())
        return m


@dataclass
class EvalResult:
    report: dict  # the JSON report (metrics; run_eval adds the run's settings)
    samples: list[dict] = field(default_factory=list)  # one row per (prompt, sample index)


def _score(scorer: Scorer | None, name: str, prompts: list[str], responses: list[str]) -> list[float] | None:
    if scorer is None:
        return None
    return check_scores(scorer(prompts, responses), prompts, responses, name).tolist()


def _device(model) -> torch.device:
    return next(model.parameters()).device


def evaluate(policy, reference, tokenizer, prompts: Sequence[Prompt | str], rollout: RolloutConfig,
             samples_per_prompt: int = 1, reward: Scorer | None = None, gold: Scorer | None = None,
             judge: Judge | None = None, chat_template: str = "auto", seed: int = 0,
             source: str = "prompts",
             backends: dict[str, Callable[[], GenerationBackend]] | None = None,
             names: tuple[str, str] = ("the policy", "the reference"),
             stop_check: Callable[[str], None] | None = None) -> EvalResult:
    """Evaluate `policy` against `reference` (causal LMs sharing `tokenizer`) on `prompts`.

    Pass the same object as policy and reference to measure a model against itself (KL is then exactly 0).
    The caller's torch random state is left as it was. backends: {"policy": make, "reference": make}, each making
    the generation backend that samples that side (default: the hf backend on the module itself); one lives at
    a time. names: the two models as messages name them. stop_check(done): called between the phases (sampling each
    side, log-probs, scores) with what is done so far; it raises to stop (a signal).
    """
    stop_check = stop_check or (lambda done: None)
    if samples_per_prompt < 1:
        raise ValueError(f"samples_per_prompt={samples_per_prompt}: must be >= 1")
    if not rollout.temperature > 0:
        raise ValueError(f"rollout.temperature={rollout.temperature}: must be > 0 (KL is measured on the sampling "
                         "distribution; greedy decoding has none)")
    if not prompts:
        raise DataError(f"{source}: no prompts to evaluate on")
    prompts = [p if isinstance(p, Prompt) else Prompt(text=p, chat=None) for p in prompts]
    k = samples_per_prompt
    timings = {}
    device = _device(policy)
    pad_id = tokenizer.pad_token_id
    eos_ids = eos_token_ids(tokenizer, policy) | eos_token_ids(tokenizer, reference)

    prompts, prompt_ids = prepare_prompts(prompts, tokenizer, rollout.max_prompt_tokens, chat_template, source,
                                          rollout.long_prompts)
    longest = max(map(len, prompt_ids), default=0)
    for model, name in zip((policy, reference), names):  # a response length the models cannot hold is refused
        check_new_tokens(rollout.max_new_tokens, longest, model.config, name)
    query_ids, query_mask = left_pad([ids for ids in prompt_ids for _ in range(k)], pad_id)
    query_ids, query_mask = query_ids.to(device), query_mask.to(device)
    texts = [p.text for p in prompts for _ in range(k)]
    chunk = max(1, rollout.prompts_per_step) * k

    # 1. sample both models, each from its own seeded stream, without touching the caller's random state
    t0 = time.perf_counter()
    sides = {}
    forked = [device] if device.type == "cuda" else []
    for i, (name, model) in enumerate((("policy", policy), ("reference", reference))):
        stop_check("nothing sampled yet" if i == 0 else "the policy sampled")
        with torch.random.fork_rng(devices=forked):
            torch.manual_seed(seed * 1000003 + i)
            make = (backends or {}).get(name) or (lambda: HFBackend(model, pad_id, eos_ids, chunk))
            backend = make()
            response_ids = backend.generate(query_ids, query_mask, rollout).response_ids.to(device)
            del backend
        mask, truncated = response_mask_from_ids(response_ids, eos_ids)
        lengths = mask.sum(1).long().tolist()
        responses = tokenizer.batch_decode([ids[:n] for ids, n in zip(response_ids, lengths)], skip_special_tokens=True)
        sides[name] = Side(response_ids, mask, truncated, responses)
    timings["generate_s"] = time.perf_counter() - t0

    # 2. log-probs of the policy's samples under both models, at the sampling temperature
    stop_check("both models sampled")
    t0 = time.perf_counter()
    pol = sides["policy"]
    logprobs = token_logprobs(policy, query_ids, query_mask, pol.response_ids, pol.mask, rollout.temperature,
                              rollout.forward_chunk)
    ref_logprobs = logprobs if reference is policy else token_logprobs(
        reference, query_ids, query_mask, pol.response_ids, pol.mask, rollout.temperature, rollout.forward_chunk)
    kl = sequence_kls(logprobs, ref_logprobs, pol.mask)
    timings["logprobs_s"] = time.perf_counter() - t0

    # 3. scores and the judge
    stop_check("sampled, log-probs computed")
    t0 = time.perf_counter()
    for side in sides.values():
        side.rewards = _score(reward, "reward", texts, side.responses)
        side.gold = _score(gold, "gold scorer", texts, side.responses)
    outcomes = None
    if judge is not None:
        outcomes = [float(o) for o in judge(texts, pol.responses, sides["reference"].responses)]
        if len(outcomes) != len(texts):
            raise ValueError(f"judge {getattr(judge, 'name', judge)}: returned {len(outcomes)} outcomes for "
                             f"{len(texts)} pairs; it must return one per pair")
    timings["score_s"] = time.perf_counter() - t0

    # 4. aggregate
    policy_metrics = pol.metrics(k)
    for e in ("k1", "k3"):
        policy_metrics[f"kl/{e}_seq"], policy_metrics[f"kl/{e}_seq_stderr"] = mean_stderr(kl[e].tolist(), k)
    report = {
        "policy": policy_metrics,
        "reference": sides["reference"].metrics(k),
        "win_rate": None if outcomes is None else {"judge": getattr(judge, "name", repr(judge)),
                                                   **win_rate_summary(outcomes, k)},
        "kl": {"unit": "nats", "level": "sequence (sum over response tokens, EOS included)",
               "samples": "the policy's", "temperature": rollout.temperature,
               "note": ("top_k/top_p are on: samples come from the truncated distribution while the log-probs are "
                        "the untruncated tempered ones, so the KL estimates are approximate")
               if rollout.top_k or rollout.top_p < 1.0 else None},
        "n_prompts": len(prompts),
        "samples_per_prompt": k,
        "time_s": timings,
    }
    ref = sides["reference"]
    if pol.rewards is not None and pol.gold is not None:
        report["reward_gold_agreement"] = reward_gold_agreement(pol.rewards, ref.rewards, pol.gold, ref.gold, k)
    samples = []
    for row in range(len(texts)):
        samples.append({
            "prompt_index": row // k, "sample": row % k, "prompt": texts[row],
            "policy_response": pol.responses[row], "reference_response": ref.responses[row],
            "policy_length": int(pol.mask[row].sum()), "reference_length": int(ref.mask[row].sum()),
            "policy_truncated": bool(pol.truncated[row]), "reference_truncated": bool(ref.truncated[row]),
            "policy_reward": None if pol.rewards is None else pol.rewards[row],
            "reference_reward": None if ref.rewards is None else ref.rewards[row],
            "policy_gold": None if pol.gold is None else pol.gold[row],
            "reference_gold": None if ref.gold is None else ref.gold[row],
            "kl_k1": float(kl["k1"][row]), "kl_k3": float(kl["k3"][row]),
            "judge": None if outcomes is None else outcomes[row],
        })
    return EvalResult(report=report, samples=samples)


# ---- the command ----

def _check_same_vocabulary(policy_tok, reference_tok, cfg: EvalConfig) -> None:
    if policy_tok.get_vocab() != reference_tok.get_vocab():
        raise ValueError(f"model {cfg.model!r} and reference {cfg.reference!r} have different tokenizers; KL and "
                         "paired sampling need the same vocabulary: pass the reference the policy was trained from")


def _public_config(cfg: EvalConfig) -> dict:
    """The config for the report, the judge's URL as public_url shows it (its query or user:password@ may be a key)."""
    config = dataclasses.asdict(cfg)
    if config["judge"].get("llm_url"):
        config["judge"]["llm_url"] = public_url(config["judge"]["llm_url"])
    return config


def run_eval(cfg: EvalConfig) -> Path:
    """`rlcf eval`: writes cfg.output (JSON report) and a sibling .samples.jsonl; prints a table; returns the report path.

    One evaluation per --output at a time (a lock beside it). SIGTERM or Ctrl-C stops it between its phases
    (exit 143 / 130; a second signal, or a phase that does not end within RLCF_STOP_GRACE_S of SIGTERM, at once);
    nothing is written then: an evaluation is not resumed, it is run again. Both files are written atomically."""
    t_start = time.perf_counter()
    if cfg.max_prompts is not None and cfg.max_prompts < 1:
        raise ValueError(f"max_prompts={cfg.max_prompts}: must be >= 1, or None for all prompts")
    # prompts, scorers and the judge are checked before any model is loaded, so bad input fails fast
    prompts = load_prompts(cfg.prompts, cfg.prompt_column, cfg.split)
    if cfg.max_prompts is not None:
        prompts = prompts[: cfg.max_prompts]
    device = "cuda" if torch.cuda.is_available() else "cpu"
    reward, reward_name = None, None
    if cfg.reward_model or cfg.reward_function:
        reward = RewardSource(cfg.reward_function, cfg.reward_model, device=device,
                              trust_remote_code=cfg.trust_remote_code)
        reward_name = reward.name
    gold = load_callable(cfg.gold, "gold scorer") if cfg.gold else None
    judge_note = None
    if cfg.judge.kind == "gold" and gold is None:
        judge, judge_note = None, "no win-rate: judge.kind=gold but no --gold scorer was given"
    else:
        judge = make_judge(cfg.judge, reward, reward_name or "reward", gold, cfg.gold or "gold")

    stop_grace_s()  # a bad RLCF_STOP_GRACE_S is refused before anything is written
    out = Path(cfg.output)
    lock = RunLock(out, "--output").acquire() if main_process() else None  # one evaluation per output at a time
    rerun = "nothing was written: run the same command again to evaluate"
    try:
        with StopSignals("phase", "stopping", "rlcf eval", lambda: rerun) as signals:
            def stop_check(done: str) -> None:
                got = signals.requested()
                if got:
                    signals.boundary()
                    raise RunStopped(f"stopped by {signal.Signals(got).name} ({done}); {rerun}", got)

            return _run_eval(cfg, prompts, t_start, device, reward, reward_name, gold, judge, judge_note, out,
                             stop_check)
    finally:
        if lock is not None:
            lock.release()


def _run_eval(cfg: EvalConfig, prompts: list, t_start: float, device: str, reward, reward_name, gold, judge,
              judge_note, out: Path, stop_check: Callable[[str], None]) -> Path:
    tokenizer = load_tokenizer(cfg.model, cfg.trust_remote_code)
    policy = load_causal_lm(cfg.model, cfg.dtype, cfg.trust_remote_code).to(device)
    if cfg.reference == cfg.model:
        reference = policy
    else:
        _check_same_vocabulary(tokenizer, load_tokenizer(cfg.reference, cfg.trust_remote_code), cfg)
        reference = load_causal_lm(cfg.reference, cfg.dtype, cfg.trust_remote_code).to(device)

    backends = None
    if cfg.rollout.backend != "hf":
        eos = eos_token_ids(tokenizer, policy) | eos_token_ids(tokenizer, reference)
        backends = {name: partial(make_backend, cfg.rollout, None, tokenizer, eos, resolve_model_path(path), cfg.dtype,
                                  cfg.seed * 1000003 + i, cfg.trust_remote_code)
                    for i, (name, path) in enumerate((("policy", cfg.model), ("reference", cfg.reference)))}
    result = evaluate(policy, reference, tokenizer, prompts, cfg.rollout, cfg.samples_per_prompt, reward, gold, judge,
                      cfg.chat_template, cfg.seed, cfg.prompts, backends, (cfg.model, cfg.reference), stop_check)
    stop_check("evaluated, nothing written yet")
    samples_path = out.with_suffix(".samples.jsonl")
    report = {
        "models": {"policy": cfg.model, "reference": cfg.reference},
        "prompts": {"source": cfg.prompts, "split": cfg.split, "column": cfg.prompt_column},
        "scorers": {"reward": reward_name, "gold": cfg.gold},
        **result.report,
        "win_rate_note": judge_note,
        "sampling": {"temperature": cfg.rollout.temperature, "top_k": cfg.rollout.top_k, "top_p": cfg.rollout.top_p,
                     "max_new_tokens": cfg.rollout.max_new_tokens, "seed": cfg.seed},
        "samples_file": str(samples_path),
        "config": _public_config(cfg),
    }
    report["time_s"]["total_s"] = time.perf_counter() - t_start
    # the samples first, the report last: a report on disk always has its samples beside it
    atomic_write(samples_path, "".join(json.dumps(row) + "\n" for row in result.samples),
                 note="an earlier report there is intact; run the evaluation again")
    atomic_write(out, json.dumps(report, indent=2) + "\n",
                 note=f"the samples are written ({samples_path}); run the evaluation again for the report")
    print(format_table(report))
    return out


def _num(x) -> str:
    return "-" if x is None else f"{x:.4g}"


def format_table(report: dict) -> str:
    """A readable summary of a report (from run_eval, or evaluate's report with fewer headers)."""
    pol, ref = report["policy"], report["reference"]
    models = report.get("models", {"policy": "policy", "reference": "reference"})
    lines = [f"rlcf eval: {models['policy']} vs reference {models['reference']}: "
             f"{report['n_prompts']} prompts x {report['samples_per_prompt']} samples", ""]
    lines.append(f"{'metric':<26}{'policy':>22}{'reference':>22}")
    for key in ("reward/mean", "gold/mean"):
        if key in pol:
            err = key.replace("/mean", "/stderr")
            cells = [f"{_num(side[key])} ± {_num(side[err])}" for side in (pol, ref)]
            lines.append(f"{key:<26}{cells[0]:>22}{cells[1]:>22}")
    for key in ("response/length_mean", "response/truncated_frac"):
        lines.append(f"{key:<26}{_num(pol[key]):>22}{_num(ref[key]):>22}")
    for e in ("k1", "k3"):
        cell = f"{_num(pol[f'kl/{e}_seq'])} ± {_num(pol[f'kl/{e}_seq_stderr'])}"
        lines.append(f"{f'kl/{e}_seq (nats)':<26}{cell:>22}{'0':>22}")
    wr = report.get("win_rate")
    if wr:
        lo, hi = wr["ci95"]
        lines.append(f"{'win_rate vs reference':<26}{wr['win_rate']:>22.3f}   95% [{lo:.3f}, {hi:.3f}]")
        lines.append(f"{'':<26}  {wr['wins']} wins, {wr['ties']} ties, {wr['losses']} losses of {wr['n']}; "
                     f"judge {wr['judge']}")
    elif report.get("win_rate_note"):
        lines.append(f"({report['win_rate_note']})")
    agree = report.get("reward_gold_agreement")
    if agree:
        lo, hi = agree["ci95"]
        lines.append(f"{'reward agrees with gold':<26}{agree['agreement']:>22.3f}   95% [{lo:.3f}, {hi:.3f}]   "
                     f"({agree['n']} pairs whose gold differs)")
    if report.get("kl", {}).get("note"):
        lines.append(f"(KL: {report['kl']['note']})")
    lines.append("(± = standard error over prompts)")
    return "\n".join(lines)
