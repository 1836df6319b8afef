"""`rlcf label`: comparative feedback from a judge.

For each prompt, K = rollout.group_size responses are sampled from a policy and a judge compares them. The
judge is a scorer (a Python `module:function` or an HF reward model): of two responses the higher score wins,
or, with noise_temperature T > 0, y1 wins with probability sigmoid((s1 - s2) / T) (Bradley-Terry noise, to
imitate human labellers who disagree on close calls). With K > 2, `pairs: all` keeps every one of the
K(K-1)/2 judged pairs (InstructGPT's K-wise ranking: more comparisons for the same samples), `best_worst` only
the highest- against the lowest-scored response. The pairs are written as JSONL in TRL's column names
(prompt, chosen, rejected) that `rlcf rm` and `rlcf dpo` read; `rlcf rm` keeps a prompt's pairs together.

Labelling resumes: the pairs are kept batch by batch in OUTPUT.partial (with a fingerprint of the settings), so a
run stopped by a signal, killed or out of disk space, run again with the same settings, judges only the prompts not
yet judged. --output is refused (validate.check_rules) when it is the prompt file, or an existing file that is not an
earlier `rlcf label` output (see validate.py for the rule).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import signal
import time
from pathlib import Path

import torch

from .config import LabelConfig, to_dict
from .data.loading import check_text, load_prompts, prepare_prompts
from .data.tokens import left_pad
from .errors import DataError
from .files import RunLock, append_text, atomic_write, main_process, writing
from .generation import make_backend
from .models.hub import load_tokenizer, resolve_model_path
from .models.load import load_causal_lm
from .rewards.sources import RewardSource
from .train.rollout import decode_responses, eos_token_ids, response_mask_from_ids
from .train.safety import RunStopped, StopSignals, check_new_tokens, stop_grace_s


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


PARTIAL = ".partial"
"""Suffix of the file beside --output that keeps the pairs judged so far, batch by batch, while labelling runs."""


def partial_path(out) -> Path:
    """Where `rlcf label --output OUT` keeps the pairs judged so far: OUT.partial, removed once OUT is written."""
    out = Path(out)
    return out.with_name(out.name + PARTIAL)


def _folder_stamp(name: str | None) -> list:
    """Names, sizes and times of a local model folder's files (a model retrained in place changes the pairs); [] for
    a hub id or None."""
    path = Path(os.path.expanduser(name)) if name else None
    if path is None or not path.is_dir():
        return []
    return [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(path.iterdir()) if p.is_file()]


def label_fingerprint(cfg: LabelConfig, prompts: list, prompt_ids: list[list[int]]) -> str:
    """What the pairs depend on: every setting but where they go and how much is computed at once, the prompts as
    tokenized, and the policy's and the judge model's files. A judge function's code is not in it."""
    config = to_dict(cfg)
    config.pop("output")
    for neutral in ("generation_chunk", "forward_chunk", "vllm_gpu_memory_utilization"):
        config["rollout"].pop(neutral, None)
    blob = json.dumps({"config": config, "prompts": [p.text for p in prompts], "ids": prompt_ids,
                       "policy": _folder_stamp(cfg.model.name_or_path), "judge": _folder_stamp(cfg.judge_model)},
                      sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def read_partial(path: Path, fingerprint: str) -> dict[int, dict] | None:
    """The batches a killed run finished ({first prompt index: record}); {} when there is no partial file, None when
    it was made with other settings. A torn last line (killed mid-write) is cut off the file."""
    if not path.exists():
        return {}
    raw = path.read_bytes()
    done, good = {}, 0
    for i, line in enumerate(raw.split(b"\n")[:-1]):  # complete lines only: the rest was cut short
        try:
            rec = json.loads(line)
        except ValueError:
            break
        if i == 0:
            if not (isinstance(rec, dict) and rec.get("rlcf_label_partial") == 1):
                return None
            if rec.get("fingerprint") != fingerprint:
                return None
        elif isinstance(rec, dict) and isinstance(rec.get("start"), int) and isinstance(rec.get("rows"), list):
            done[rec["start"]] = rec
        else:
            break
        good += len(line) + 1
    if good == 0:
        return None
    if good < len(raw):
        with writing(path), open(path, "r+b") as f:
            f.truncate(good)
    return done


@torch.no_grad()
def run_label(cfg: LabelConfig) -> Path:
    """Label cfg.prompts; returns the pairs file. One process at a time writes an --output (a lock beside it). The
    pairs are kept batch by batch in OUTPUT.partial: a run stopped by SIGTERM or Ctrl-C (exit 143 / 130), killed, or
    out of disk space resumes from the prompts judged so far when run again with the same settings, and writes the
    same pairs an uninterrupted run would (per-batch seeds; with the hf backend). OUTPUT is written atomically at the
    end, and the partial file removed."""
    # 1. prompts and judge first, so bad input fails before any model is loaded
    prompts = load_prompts(cfg.prompts, cfg.prompt_column)
    if cfg.max_prompts is not None:
        prompts = prompts[: cfg.max_prompts]
    device = "cuda" if torch.cuda.is_available() else "cpu"  # as `rlcf eval`: one process, the GPU when there is one
    judge = RewardSource(cfg.judge, cfg.judge_model, device=device, trust_remote_code=cfg.model.trust_remote_code)
    k = cfg.rollout.group_size
    if k < 2:
        raise ValueError(f"rollout.group_size={k}: the judge compares samples of one prompt, so it needs at least 2")
    stop_grace_s()  # a bad RLCF_STOP_GRACE_S is refused before anything is written
    out = Path(cfg.output)
    lock = RunLock(out, "--output").acquire() if main_process() else None  # one labelling run per output at a time
    try:
        return _label(cfg, prompts, judge, device, out)
    finally:
        if lock is not None:
            lock.release()


def _label(cfg: LabelConfig, prompts: list, judge, device: str, out: Path) -> Path:
    torch.manual_seed(cfg.seed)
    tokenizer = load_tokenizer(cfg.model.name_or_path, cfg.model.trust_remote_code)
    policy = load_causal_lm(cfg.model.name_or_path, cfg.model.dtype, cfg.model.trust_remote_code).to(device)
    policy.eval()
    eos = eos_token_ids(tokenizer, policy)
    backend = make_backend(cfg.rollout, policy, tokenizer, eos, resolve_model_path(cfg.model.name_or_path),
                           cfg.model.dtype, cfg.seed, cfg.model.trust_remote_code)
    prompts, prompt_ids = prepare_prompts(prompts, tokenizer, cfg.rollout.max_prompt_tokens, cfg.chat_template,
                                          cfg.prompts, cfg.rollout.long_prompts)
    check_new_tokens(cfg.rollout.max_new_tokens, max(map(len, prompt_ids), default=0), policy.config,
                     cfg.model.name_or_path)

    # 2. the batches a stopped run already judged, if it had these settings
    partial = partial_path(out)
    fingerprint = label_fingerprint(cfg, prompts, prompt_ids)
    done = read_partial(partial, fingerprint)
    if done is None:
        print(f"rlcf label: {partial} was made with other settings or prompts; starting over", flush=True)
        done = {}
    if not done:
        atomic_write(partial, json.dumps({"rlcf_label_partial": 1, "fingerprint": fingerprint}) + "\n")
    k, per_call = cfg.rollout.group_size, max(1, cfg.rollout.prompts_per_step)
    starts = range(0, len(prompts), per_call)
    done = {s: rec for s, rec in done.items() if s in starts}
    if done:
        n_done = sum(min(per_call, len(prompts) - s) for s in done)
        print(f"rlcf label: resuming from {partial}: {n_done} of {len(prompts)} prompts already judged", flush=True)

    kept = (f"the pairs of the prompts judged so far are kept in {partial}, and the same command resumes from them")
    rows, n_ties, n_empty, t0 = [], 0, 0, time.perf_counter()
    with StopSignals("batch", "stopping with the prompts judged so far kept", "rlcf label", lambda: kept) as signals:
        for start in starts:
            if start in done:
                rec = done[start]
                rows += rec["rows"]
                n_ties, n_empty = n_ties + rec["ties"], n_empty + rec["empty"]
                continue
            got = signals.requested()
            if got:
                signals.boundary()
                raise RunStopped(f"stopped by {signal.Signals(got).name} after {start} of {len(prompts)} prompts; "
                                 f"{kept} (rlcf label with the same --output and settings)", got)
            # each batch's sampling and judge noise depend only on (seed, batch): a resumed run draws the same
            torch.manual_seed(cfg.seed * 1_000_003 + start)
            noise = torch.Generator().manual_seed((cfg.seed + 1) * 1_000_033 + start)
            batch_rows, ties, empty = _label_batch(cfg, prompts, prompt_ids, list(range(start, min(start + per_call,
                                                   len(prompts)))), backend, tokenizer, eos, judge, noise, device)
            append_text(partial, json.dumps({"start": start, "rows": batch_rows, "ties": ties, "empty": empty}) + "\n",
                        note=kept, sync=True)
            rows, n_ties, n_empty = rows + batch_rows, n_ties + ties, n_empty + empty
            print(f"rlcf label: {min(start + per_call, len(prompts))}/{len(prompts)} prompts, {len(rows)} pairs",
                  flush=True)

    # 4. write atomically: a killed run never leaves a half file that a later stage would trust
    atomic_write(out, "".join(json.dumps(r) + "\n" for r in rows), note=kept)
    agree = [r["chosen_score"] >= r["rejected_score"] for r in rows]
    summary = {
        "pairs": len(rows), "prompts": len(prompts), "samples_per_prompt": k, "pair_mode": cfg.pairs,
        "ties_dropped": n_ties, "empty_dropped": n_empty,
        "judge": cfg.judge_model or cfg.judge, "noise_temperature": cfg.noise_temperature,
        "agreement_with_scores": sum(agree) / len(agree) if agree else math.nan,
        "mean_score_gap": sum(r["chosen_score"] - r["rejected_score"] for r in rows) / len(rows) if rows else math.nan,
        "seconds": time.perf_counter() - t0, "config": to_dict(cfg),
    }
    atomic_write(summary_path(out), json.dumps(summary, indent=1), note=kept)
    partial.unlink(missing_ok=True)
    if not rows:
        raise ValueError(f"rlcf label: no pairs written to {out} ({n_ties} ties, {n_empty} pairs with an empty or "
                         "unreadable response); "
                         "use --noise-temperature > 0 or --no-drop-ties, or a judge that separates responses")
    return out


def summary_path(out) -> Path:
    """The summary `rlcf label` writes beside its pairs: OUT with the suffix .summary.json."""
    return Path(out).with_suffix(".summary.json")


def _usable(text: str) -> bool:
    """Whether a response can be a side of a pair that `rlcf rm` / `rlcf dpo` read (data.loading.check_text)."""
    try:
        check_text(text, "response")
    except DataError:
        return False
    return bool(text.strip())


def _label_batch(cfg: LabelConfig, prompts: list, prompt_ids: list, idx: list[int], backend, tokenizer, eos, judge,
                 noise: torch.Generator, device: str) -> tuple[list[dict], int, int]:
    """One batch of prompts: K samples each, the judge's scores and choices. Returns (rows, ties dropped, pairs left
    out for an empty or unreadable response)."""
    k, rows, n_ties, n_empty = cfg.rollout.group_size, [], 0, 0
    # 2. K samples per prompt, on consecutive rows
    ids, mask = left_pad([prompt_ids[i] for i in idx for _ in range(k)], tokenizer.pad_token_id)
    response_ids = backend.generate(ids.to(device), mask.to(device), cfg.rollout).response_ids.cpu()
    response_mask, truncated = response_mask_from_ids(response_ids, eos)
    texts = decode_responses(tokenizer, response_ids, response_mask)
    # 3. the judge's scores and its choice on each compared pair
    prompt_texts = [prompts[i].text for i in idx for _ in range(k)]
    scores = judge(prompt_texts, texts).view(-1, k)
    for g, i in enumerate(idx):
        # an empty response (EOS first), or one holding a NUL or a lone surrogate (a small model's stray byte), makes
        # a row the rm and dpo stages reject: its pairs are left out, counted
        keep = torch.tensor([_usable(texts[g * k + m]) for m in range(k)])
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
    return rows, n_ties, n_empty
