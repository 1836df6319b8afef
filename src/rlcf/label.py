"""`rlcf label`: comparative feedback from a judge.

For each prompt, two responses are sampled from a policy and a judge picks the better one. The judge is a
scorer (a Python `module:function` or an HF reward model): the higher score wins, or, with
noise_temperature T > 0, y1 wins with probability sigmoid((s1 - s2) / T) (Bradley-Terry noise, to imitate
human labellers who disagree on close calls). The pairs are written as JSONL in TRL's column names
(prompt, chosen, rejected) that `rlcf rm` and `rlcf dpo` read.
"""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import torch

from .config import LabelConfig, to_dict
from .data import left_pad, load_prompts, prepare_prompts
from .generation import make_backend
from .models import load_causal_lm, load_tokenizer, resolve_model_path
from .rewards import RewardSource
from .rollout import decode_responses, eos_token_ids, response_mask_from_ids


def bradley_terry_choice(s1: torch.Tensor, s2: torch.Tensor, temperature: float, generator: torch.Generator) -> torch.Tensor:
    """[B] 1.0 where y1 is preferred, 0.0 where y2 is, 0.5 for a tie (only possible with temperature 0).
    temperature 0: the higher score; T > 0: y1 with probability sigmoid((s1 - s2) / T)."""
    if temperature < 0:
        raise ValueError(f"noise_temperature={temperature}: must be >= 0")
    if temperature == 0:
        return (s1 > s2).float() + 0.5 * (s1 == s2).float()
    p1 = torch.sigmoid((s1 - s2) / temperature)
    return (torch.rand(p1.shape, generator=generator) < p1).float()


@torch.no_grad()
def run_label(cfg: LabelConfig) -> Path:
    # 1. prompts and judge first, so bad input fails before any model is loaded
    prompts = load_prompts(cfg.prompts, cfg.prompt_column)
    if cfg.max_prompts is not None:
        prompts = prompts[: cfg.max_prompts]
    judge = RewardSource(cfg.judge, cfg.judge_model, trust_remote_code=cfg.model.trust_remote_code)
    torch.manual_seed(cfg.seed)
    noise = torch.Generator().manual_seed(cfg.seed + 1)
    tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.trust_remote_code)
    policy = load_causal_lm(cfg.model.name_or_path, cfg.model.dtype, cfg.model.trust_remote_code)
    policy.eval()
    eos = eos_token_ids(tokenizer, policy)
    backend = make_backend(cfg.rollout, policy, tokenizer, eos, resolve_model_path(cfg.model.name_or_path),
                           cfg.model.dtype, cfg.seed, cfg.model.trust_remote_code)
    prompts, prompt_ids = prepare_prompts(prompts, tokenizer, cfg.rollout.max_prompt_tokens, cfg.chat_template,
                                          cfg.prompts, cfg.rollout.long_prompts)

    rows, n_ties, n_empty, t0 = [], 0, 0, time.perf_counter()
    per_call = max(1, cfg.rollout.prompts_per_step)
    for start in range(0, len(prompts), per_call):
        # 2. two samples per prompt, on consecutive rows
        idx = list(range(start, min(start + per_call, len(prompts))))
        ids, mask = left_pad([prompt_ids[i] for i in idx for _ in range(2)], tokenizer.pad_token_id)
        response_ids = backend.generate(ids, mask, cfg.rollout).response_ids
        response_mask, truncated = response_mask_from_ids(response_ids, eos)
        texts = decode_responses(tokenizer, response_ids, response_mask)
        # 3. the judge's scores and its choice
        prompt_texts = [prompts[i].text for i in idx for _ in range(2)]
        scores = judge(prompt_texts, texts).view(-1, 2)
        choice = bradley_terry_choice(scores[:, 0], scores[:, 1], cfg.noise_temperature, noise)
        for j, i in enumerate(idx):
            if choice[j] == 0.5 and cfg.drop_ties:
                n_ties += 1
                continue
            if not texts[2 * j].strip() or not texts[2 * j + 1].strip():
                # an empty response (EOS first) makes a row the rm and dpo stages reject: leave the pair out, counted
                n_empty += 1
                continue
            w = 0 if choice[j] >= 0.5 else 1
            rows.append({
                "prompt": prompts[i].text, "chosen": texts[2 * j + w], "rejected": texts[2 * j + 1 - w],
                "chosen_score": float(scores[j, w]), "rejected_score": float(scores[j, 1 - w]),
                "chosen_truncated": bool(truncated[2 * j + w]), "rejected_truncated": bool(truncated[2 * j + 1 - w]),
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
        "pairs": len(rows), "prompts": len(prompts), "ties_dropped": n_ties, "empty_dropped": n_empty,
        "judge": cfg.judge_model or cfg.judge, "noise_temperature": cfg.noise_temperature,
        "agreement_with_scores": sum(agree) / len(agree) if agree else math.nan,
        "mean_score_gap": sum(r["chosen_score"] - r["rejected_score"] for r in rows) / len(rows) if rows else math.nan,
        "seconds": time.perf_counter() - t0, "config": to_dict(cfg),
    }
    out.with_suffix(".summary.json").write_text(json.dumps(summary, indent=1))
    if not rows:
        raise ValueError(f"rlcf label: no pairs written to {out} ({n_ties} ties, {n_empty} with an empty response); "
                         "use --noise-temperature > 0 or --no-drop-ties, or a judge that separates responses")
    return out
