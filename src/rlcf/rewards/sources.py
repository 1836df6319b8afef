"""Reward sources (Python callables, an HF sequence-classification model, a remote reward server), combined with
weights, and score preprocessing.

A reward function is `(prompts, responses) -> one float per response`; it may also take the prompt rows' other
columns as keyword arguments (a reference answer, a test case, a label), declared by its signature: a parameter
named after a column gets that column's values, one per response, and `**kwargs` gets them all (as TRL passes a
dataset's columns to its reward functions).

A user's scoring function (the reward, a gold scorer) is never trusted: what it raises, a call that never
returns (with a timeout) and what it returns (a count, a non-number, a NaN) all become a RewardError, one
line naming the function, the problem and the batch, the original exception chained for a debugger.
"""

from __future__ import annotations

import importlib
import inspect
import math
import numbers
import threading
from typing import Callable, Sequence

import torch
from torch import Tensor
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from ..data.pairs import chat_text
from ..models.hub import resolve_reward_model
from .http import public_url
from .remote import RemoteReward, RemoteRewardError


class RewardError(ValueError):
    """A reward function or gold scorer failed on a batch: it raised, gave no answer in time, or returned
    something that is not one finite number per response. `spec` is the function ('module:function') or model."""

    def __init__(self, message: str, spec: str | None = None):
        super().__init__(message)
        self.spec = spec

    def at(self, where: str) -> "RewardError":
        """The same error with `where` (e.g. 'step 12') in front; raise it `from err.__cause__` to keep the chain."""
        new = RewardError(f"{where}: {self}", self.spec)
        new.__cause__ = self.__cause__
        return new


def import_callable(spec: str, what: str = "reward function") -> Callable:
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


def load_callable(spec: str, what: str = "reward function", timeout_s: float | None = None) -> "ScoreFunction":
    """Import a `(prompts, responses) -> scores` function and guard it (see ScoreFunction); used for gold scorers."""
    return ScoreFunction(import_callable(spec, what), spec, what, timeout_s)


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(str(text).split())
    return text[:limit] + ("..." if len(text) > limit else "")


def call_with_timeout(fn: Callable, args: tuple, timeout_s: float | None, spec: str, what: str = "reward function",
                      kwargs: dict | None = None):
    """fn(*args, **kwargs), with a RewardError naming `spec` when it raises or does not return within timeout_s seconds.

    timeout_s=None calls fn in this thread. Otherwise fn runs in a daemon thread: a thread cannot be killed,
    so a call that hangs is abandoned (it keeps its thread until it returns, its result is dropped) and the
    process can still exit. The caller's torch grad mode and CUDA device are set in that thread too.
    """
    n = len(args[-1]) if args and hasattr(args[-1], "__len__") else "?"
    kwargs = kwargs or {}
    if timeout_s is None:
        try:
            return fn(*args, **kwargs)
        except Exception as e:
            raise RewardError(f"{what} {spec!r} raised {type(e).__name__}: {_one_line(e)} "
                              f"(on a batch of {n} responses)", spec) from e
    grad = torch.is_grad_enabled()
    cuda_device = torch.cuda.current_device() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    box: dict = {}
    done = threading.Event()

    def run():
        try:
            if cuda_device is not None:
                torch.cuda.set_device(cuda_device)
            with torch.set_grad_enabled(grad):
                box["value"] = fn(*args, **kwargs)
        except BaseException as e:  # handed to the caller's thread
            box["error"] = e
        finally:
            done.set()

    threading.Thread(target=run, name=f"rlcf {what} {spec}", daemon=True).start()
    if not done.wait(timeout_s):
        raise RewardError(f"{what} {spec!r} gave no answer within {timeout_s:g} s (on a batch of {n} responses); "
                          "check the function or the server it calls, or raise reward.timeout_s", spec)
    if "error" in box:
        e = box["error"]
        raise RewardError(f"{what} {spec!r} raised {type(e).__name__}: {_one_line(e)} "
                          f"(on a batch of {n} responses)", spec) from e
    return box["value"]


