"""A remote reward server (as OpenRLHF's remote_rm_url and verl's reward workers): rlcf POSTs batches of
responses as JSON and reads back one score per response.

Request: `{"prompts": [...], "responses": [...], <column>: [...], ...}` (the prompt rows' other columns ride along,
one list each). Reply: `{"scores": [...]}` (or `{"rewards": [...]}`, or a bare list), one number per response.
Each request is bounded as a whole by `timeout_s` (a reply that trickles in is cut off), reads at most
MAX_REPLY_BYTES, follows no redirect (a key in `$api_key_env` is sent as a Bearer header to the configured origin
only), and is retried `retries` times with backoff on a connection failure, a timeout, HTTP 429 or 5xx. Whatever
still fails is a RewardError naming the URL (credentials masked), as a reward function's failure names the function.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import time
import urllib.error
import urllib.request
from typing import Sequence

from .http import ERROR_BODY_BYTES, MAX_REPLY_BYTES, deadline_opener, public_url, read_capped, redact, url_secrets


class RemoteRewardError(ValueError):
    """A reward server failed for good on a batch; the message names its URL."""


class RemoteReward:
    """`(prompts, responses, **columns) -> list[float]` through a reward server; see the module docstring."""

    def __init__(self, url: str, batch_size: int = 32, timeout_s: float | None = 600.0, retries: int = 3,
                 api_key_env: str = "RLCF_REWARD_API_KEY", backoff_s: float = 0.5):
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"reward.url {public_url(url)!r}: expected an http:// or https:// URL of a reward server")
        self.url, self.batch_size, self.retries, self.backoff_s = url, batch_size, retries, backoff_s
        self.timeout_s = timeout_s if timeout_s is not None else 600.0
        self.name = public_url(url)
        key = os.environ.get(api_key_env, "")
        self._headers = {"Content-Type": "application/json", "Accept": "application/json"}
        if key:
            self._headers["Authorization"] = f"Bearer {key}"
        self._secrets = url_secrets(url) + ([key] if key else [])

    def __call__(self, prompts: Sequence[str], responses: Sequence[str], **columns) -> list:
        scores: list = []
        for s in range(0, len(responses), self.batch_size):
            body = {"prompts": list(prompts[s : s + self.batch_size]),
                    "responses": list(responses[s : s + self.batch_size])}
            body.update({k: list(v[s : s + self.batch_size]) for k, v in columns.items()})
            scores += self._scores(self._post(body), len(body["responses"]))
        return scores

    def _fail(self, problem: str) -> RemoteRewardError:
        return RemoteRewardError(f"reward server {self.name}: {redact(problem, self._secrets)}")

    def _scores(self, text: str, n: int) -> list:
        try:
            reply = json.loads(text)
        except ValueError:
            raise self._fail(f"the reply is not JSON: {text[:120]!r}; it must be {{\"scores\": [one number per "
                             "response]}") from None
        if isinstance(reply, dict):
            reply = reply.get("scores", reply.get("rewards"))
        if not isinstance(reply, list):
            raise self._fail(f"the reply has no list of scores ({text[:120]!r}); it must be {{\"scores\": [...]}}")
        if len(reply) != n:
            raise self._fail(f"{len(reply)} scores for a batch of {n} responses; it must return one per response")
        return reply

    def _post(self, body: dict) -> str:
        data = json.dumps(body).encode()
        problem = ""
        for attempt in range(self.retries + 1):
            request = urllib.request.Request(self.url, data=data, headers=self._headers, method="POST")
            try:
                with deadline_opener(self.timeout_s).open(request, timeout=self.timeout_s) as response:
                    reply, more = read_capped(response, MAX_REPLY_BYTES)
                    if more:
                        raise self._fail(f"the reply is over {MAX_REPLY_BYTES >> 20} MiB (reading stopped there)")
                    return reply.decode("utf-8", errors="replace")
            except urllib.error.HTTPError as e:
                with e:
                    text = read_capped(e, ERROR_BODY_BYTES)[0].decode("utf-8", errors="replace") if e.fp else ""
                if 300 <= e.code < 400:
                    raise self._fail(f"answered HTTP {e.code}, a redirect; redirects are not followed (the request "
                                     "and any key go to the configured origin only): set reward.url to the final "
                                     "address") from None
                if e.code != 429 and e.code < 500:
                    raise self._fail(f"HTTP {e.code} {e.reason}; the reply starts {text[:120]!r}") from None
                problem = f"HTTP {e.code} {e.reason}"
            except (urllib.error.URLError, http.client.HTTPException, OSError) as e:
                reason = getattr(e, "reason", e)
                problem = f"{type(reason).__name__ if isinstance(reason, BaseException) else type(e).__name__}: {reason}"
            if attempt < self.retries:
                time.sleep(self.backoff_s * 2**attempt * (1 + 0.1 * random.random()))
        raise self._fail(f"failed {self.retries + 1} time{'s' if self.retries else ''} (timeout {self.timeout_s:g} s "
                         f"a request), last: {problem}; check the server, or raise reward.timeout_s / reward.retries")
