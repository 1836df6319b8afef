"""Rewards that see the row, several rewards combined with weights, and a remote reward server on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import torch

from rlcf.rewards import RewardError, RewardSource

PROMPTS = ["2+2?", "3+3?", "capital of France?"]
RESPONSES = ["4", "7", "Paris"]


def exact_match(prompts, responses, reference_answer):
    """A verifiable reward: 1 when the response is the row's reference answer."""
    return [float(r.strip() == a) for r, a in zip(responses, reference_answer)]


def length(prompts, responses):
    return [float(len(r)) for r in responses]


def sees_everything(prompts, responses, **columns):
    return [float(len(columns)) for _ in responses]


def optional_column(prompts, responses, bonus=None):
    return [1.0 if bonus is None else float(b) for b in (bonus or [None] * len(responses))]


def test_a_reward_function_reads_the_rows_columns_it_names():
    columns = {"reference_answer": ["4", "6", "Paris"], "topic": ["math", "math", "geo"]}
    reward = RewardSource(f"{__name__}:exact_match")
    assert reward(PROMPTS, RESPONSES, columns).tolist() == [1.0, 0.0, 1.0]
    assert RewardSource(f"{__name__}:sees_everything")(PROMPTS, RESPONSES, columns).tolist() == [2.0] * 3
    # today's (prompts, responses) functions keep working, with or without columns
    assert RewardSource(f"{__name__}:length")(PROMPTS, RESPONSES, columns).tolist() == [1.0, 1.0, 5.0]
    assert RewardSource(f"{__name__}:optional_column")(PROMPTS, RESPONSES).tolist() == [1.0] * 3


def test_a_missing_column_names_the_parameter_and_the_columns_there_are():
    with pytest.raises(RewardError, match=r"exact_match.*takes reference_answer.*they have: topic"):
        RewardSource(f"{__name__}:exact_match")(PROMPTS, RESPONSES, {"topic": ["a", "b", "c"]})


def test_weighted_components_sum_and_each_is_kept_for_logging():
    reward = RewardSource(functions=(f"{__name__}:exact_match", f"{__name__}:length"), weights=(1.0, 0.2))
    out = reward(PROMPTS, RESPONSES, {"reference_answer": ["4", "6", "Paris"]})
    torch.testing.assert_close(out, torch.tensor([1.2, 0.2, 2.0]))
    assert set(reward.last_components) == {"exact_match", "length"}
    assert reward.last_components["length"].tolist() == [1.0, 1.0, 5.0]
    with pytest.raises(ValueError, match=r"reward.weights: 3 weights for 2 reward components"):
        RewardSource(functions=(f"{__name__}:exact_match", f"{__name__}:length"), weights=(1, 2, 3))
    # functions given: they replace the single function
    assert RewardSource(function="rlcf.demo.task:reward", functions=(f"{__name__}:length",)).name.endswith("length")


class _Server(BaseHTTPRequestHandler):
    mode = "ok"
    seen: list = []

    def log_message(self, *args):  # quiet
        pass

    def do_POST(self):  # noqa: N802 (http.server's name)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        type(self).seen.append({"body": body, "auth": self.headers.get("Authorization")})
        if self.mode == "hang":
            time.sleep(5)
            return
        if self.mode == "garbage":
            payload = b"<html>not json</html>"
        elif self.mode == "wrong-count":
            payload = json.dumps({"scores": [1.0]}).encode()
        elif self.mode == "redirect":
            self.send_response(302)
            self.send_header("Location", "http://127.0.0.1:9/elsewhere")
            self.end_headers()
            return
        else:
            payload = json.dumps({"scores": [len(r) + (a == r) for r, a in
                                             zip(body["responses"], body.get("reference_answer", [None] * 99))]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@contextmanager
def reward_server(mode: str):
    handler = type("Handler", (_Server,), {"mode": mode, "seen": []})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/score", handler
    finally:
        server.shutdown()
        server.server_close()


def test_a_remote_reward_server_scores_in_batches_with_the_rows_columns(monkeypatch):
    monkeypatch.setenv("RLCF_REWARD_API_KEY", "sekret-key")
    with reward_server("ok") as (url, handler):
        reward = RewardSource(function=None, url=url, batch_size=2, timeout_s=5)
        out = reward(PROMPTS, RESPONSES, {"reference_answer": ["4", "6", "Paris"]})
    assert out.tolist() == [2.0, 1.0, 6.0]
    assert [len(s["body"]["responses"]) for s in handler.seen] == [2, 1]  # batches of 2
    assert handler.seen[0]["body"]["reference_answer"] == ["4", "6"] and handler.seen[0]["auth"] == "Bearer sekret-key"


def test_functions_and_a_server_combine():
    with reward_server("ok") as (url, _):
        reward = RewardSource(functions=(f"{__name__}:length",), url=url, weights=(0.5, 2.0), timeout_s=5)
        out = reward(PROMPTS, RESPONSES)
    assert out.tolist() == [0.5 * 1 + 2 * 1, 0.5 * 1 + 2 * 1, 0.5 * 5 + 2 * 5]
    assert set(reward.last_components) == {"length", "remote"}


@pytest.mark.parametrize("mode,message", [
    ("hang", r"reward server http://127.0.0.1:\d+/score: failed 2 times \(timeout 1 s a request\)"),
    ("garbage", r"reward server .*: the reply is not JSON: '<html>not json</html>'"),
    ("wrong-count", r"reward server .*: 1 scores for a batch of 3 responses"),
    ("redirect", r"reward server .*: answered HTTP 302, a redirect; redirects are not followed"),
])
def test_a_misbehaving_server_is_one_line_within_the_timeout(mode, message):
    with reward_server(mode) as (url, handler):
        reward = RewardSource(function=None, url=url, timeout_s=1, retries=1)
        t0 = time.monotonic()
        with pytest.raises(RewardError, match=message) as err:
            reward(PROMPTS, RESPONSES)
        assert time.monotonic() - t0 < 4  # two attempts of at most 1 s each, and a short backoff
    assert "\n" not in str(err.value)
