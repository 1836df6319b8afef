"""Reward sources (a Python callable, an HF sequence-classification model) and score preprocessing."""

from __future__ import annotations

import importlib
import math
from typing import Callable, Sequence

import torch
from torch import Tensor


def load_callable(spec: str, what: str = "reward function") -> Callable:
    """Import 'module:function'. Only an import by name: nothing from a config is ever evaluated."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{what} {spec!r}: expected 'module:function', e.g. 'rlcf.demo.task:reward'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"{what} {spec!r}: cannot import module '{module_name}' ({e}); is it installed or on PYTHONPATH?") from e
    fn = module
    for part in attr.split("."):
        if not hasattr(fn, part):
            raise ValueError(f"{what} {spec!r}: module '{module_name}' has no attribute '{attr}'")
        fn = getattr(fn, part)
    if not callable(fn):
        raise ValueError(f"{what} {spec!r}: '{attr}' is not callable")
    return fn


def check_scores(values, prompts: Sequence[str], responses: Sequence[str], source: str) -> Tensor:
    """The scores as a float tensor [B]; a wrong count, a non-number or a NaN is an error naming the row."""
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError) as e:
        raise ValueError(f"reward {source}: must return a sequence of numbers, one per response ({e})") from e
    if len(values) != len(responses):
        raise ValueError(
            f"reward {source}: returned {len(values)} values for {len(responses)} responses; "
            "it must return exactly one float per (prompt, response)"
        )
    for i, v in enumerate(values):
        if not math.isfinite(v):
            raise ValueError(
                f"reward {source}: value {v} for row {i} (prompt {prompts[i][:60]!r}, response {responses[i][:60]!r}); "
                "rewards must be finite numbers"
            )
    return torch.tensor(values, dtype=torch.float32)


class RewardSource:
    """Calls a `(prompts, responses) -> floats` function, or scores with an HF reward model."""

    def __init__(self, function: str | None = None, model: str | None = None, batch_size: int = 32, device="cpu",
                 trust_remote_code: bool = False):
        if model:
            self.name = model
            self._fn = HFRewardModel(model, batch_size=batch_size, device=device, trust_remote_code=trust_remote_code)
        elif function:
            self.name = function
            self._fn = load_callable(function)
        else:
            raise ValueError("reward: set reward.function ('module:function') or reward.model (a folder or hub id)")

    def __call__(self, prompts: list[str], responses: list[str]) -> Tensor:
        return check_scores(self._fn(list(prompts), list(responses)), prompts, responses, self.name)


def reward_texts(tokenizer, prompts, responses) -> list[str]:
    """The text a reward model reads for each (prompt, response): the tokenizer's chat template with a user
    and an assistant turn when it has one, else "prompt\nresponse". `rlcf rm` trains on exactly this text."""
    if tokenizer.chat_template:
        return [
            tokenizer.apply_chat_template([{"role": "user", "content": p}, {"role": "assistant", "content": r}],
                                          tokenize=False)
            for p, r in zip(prompts, responses)
        ]
    return [f"{p}\n{r}" for p, r in zip(prompts, responses)]


class HFRewardModel:
    """A sequence-classification model with its own tokenizer: text is re-tokenized for it.

    The score is the model's single logit, read by transformers at the last real token of each
    right-padded sequence. The prompt and response are joined with the reward model's chat template
    when it has one, else with a newline.
    """

    def __init__(self, path: str, batch_size: int = 32, device="cpu", trust_remote_code: bool = False):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=trust_remote_code)
        self.tokenizer.padding_side = "right"
        self.tokenizer.truncation_side = "left"  # a long dialogue loses its start, never the response being scored
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        self.model = AutoModelForSequenceClassification.from_pretrained(path, trust_remote_code=trust_remote_code).to(device)
        self.model.eval()
        if self.model.config.num_labels != 1:
            raise ValueError(f"reward model {path}: has {self.model.config.num_labels} labels; a reward model has exactly 1")
        if self.model.config.pad_token_id is None:
            self.model.config.pad_token_id = self.tokenizer.pad_token_id
        self.batch_size = batch_size
        self.device = device

    def texts(self, prompts, responses):
        return reward_texts(self.tokenizer, prompts, responses)

    @torch.no_grad()
    def __call__(self, prompts, responses):
        texts = self.texts(prompts, responses)
        out = []
        for s in range(0, len(texts), self.batch_size):
            enc = self.tokenizer(texts[s : s + self.batch_size], return_tensors="pt", padding=True, truncation=True)
            enc = {k: v.to(self.device) for k, v in enc.items()}
            out.append(self.model(**enc).logits[:, 0].float().cpu())
        return torch.cat(out).tolist()


class RewardScaler:
    """Clip to [-clip, clip], then divide by a std: `running` (all scores so far), `ref` (first batch), `none`.

    No mean is subtracted (as in the seeds' code). The running std uses Welford's update.
    """

    def __init__(self, clip: float = 10.0, scaling: str = "running"):
        if scaling not in ("running", "ref", "none"):
            raise ValueError(f"reward.scaling={scaling!r}: choose running, ref or none")
        self.clip, self.scaling = clip, scaling
        self.count, self.mean, self.m2 = 0, 0.0, 0.0
        self.ref_std: float | None = None

    def _update(self, x: Tensor):
        for v in x.double().tolist():
            self.count += 1
            d = v - self.mean
            self.mean += d / self.count
            self.m2 += d * (v - self.mean)

    @property
    def std(self) -> float:
        return math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 1.0

    def __call__(self, scores: Tensor, batch: Tensor | None = None) -> Tensor:
        """Scale `scores`; the statistics are taken from `batch` (every process's scores, gathered, so all
        processes scale alike), by default from `scores` themselves."""
        scores = scores.clamp(-self.clip, self.clip)
        batch = scores if batch is None else batch.clamp(-self.clip, self.clip)
        if self.scaling == "none":
            return scores
        if self.scaling == "ref":
            if self.ref_std is None:
                self.ref_std = float(batch.std()) if batch.numel() > 1 else 1.0
            return scores / max(self.ref_std, 1e-8)
        self._update(batch)
        return scores / max(self.std, 1e-8)

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean, "m2": self.m2, "ref_std": self.ref_std}

    def load_state_dict(self, state: dict):
        self.count, self.mean, self.m2, self.ref_std = state["count"], state["mean"], state["m2"], state["ref_std"]
