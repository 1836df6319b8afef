"""Judges: which of two responses to the same prompt is better.

Every judge is a callable with one signature,

    judge(prompts, responses_a, responses_b) -> list[float]

returning, per row, P(a is better than b): 1 = a wins, 0 = b wins, 0.5 = a tie (or any value in
[0, 1] for a judge that gives probabilities). Each has a `name` for reports.

- ScoreJudge: a scorer `(prompts, responses) -> floats` (a gold `module:function` or the reward
  source); the higher score wins, equal scores tie.
- LLMJudge: an OpenAI-compatible chat-completions endpoint, asked both orders to cancel position bias.
  Standard library only (urllib), a small thread pool, retries with backoff. The API key is read from
  an environment variable, sent only as a Bearer header, and scrubbed from every error and log line.
  Credentials in the URL itself (?api-key=..., user:password@) are sent (the query as is, user:password as
  basic auth) but never shown: reports, logs and errors carry public_url(url), with both as ***.
  Redirects are never followed (the credentials go to the configured endpoint only), `timeout_s` bounds each whole
  request (connect, send, and reading the whole reply, however slowly it trickles in), and a reply is read up to
  MAX_REPLY_BYTES, never more.
"""

from __future__ import annotations

import base64
import http.client
import json
import logging
import os
import random
import re
import time
import urllib.error
import urllib.parse
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Protocol, Sequence

from ..config import JudgeConfig
from .http import (
    ERROR_BODY_BYTES,
    MAX_REPLY_BYTES,
    deadline_opener,
    origin,
    public_url,
    read_capped,
    redact,
    request_url,
    url_secrets,
)
from .sources import check_scores

logger = logging.getLogger(__name__)

Scorer = Callable[[list[str], list[str]], Sequence[float]]


class Judge(Protocol):
    name: str

    def __call__(self, prompts: Sequence[str], responses_a: Sequence[str], responses_b: Sequence[str]) -> list[float]: ...


class JudgeError(ValueError):
    """A judge could not give a verdict (bad endpoint, unparseable reply, retries spent)."""


def _check_lengths(prompts, responses_a, responses_b, name: str) -> None:
    if not len(prompts) == len(responses_a) == len(responses_b):
        raise ValueError(f"judge {name}: got {len(prompts)} prompts, {len(responses_a)} responses a and "
                         f"{len(responses_b)} responses b; they must be the same length (one pair per prompt row)")


class ScoreJudge:
    """Higher score wins, equal scores (or identical responses) tie."""

    def __init__(self, scorer: Scorer, name: str):
        self.scorer = scorer
        self.name = name

    def __call__(self, prompts, responses_a, responses_b) -> list[float]:
        _check_lengths(prompts, responses_a, responses_b, self.name)
        prompts, responses_a, responses_b = list(prompts), list(responses_a), list(responses_b)
        n = len(prompts)
        if n == 0:
            return []
        # one call over both sides, so a reward model batches them together
        both = check_scores(self.scorer(prompts + prompts, responses_a + responses_b), prompts + prompts,
                            responses_a + responses_b, self.name).tolist()
        out = []
        for a, b, sa, sb in zip(responses_a, responses_b, both[:n], both[n:]):
            out.append(0.5 if a == b or sa == sb else float(sa > sb))
        return out


SYSTEM_PROMPT = (
    "You are a careful, impartial judge. You are shown a user's request and two candidate responses, "
    "A and B. Decide which response better fulfils the request: helpful, correct, clear, and appropriate. "
    "Do not let the order of the responses or their length sway you. "
    "Reply with exactly one letter: A or B."
)

USER_TEMPLATE = (
    "[Request]\n{prompt}\n\n[Response A]\n{a}\n\n[Response B]\n{b}\n\n"
    "Which response is better? Reply with exactly one letter: A or B."
)

_VERDICT = re.compile(r"(?<![A-Za-z0-9])([AB])(?![A-Za-z0-9])")


