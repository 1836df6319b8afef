"""`rlcf label`: comparative feedback from a judge.

For each prompt, K = rollout.group_size responses are sampled from a policy and a judge compares them. The
judge is a scorer (a Python `module:function` or an HF reward model): of two responses the higher score wins,
or, with noise_temperature T > 0, y1 wins with probability sigmoid((s1 - s2) / T) (Bradley-Terry noise, to
imitate human labellers who disagree on close calls). With K > 2, `pairs: all` keeps every one of the
K(K-1)/2 judged pairs (InstructGPT's K-wise ranking: more comparisons for the same samples), `best_worst` only
the highest- against the lowest-scored response. The pairs are written as JSONL in TRL's column names
(prompt, chosen, rejected) that `rlcf rm` and `rlcf dpo` read; `rlcf rm` keeps a prompt's pairs together.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch

from .config import LabelConfig, to_dict
from .data.loading import load_prompts, prepare_prompts
from .data.tokens import left_pad
from .generation import make_backend
from .models.hub import load_tokenizer, resolve_model_path
from .models.load import load_causal_lm
from .rewards.sources import RewardSource
from .train.rollout import decode_responses, eos_token_ids, response_mask_from_ids


def bradley_terry_choice(s1: torch.Tensor, s2: torch.Tensor, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """[B] 1.0 where y1 is preferred, 0.0 where y2 is, 0.5 for a tie (only possible with temperature 0).
    temperature 0: the higher score; T > 0: y1 with probability sigmoid((s1 - s2) / T)."""
    if temperature < 0:
        raise ValueError(f"noise_temperature={temperature}: must be >= 0")
    if temperature == 0:
        return (s1 > s2).float() + 0.5 * (s1 == s2).float()
    p1 = torch.sigmoid((s1 - s2) / temperature)
    return (torch.rand(p1.shape, generator=generator) < p1).float()


def judged_pairs(scores: torch.Tensor, keep: torch.Tensor, mode: str) -> tuple[torch.Tensor, torch.Tensor]:
    """The (i, j) sample indices, i < j, that one prompt's K samples are compared on: every pair of kept samples
    (mode 'all'), or the highest- against the lowest-scored kept sample ('best_worst'). scores [K], keep [K] bool."""
    idx = keep.nonzero().flatten()
    if len(idx) < 2:
        return idx[:0], idx[:0]
    if mode == "all":
        a, b = torch.triu_indices(len(idx), len(idx), offset=1)
        return idx[a], idx[b]
    if mode == "best_worst":
        s = scores[idx]
        best, worst = int(idx[s.argmax()]), int(idx[s.argmin()])
        if best == worst:  # all scores equal: the first two, a tie for the judge
            best, worst = int(idx[0]), int(idx[1])
        return torch.tensor([min(best, worst)]), torch.tensor([max(best, worst)])
    raise ValueError(f"pairs={mode!r}: choose 'all' or 'best_worst'")


@torch.no_grad()
def run_label(cfg: LabelConfig) -> Path:
    # 1. prompts and judge first, so bad input fails before any model is loaded
    prompts = load_prompts(cfg.prompts, cfg.prompt_column)
    if cfg.max_prompts is not None:
        prompts = prompts[: cfg.max_prompts]
    device = "cuda" if torch.cuda.is_available() else "cpu"  # as `rlcf eval`: one process, the GPU when there is one
    judge = RewardSource(cfg.judge, cfg.judge_model, device=device, trust_remote_code=cfg.model.trust_remote_code)
    torch.manual_seed(cfg.seed)
    noise = torch.Generator().manual_seed(cfg.seed + 1)
    tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.trust_remote_code)
    policy = load_causal_lm(cfg.model.name_or_path, cfg.model.dtype, cfg.model.trust_remote_code).to(device)
    policy.eval()
    eos = eos_token_ids(tokenizer, policy)
    backend = make_backend(cfg.rollout, policy, tokenizer, eos, resolve_model_path(cfg.model.name_or_path),
                           cfg.model.dtype, cfg.seed, cfg.model.trust_remote_code)
    prompts, prompt_ids = prepare_prompts(prompts, tokenizer, cfg.rollout.max_prompt_tokens, cfg.chat_template,
                                          cfg.prompts, cfg.rollout.long_prompts)

    rows, n_ties, n_empty, t0 = [], 0, 0, time.perf_counter()
    k = cfg.rollout.group_size
    if k < 2:
        raise ValueError(f"rollout.group_size={k}: the judge compares samples of one prompt, so it needs at least 2")
    per_call = max(1, cfg.rollout.prompts_per_step)
    for start in range(0, len(prompts), per_call):
        # 2. K samples per prompt, on consecutive rows
        idx = list(range(start, min(start + per_call, len(prompts))))
        ids, mask = left_pad([prompt_ids[i] for i in idx for _ in range(k)], tokenizer.pad_token_id)
        response_ids = backend.generate(ids.to(device), mask.to(device), cfg.rollout).response_ids.cpu()
        response_mask, truncated = response_mask_from_ids(response_ids, eos)
        texts = decode_responses(tokenizer, response_ids, response_mask)
        # 3. the judge's scores and its choice on each compared pair
        prompt_texts = [prompts[i].text for i in idx for _ in range(k)]
        scores = judge(prompt_texts, texts).view(-1, k)
        for g, i in enumerate(idx):
            # an empty response (EOS first) makes a row the rm and dpo stages reject: its pairs are left out, counted
            keep = torch.tensor([bool(texts[g * k + m].strip()) for m in range(k)])
            a, b = judged_pairs(scores[g], keep, cfg.pairs)
            n_empty += (k * (k - 1) // 2 if cfg.pairs == "all" else 1) - len(a)
            choice = bradley_terry_choice(scores[g, a], scores[g, b], cfg.noise_temperature, noise)
            for x, y, c in zip(a.tolist(), b.tolist(), choice.tolist()):
                if c == 0.5 and cfg.drop_ties:
                    n_ties += 1
                    continue
                w, l = (x, y) if c >= 0.5 else (y, x)
                rows.append({
                    "prompt": prompts[i].text, "chosen": texts[g * k + w], "rejected": texts[g * k + l],
                    "chosen_score": float(scores[g, w]), "rejected_score": float(scores[g, l]),
                    "chosen_truncated": bool(truncated[g * k + w]), "rejected_truncated": bool(truncated[g * k + l]),
                })
        print(f"rlcf label: {min(start + per_call, len(prompts))}/{len(prompts)} prompts, {len(rows)} pairs",
              flush=True)

    # 4. write atomically: a killed run never leaves a half file that a later stage would trust
    out = Path(cfg.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(tmp, out)
    agree = [r["chosen_score"] >= r["rejected_score"] for r in rows]
    summary = {
        "pairs": len(rows), "prompts": len(prompts), "samples_per_prompt": k, "pair_mode": cfg.pairs,
        "ties_dropped": n_ties, "empty_dropped": n_empty,
        "judge": cfg.judge_model or cfg.judge, "noise_temperature": cfg.noise_temperature,
        "agreement_with_scores": sum(agree) / len(agree) if agree else math.nan,
        "mean_score_gap": sum(r["chosen_score"] - r["rejected_score"] for r in rows) / len(rows) if rows else math.nan,
        "seconds": time.perf_counter() - t0, "config": to_dict(cfg),
    }
    out.with_suffix(".summary.json").write_text(json.dumps(summary, indent=1))
    if not rows:
        raise ValueError(f"rlcf label: no pairs written to {out} ({n_ties} ties, {n_empty} pairs with an empty response); "
                         "use --noise-temperature > 0 or --no-drop-ties, or a judge that separates responses")
    return out
