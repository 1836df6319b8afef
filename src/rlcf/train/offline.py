"""The fixed rows offline APA, AWR and ILQL learn from, read and checked before any model loads."""

from __future__ import annotations

from ..config import TrainConfig
from ..data.loading import load_records, load_rows, parse_columns
from ..losses.registry import offline_algorithms
from ..rewards.sources import RewardSource


def load_offline_rows(cfg: TrainConfig, device="cpu") -> list[dict]:
    """(prompt, response, reward) rows for offline APA/AWR/ILQL, validated up front. A file of preference pairs
    (prompt, chosen, rejected columns, e.g. `rlcf label`'s output) gives two rows a pair, rewarded +1 (chosen)
    and -1 (rejected), or with --offline-pair-rewards reward_model, by --reward.model's scores."""
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
    pairs = load_records(cfg.offline_data, text=("prompt", "chosen", "rejected"), columns=cfg.offline_columns,
                         option="--offline-columns")
    rows = [{"prompt": p["prompt"], "response": p[side], "reward": sign}
            for p in pairs for side, sign in (("chosen", 1.0), ("rejected", -1.0))]
    if cfg.offline_pair_rewards == "reward_model":
        scorer = RewardSource(None, cfg.reward.model, cfg.reward.batch_size, device, cfg.model.trust_remote_code)
        scores = scorer([r["prompt"] for r in rows], [r["response"] for r in rows])
        for r, v in zip(rows, scores.tolist()):
            r["reward"] = v
    return rows