def parse_verdict(content: str) -> str | None:
    """'A' or 'B' when the reply names exactly one of them as a standalone capital letter, else None.

    Accepts "A", "B.", "**B**", "[[A]]", "Response A"; a reply naming both (or neither) is not a verdict.
    """
    found = set(_VERDICT.findall(content))
    return found.pop() if len(found) == 1 else None


class LLMJudge:
    """An OpenAI-compatible chat-completions endpoint as a judge (POST {url path}/chat/completions?{url query}).

    Each pair is asked twice, a shown first and b shown first; P(a better) is the mean of the two
    verdicts, so both agreeing gives 1 or 0 and a judge that always picks one position gives 0.5.
    Connection errors, timeouts, HTTP 5xx and 429 are retried `retries` times with exponential backoff
    (a Retry-After header is honoured, up to 60 s); any other HTTP error, a redirect (never followed), a reply over
    MAX_REPLY_BYTES, a reply that is not JSON, or a reply with no verdict stops with a JudgeError quoting the start
    of the reply. `timeout_s` bounds each attempt as a whole: connecting, sending and reading the whole reply.
    """

    def __init__(self, url: str | None = None, model: str = "gpt-4o-mini", api_key_env: str = "OPENAI_API_KEY",
                 timeout_s: float = 60.0, retries: int = 3, max_workers: int = 4, backoff_s: float = 1.0,
                 max_tokens: int = 4):
        url = url or os.environ.get("RLCF_JUDGE_URL")
        if not url:
            raise ValueError("judge.kind=llm needs an endpoint: set --judge.llm-url (e.g. https://api.openai.com/v1) "
                             "or the environment variable RLCF_JUDGE_URL")
        try:
            parts = urllib.parse.urlsplit(url)
            parts.port  # noqa: B018 (raises on a port that is not a number)
        except ValueError as e:
            raise ValueError(f"judge.llm_url {public_url(url)!r}: not a valid URL ({e})") from None
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"judge.llm_url {public_url(url)!r}: must start with http:// or https://")
        if not parts.hostname:
            raise ValueError(f"judge.llm_url {public_url(url)!r}: has no host; expected e.g. https://api.openai.com/v1")
        if retries < 0 or timeout_s <= 0 or max_workers < 1:
            raise ValueError(f"LLMJudge: retries ({retries}) must be >= 0, timeout_s ({timeout_s}) > 0, "
                             f"max_workers ({max_workers}) >= 1")
        # the URL may carry credentials (?api-key=..., user:password@): only public_url() of it is ever shown
        self._request_url = request_url(url)
        self.endpoint = public_url(self._request_url)
        self.model = model
        self.api_key_env = api_key_env
        self._api_key = os.environ.get(api_key_env) or None  # never logged, never in an error or report
        self._secrets = url_secrets(url) + ([self._api_key] if self._api_key else [])
        # user:password@ in the URL is sent as HTTP basic auth (urllib would put it in the Host header), unless
        # an API key is set: then the key's Bearer header is the Authorization
        userinfo = parts.netloc.rpartition("@")[0]
        self._basic = None
        if userinfo and not self._api_key:
            user, _, password = userinfo.partition(":")
            pair = f"{urllib.parse.unquote(user)}:{urllib.parse.unquote(password)}"
            self._basic = base64.b64encode(pair.encode()).decode()
            self._secrets.append(self._basic)
        elif userinfo:
            logger.warning("judge.llm_url has user:password@ and $%s is set: the key is sent, the URL's "
                           "credentials are not", api_key_env)
        self.timeout_s = timeout_s
        self.retries = retries
        self.max_workers = max_workers
        self.backoff_s = backoff_s
        self.max_tokens = max_tokens
        self.name = f"llm:{model}@{public_url(url)}"

    @classmethod
    def from_config(cls, cfg: JudgeConfig, **kwargs) -> "LLMJudge":
        return cls(cfg.llm_url, cfg.llm_model, cfg.llm_api_key_env, cfg.timeout_s, cfg.retries, **kwargs)

    def __repr__(self) -> str:
        key = f"${self.api_key_env} set" if self._api_key else f"${self.api_key_env} unset"
        return f"LLMJudge({self.name}, {key})"

    def __call__(self, prompts, responses_a, responses_b) -> list[float]:
        _check_lengths(prompts, responses_a, responses_b, self.name)
        n = len(prompts)
        # rows 0..n-1 show a first; rows n..2n-1 show b first
        jobs = [(p, a, b) for p, a, b in zip(prompts, responses_a, responses_b)]
        jobs += [(p, b, a) for p, a, b in zip(prompts, responses_a, responses_b)]
        if not jobs:
            return []
        pool = ThreadPoolExecutor(max_workers=min(self.max_workers, len(jobs)))
        try:
            verdicts = list(pool.map(lambda job: self.verdict(*job), jobs))
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        a_first, b_first = verdicts[:n], verdicts[n:]
        return [((v1 == "A") + (v2 == "B")) / 2 for v1, v2 in zip(a_first, b_first)]

    def verdict(self, prompt: str, first: str, second: str) -> str:
        """'A' if the endpoint prefers `first` (shown as A), 'B' if `second`."""
        body = {
            "model": self.model,
            "messages": [
                {"role": "system", "content": SYSTEM_PROMPT},
                {"role": "user", "content": USER_TEMPLATE.format(prompt=prompt, a=first, b=second)},
            ],
            "temperature": 0,
            "max_tokens": self.max_tokens,
        }
        reply = self._post(body)
        try:
            content = json.loads(reply)["choices"][0]["message"]["content"]
        except (ValueError, KeyError, IndexError, TypeError) as e:
            raise JudgeError(f"judge {self.name}: the reply is not a chat completion ({type(e).__name__}); "
                             f"it starts {self._quote(reply)}") from None
        verdict = parse_verdict(content if isinstance(content, str) else "")
        if verdict is None:
            raise JudgeError(f"judge {self.name}: no verdict in the reply (expected exactly 'A' or 'B'); "
                             f"it starts {self._quote(content if isinstance(content, str) else repr(content))}")
        return verdict

    def _redact(self, text) -> str:
        return redact(str(text), self._secrets)

    def _quote(self, text: str, limit: int = 200) -> str:
        text = self._redact(text)
        return repr(text[:limit] + ("..." if len(text) > limit else ""))

    def _post(self, body: dict) -> str:
        data = json.dumps(body).encode()
        headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if self._api_key:
            headers["Authorization"] = f"Bearer {self._api_key}"
        elif self._basic:
            headers["Authorization"] = f"Basic {self._basic}"
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self._request_url, data=data, headers=headers, method="POST")
            retry_after = None
            try:
                with deadline_opener(self.timeout_s).open(request, timeout=self.timeout_s) as response:
                    return self._read_reply(response)
            except urllib.error.HTTPError as e:
                try:
                    text = self._error_text(e)
                    if 300 <= e.code < 400:
                        raise self._redirect_error(e) from None
                finally:
                    e.close()
                if e.code != 429 and e.code < 500:
                    hint = ""
                    if e.code in (401, 403):
                        hint = (" (are the URL's user:password right?)" if self._basic else
                                f" (is ${self.api_key_env} set to a valid key?)")
                    raise JudgeError(f"judge {self.name}: HTTP {e.code} {self._redact(e.reason)}{hint}; "
                                     f"the reply starts {self._quote(text)}") from None
                problem = f"HTTP {e.code} {self._redact(e.reason)}: {self._quote(text, 120)}"
                retry_after = _retry_after_s(e.headers.get("Retry-After") if e.headers else None)
            except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
                reason = getattr(e, "reason", e)  # urllib wraps what failed while connecting in a URLError
                kind = type(reason).__name__ if isinstance(reason, BaseException) else type(e).__name__
                problem = f"{kind}: {self._redact(reason)}"
            if attempt == self.retries:
                raise JudgeError(f"judge {self.name}: request failed {self.retries + 1} "
                                 f"time{'s' if self.retries else ''}, last: {problem}; "
                                 "check the endpoint, or raise --judge.retries / --judge.timeout-s") from None
            wait = retry_after if retry_after is not None else self.backoff_s * 2**attempt * (1 + 0.1 * random.random())
            logger.warning("judge %s: %s; retry %d/%d in %.1fs", self.name, problem, attempt + 1, self.retries, wait)
            time.sleep(wait)
        raise AssertionError("unreachable")


    def _read_reply(self, response) -> str:
        """The whole body of a 2xx reply as text: at most MAX_REPLY_BYTES, else a JudgeError naming the size; a body
        shorter than its Content-Length is an IncompleteRead (retried)."""
        declared = response.headers.get("Content-Length")
        try:
            length = int(declared) if declared is not None else None
        except ValueError:
            length = None
        too_big = (f"judge {self.name}: the reply from {self.endpoint} is %s, over the {MAX_REPLY_BYTES >> 20} MiB "
                   "a judge reads (a verdict is a few hundred bytes); is --judge.llm-url a chat-completions endpoint?")
        if length is not None and length > MAX_REPLY_BYTES:
            raise JudgeError(too_big % f"{length} bytes (its Content-Length)")
        body, more = read_capped(response, MAX_REPLY_BYTES)
        if more:
            raise JudgeError(too_big % f"more than {MAX_REPLY_BYTES} bytes (reading stopped there)")
        if length is not None and len(body) < length:
            raise http.client.IncompleteRead(bytes(body), length - len(body))
        return body.decode("utf-8", errors="replace")

    def _error_text(self, e: urllib.error.HTTPError) -> str:
        """The start of an HTTP error's body ('' if it cannot be read by the deadline)."""
        if e.fp is None:
            return ""
        try:
            return read_capped(e, ERROR_BODY_BYTES)[0].decode("utf-8", errors="replace")
        except (OSError, http.client.HTTPException, ValueError):
            return ""

    def _redirect_error(self, e: urllib.error.HTTPError) -> JudgeError:
        location = e.headers.get("Location") if e.headers else None
        if location:
            target = origin(urllib.parse.urljoin(self._request_url, location.strip()))
            where = "the same origin" if target == origin(self._request_url) else "another origin"
            to = f"a redirect to {self._redact(target)} ({where})"
        else:
            to = "a redirect without a Location"
        return JudgeError(f"judge {self.name}: {self.endpoint} answered HTTP {e.code}, {to}; redirects are not "
                          "followed, so the request and its credentials go to the configured endpoint only: set "
                          "--judge.llm-url (or RLCF_JUDGE_URL) to the final address")


def _retry_after_s(value: str | None) -> float | None:
    try:
        return min(max(float(value), 0.0), 60.0) if value is not None else None
    except ValueError:
        return None


def make_judge(cfg: JudgeConfig, reward: Scorer | None = None, reward_name: str = "reward",
               gold: Scorer | None = None, gold_name: str = "gold") -> Judge | None:
    """The judge JudgeConfig.kind asks for; None for kind 'none'. A missing scorer is an error naming the flag."""
    if cfg.kind == "none":
        return None
    if cfg.kind == "gold":
        if gold is None:
            raise ValueError("judge.kind=gold needs a gold scorer: set --gold module:function, "
                             "or pick --judge.kind reward / llm / none")
        return ScoreJudge(gold, f"gold:{gold_name}")
    if cfg.kind == "reward":
        if reward is None:
            raise ValueError("judge.kind=reward needs a reward: set --reward-function module:function or "
                             "--reward-model PATH, or pick --judge.kind gold / llm / none")
        return ScoreJudge(reward, f"reward:{reward_name}")
    if cfg.kind == "llm":
        return LLMJudge.from_config(cfg)
    raise ValueError(f"judge.kind={cfg.kind!r}: choose gold, reward, llm or none")