class ScoreFunction:
    """A user's `(prompts, responses) -> scores` function, guarded: called with call_with_timeout and its
    result checked with check_scores, so every failure is a RewardError naming `spec`. Returns a float tensor [B]."""

    def __init__(self, fn: Callable, spec: str, what: str = "reward function", timeout_s: float | None = None):
        if timeout_s is not None and not (timeout_s > 0 and math.isfinite(timeout_s)):
            raise ValueError(f"{what} {spec!r}: timeout_s={timeout_s} must be a number of seconds > 0, "
                             "or None for no timeout")
        self.fn, self.spec, self.what, self.timeout_s = fn, spec, what, timeout_s
        self.name = spec
        try:
            params = list(inspect.signature(fn).parameters.values())[2:]  # after (prompts, responses)
        except (TypeError, ValueError):  # a builtin or C function without a signature: (prompts, responses) only
            params = []
        self.takes_all = any(p.kind is p.VAR_KEYWORD for p in params)
        self.column_args = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]
        self.required_columns = [p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)
                                 and p.default is p.empty]

    def __call__(self, prompts: Sequence[str], responses: Sequence[str], **columns) -> Tensor:
        """Scores [B]; `columns` (name -> one value per response) are passed on as the function's signature asks."""
        prompts, responses = list(prompts), list(responses)
        kwargs = dict(columns) if self.takes_all else {k: v for k, v in columns.items() if k in self.column_args}
        missing = [c for c in self.required_columns if c not in kwargs]
        if missing:
            raise RewardError(f"{self.what} {self.spec!r} takes {', '.join(missing)}, but the prompt rows have no "
                              f"such column{'s' if len(missing) > 1 else ''} (they have: "
                              f"{', '.join(sorted(columns)) or 'none besides the prompt'}); add it to the prompt file "
                              "or give the parameter a default", self.spec)
        values = call_with_timeout(self.fn, (prompts, responses), self.timeout_s, self.spec, self.what, kwargs)
        return check_scores(values, prompts, responses, self.spec, self.what)

    def __repr__(self) -> str:
        return f"ScoreFunction({self.what} {self.spec!r}, timeout_s={self.timeout_s})"


def _number(v) -> float | None:
    """v as a float when it is one number (int, float, bool, a numpy or torch scalar), else None."""
    if isinstance(v, numbers.Real):  # int, float, bool, Fraction, numpy int/float scalars
        return float(v)
    if isinstance(v, Tensor):
        return float(v) if v.numel() == 1 and not v.is_complex() else None
    kind = getattr(getattr(v, "dtype", None), "kind", None)  # numpy bool scalars, 0-d arrays
    return float(v) if kind in ("b", "i", "u", "f") and getattr(v, "size", None) == 1 else None


def _as_list(values, what: str, source: str) -> list:
    """The scores as a list (elements not yet checked) from a list/tuple, or a numpy array or tensor [B] or [B, 1]."""
    shape = getattr(values, "shape", None)
    if shape is not None and hasattr(values, "tolist"):  # a tensor or a numpy array
        shape = tuple(shape)
        if len(shape) == 2 and shape[1] == 1:
            values = values.reshape(-1)
        elif len(shape) != 1:
            raise RewardError(f"{what} {source!r}: returned an array of shape {list(shape)}; it must return one number "
                              "per response (a list, or an array or tensor of shape [B])", source)
        if isinstance(values, Tensor):
            values = values.detach().cpu()
        return values.tolist()
    if values is None or isinstance(values, (str, bytes, dict, numbers.Number)) or not hasattr(values, "__iter__"):
        raise RewardError(f"{what} {source!r}: returned {type(values).__name__} {_one_line(repr(values), 60)}; it must "
                          "return a sequence of numbers, one per response (a list, numpy array or tensor)", source)
    return list(values)


