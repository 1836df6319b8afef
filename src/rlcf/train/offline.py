"""The fixed rows offline APA, AWR and ILQL learn from, read and checked before any model loads."""

from __future__ import annotations

from ..config import TrainConfig
from ..data.loading import load_records, load_rows, parse_columns
from ..data.pairs import chat_text, load_pairs
from ..files import main_process
from ..losses.registry import offline_algorithms
from ..rewards.sources import RewardSource


def load_offline_rows(cfg: TrainConfig, device="cpu") -> list[dict]:
    """(prompt, response, reward) rows for offline APA/AWR/ILQL, validated up front. A file of preference pairs
    (chosen, rejected columns, e.g. `rlcf label`'s output, in any shape `data.pairs` reads; the shape is printed)
    gives two rows a pair, rewarded +1 (chosen) and -1 (rejected), or with --offline-pair-rewards reward_model, by
    --reward.model's scores.

    A row's 'prompt' is a string (what a reward or a gold scorer reads). A conversational pair's rows also hold
    'chat', the prompt's messages with any turns of the reply before its last assistant message, whose text is the
    row's 'response'. Tokenize a row's prompt as Prompt(text=row['prompt'], chat=row.get('chat'))."""
    if cfg.algo not in offline_algorithms():
        raise ValueError(f"--offline-data works with --algo {', '.join(offline_algorithms())} (fixed rows); {cfg.algo} "
                         "learns from its own samples. For preference pairs use `rlcf dpo`.")
    mapping = parse_columns(cfg.offline_columns, ("prompt", "response", "reward", "chosen", "rejected"),
                            "--offline-columns")
    first = load_rows(cfg.offline_data)[:1]
    if not first or not {mapping.get("chosen", "chosen"), mapping.get("rejected", "rejected")} <= set(first[0]) \
            or mapping.get("response", "response") in first[0]:
        return load_records(cfg.offline_data, text=("prompt", "response"), numbers=("reward",),
                            columns=cfg.offline_columns, option="--offline-columns")
    pairs = load_pairs(cfg.offline_data, cfg.offline_columns, option="--offline-columns")
    if main_process():
        print(pairs.summary("rlcf train"), flush=True)
    rows = [_pair_row(p["prompt"], p[side], sign) for p in pairs.rows
            for side, sign in (("chosen", 1.0), ("rejected", -1.0))]
    if cfg.offline_pair_rewards == "reward_model":
        scorer = RewardSource(None, cfg.reward.model, cfg.reward.batch_size, device, cfg.model.trust_remote_code)
        scores = scorer([r["prompt"] for r in rows], [r["response"] for r in rows])
        for r, v in zip(rows, scores.tolist()):
            r["reward"] = v
    return rows


def _pair_row(prompt: str | list[dict], reply: str | list[dict], reward: float) -> dict:
    """One side of a pair as a (prompt, chat, response, reward) row: a conversational reply's earlier turns join the
    prompt's messages, its last (assistant) message is the response."""
    if isinstance(reply, str):
        return {"prompt": prompt, "response": reply, "reward": reward}
    chat = list(prompt) + list(reply[:-1])
    return {"prompt": chat_text(chat), "chat": chat, "response": reply[-1]["content"], "reward": reward}