def check_scores(values, prompts: Sequence[str], responses: Sequence[str], source: str,
                 what: str = "reward", finite: bool = True) -> Tensor:
    """The scores as a float tensor [B]. A wrong count, a non-number (a string such as "1.5", None, a list) or
    (with finite) a NaN/inf is a RewardError naming `what`, `source` and the first bad row. Numbers, bools, numpy
    arrays and tensors are accepted; strings are never parsed (a string is most often text where a score was
    meant). finite=False lets NaN/inf through, for the trainer to skip that batch's update."""
    values = _as_list(values, what, source)
    if len(values) != len(responses):
        raise RewardError(
            f"{what} {source!r}: returned {len(values)} values for {len(responses)} responses; "
            "it must return exactly one float per (prompt, response)", source)
    out = []
    for i, v in enumerate(values):
        x = _number(v)
        if x is None:
            hint = ("parse text in the function, e.g. float(text)" if isinstance(v, (str, bytes)) else
                    "give every response a number, e.g. 0.0 when there is nothing to score" if v is None else
                    "one number per response, not a list or an object")
            raise RewardError(f"{what} {source!r}: row {i} is {_one_line(repr(v), 60)} ({type(v).__name__}), not a "
                              f"number; it must return one int or float per response ({hint})", source)
        if finite and not math.isfinite(x):
            raise RewardError(
                f"{what} {source!r}: value {x} for row {i} (prompt {prompts[i][:60]!r}, "
                f"response {responses[i][:60]!r}); rewards must be finite numbers", source)
        out.append(x)
    return torch.tensor(out, dtype=torch.float32)


class RewardSource:
    """The reward the trainer optimises: one component, or a weighted sum of several, each scored on the same
    responses. Components, in this order: a reward model (`model`), reward functions (`functions`, or `function`
    when no functions are given and no model is), a reward server (`url`). `weights`: one per component (empty: all
    1). After each call `last_components` holds every component's raw scores [B], for logging.

    A function's NaN or inf is an error naming the row (a bug in the function); a reward model's or server's (a
    half-precision overflow, a rare input) passes through, and the trainer skips that batch's update (bounded in a
    row). timeout_s: seconds a reward function or one server request may take on one batch (None: a function has
    no limit and stays in this thread); a reward model runs in this thread.
    """

    def __init__(self, function: str | None = None, model: str | None = None, batch_size: int = 32, device="cpu",
                 trust_remote_code: bool = False, timeout_s: float | None = None, functions: Sequence[str] = (),
                 weights: Sequence[float] = (), url: str | None = None, retries: int = 3,
                 api_key_env: str = "RLCF_REWARD_API_KEY"):
        self.components: list[tuple[str, str, str, Callable]] = []  # (name, what, spec, scorer)
        if model:
            self.components.append(("model", "reward model", model, HFRewardModel(
                model, batch_size=batch_size, device=device, trust_remote_code=trust_remote_code)))
        for spec in list(functions) or ([function] if function and not model else []):
            fn = load_callable(spec, "reward function", timeout_s)
            name = spec.rpartition(":")[2].rpartition(".")[2]
            while name in {c[0] for c in self.components}:
                name += "_"
            self.components.append((name, "reward function", spec, fn))
        if url:
            server = RemoteReward(url, batch_size, timeout_s, retries, api_key_env)
            self.components.append(("remote", "reward server", public_url(url), server))
        if not self.components:
            raise ValueError("reward: set reward.function ('module:function'), reward.functions, reward.model (a "
                             "folder or hub id) or reward.url (a reward server)")
        if weights and len(weights) != len(self.components):
            raise ValueError(f"reward.weights: {len(weights)} weights for {len(self.components)} reward components "
                             f"({', '.join(c[2] for c in self.components)}); give one weight each, in that order")
        self.weights = [float(w) for w in weights] if weights else [1.0] * len(self.components)
        single = len(self.components) == 1
        self.name = self.components[0][2] if single else " + ".join(
            f"{w:g} * {c[2]}" for w, c in zip(self.weights, self.components))
        self.what = self.components[0][1] if single else "reward"
        self.last_components: dict[str, Tensor] = {}

    def __call__(self, prompts: list[str], responses: list[str], columns: dict[str, list] | None = None) -> Tensor:
        """The weighted sum of the components' scores [B]; `columns`: the prompt rows' other columns, one value per
        response each, for reward functions and servers that take them."""
        prompts, responses, columns = list(prompts), list(responses), columns or {}
        total, self.last_components = None, {}
        for (name, what, spec, scorer), weight in zip(self.components, self.weights):
            if what == "reward model":
                values = scorer(prompts, responses)
            else:
                try:
                    values = scorer(prompts, responses, **columns)
                except RemoteRewardError as e:
                    raise RewardError(str(e), spec) from e
            scores = check_scores(values, prompts, responses, spec, what, finite=what == "reward function")
            self.last_components[name] = scores
            total = weight * scores if total is None else total + weight * scores
        return total


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


def chat_reward_texts(tokenizer, prompts: Sequence[list[dict]], responses: Sequence[list[dict]]) -> list[str]:
    """The text a reward model reads for each conversational (prompt messages, response messages) pair: the
    tokenizer's chat template over the whole conversation when it has one, else the prompt's and the response's
    texts joined by a newline as `reward_texts` joins strings (a one-turn conversation reads as the same string
    pair would). `rlcf rm` trains on exactly this text for conversational pairs."""
    if tokenizer.chat_template:
        return [tokenizer.apply_chat_template(list(p) + list(r), tokenize=False) for p, r in zip(prompts, responses)]
    return [f"{chat_text(p)}\n{chat_text(r)}" for p, r in zip(prompts, responses)]


class HFRewardModel:
    """A sequence-classification model with its own tokenizer: text is re-tokenized for it.

    The score is the model's single logit, read by transformers at the last real token of each
    right-padded sequence. The prompt and response are joined with the reward model's chat template
    when it has one, else with a newline.
    """

    def __init__(self, path: str, batch_size: int = 32, device="cpu", trust_remote_code: bool = False):
        path = resolve_reward_model(path)  # a missing folder or a causal LM is one clear line, before loading
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
    A std below MIN_STD (a batch of equal scores, up to float rounding) measures no scale: dividing by it would
    multiply rewards by up to 1e8, so while the std is below it scores are left unscaled (divided by 1). In
    `ref` mode the reference std is taken from the first batch WITH spread (more than one score, std >= MIN_STD);
    until one arrives scores are unscaled.
    """

    MIN_STD = 1e-6

    def __init__(self, clip: float = 10.0, scaling: str = "running"):
        if scaling not in ("running", "ref", "none"):
            raise ValueError(f"reward.scaling={scaling!r}: choose running, ref or none")
        self.clip, self.scaling = clip, scaling
        self.count, self.mean, self.m2 = 0, 0.0, 0.0
        self.ref_std: float | None = None  # None until a batch with spread has been seen

    def _update(self, x: Tensor):
        for v in x.double().tolist():
            self.count += 1
            d = v - self.mean
            self.mean += d / self.count
            self.m2 += d * (v - self.mean)

    @property
    def std(self) -> float:
        return math.sqrt(max(self.m2, 0.0) / (self.count - 1)) if self.count > 1 else 1.0

    @property
    def divisor(self) -> float:
        """What scores are divided by now: the std in use, or 1 while there is none (or it is below MIN_STD)."""
        if self.scaling == "ref":
            std = self.ref_std
        elif self.scaling == "running":
            std = self.std
        else:
            return 1.0
        return std if std is not None and std >= self.MIN_STD else 1.0

    def __call__(self, scores: Tensor, batch: Tensor | None = None) -> Tensor:
        """Scale `scores`; the statistics are taken from `batch` (every process's scores, gathered, so all
        processes scale alike), by default from `scores` themselves."""
        scores = scores.clamp(-self.clip, self.clip)
        batch = scores if batch is None else batch.clamp(-self.clip, self.clip)
        if self.scaling == "none":
            return scores
        if self.scaling == "ref":
            if self.ref_std is None and batch.numel() > 1:
                std = float(batch.double().std())
                if std >= self.MIN_STD:
                    self.ref_std = std
        else:
            self._update(batch)
        return scores / self.divisor

    def state_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean, "m2": self.m2, "ref_std": self.ref_std}

    def load_state_dict(self, state: dict):
        self.count, self.mean, self.m2 = state.get("count", 0), state.get("mean", 0.0), state.get("m2", 0.0)
        ref_std = state.get("ref_std")
        # a checkpoint written before MIN_STD may hold the std of a constant first batch: take a new reference
        self.ref_std = ref_std if ref_std is not None and ref_std >= self.MIN_STD else None
