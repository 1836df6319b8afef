"""Judges: the score judge, and the LLM judge against a local chat-completions server started here
(order swapping, retries, timeouts, malformed replies, and the API key kept out of errors and logs)."""

from __future__ import annotations

import json
import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rlcf.config import JudgeConfig
from rlcf.rewards.judges import JudgeError, LLMJudge, ScoreJudge, make_judge, parse_verdict

KEY = "sk-test-7f3c9a1b2d4e6f80"


class FakeEndpoint:
    """A chat-completions server on 127.0.0.1. `reply(request_number, body) -> (status, text, headers)`."""

    def __init__(self, reply):
        self.reply = reply
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with endpoint.lock:
                    number = len(endpoint.requests)
                    endpoint.requests.append({"path": self.path, "headers": dict(self.headers), "body": body})
                status, text, headers = endpoint.reply(number, body, dict(self.headers))
                try:
                    self.send_response(status)
                    for k, v in headers.items():
                        self.send_header(k, v)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    self.wfile.write(text.encode())
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the client timed out and went away

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def completion(content: str) -> str:
    return json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]})


def shown(body: dict) -> tuple[str, str]:
    """The two responses as the judge was shown them (A, B)."""
    text = body["messages"][-1]["content"]
    a = text.split("[Response A]\n")[1].split("\n\n[Response B]")[0]
    b = text.split("[Response B]\n")[1].split("\n\nWhich response")[0]
    return a, b


@pytest.fixture()
def endpoint():
    servers = []

    def start(reply):
        server = FakeEndpoint(reply)
        servers.append(server)
        return server

    yield start
    for s in servers:
        s.close()


@pytest.fixture()
def api_key(monkeypatch):
    monkeypatch.setenv("RLCF_TEST_JUDGE_KEY", KEY)
    return "RLCF_TEST_JUDGE_KEY"


def judge_for(server, api_key_env="RLCF_TEST_JUDGE_KEY", **kw) -> LLMJudge:
    kw.setdefault("backoff_s", 0.01)
    return LLMJudge(server.url, "judge-model", api_key_env, **kw)


def test_both_orders_are_asked_and_a_position_biased_judge_gives_half(endpoint, api_key):
    server = endpoint(lambda n, body, headers: (200, completion("A"), {}))
    out = judge_for(server)(["p1", "p2"], ["good one", "x"], ["bad one", "y"])
    assert out == [0.5, 0.5]
    assert len(server.requests) == 4
    orders = sorted(shown(r["body"]) for r in server.requests)
    assert orders == sorted([("good one", "bad one"), ("bad one", "good one"), ("x", "y"), ("y", "x")])
    r = server.requests[0]
    assert r["path"] == "/v1/chat/completions" and r["body"]["model"] == "judge-model"
    assert r["headers"]["Authorization"] == f"Bearer {KEY}"


def test_a_consistent_judge_gives_one_or_zero(endpoint, api_key):
    # prefers whichever response says "good", wherever it is shown; the third pair has neither: it picks A
    def reply(n, body, headers):
        a, b = shown(body)
        return 200, completion("B" if "good" in b else "A"), {}

    server = endpoint(reply)
    out = judge_for(server)(["p"] * 3, ["good", "meh", "x"], ["meh", "good", "y"])
    assert out == [1.0, 0.0, 0.5]


def test_server_errors_and_rate_limits_are_retried(endpoint, api_key, caplog):
    def reply(n, body, headers):
        if n < 2:
            return 500, f"upstream broke, auth was {headers.get('Authorization')}", {}
        if n == 2:
            return 429, "slow down", {"Retry-After": "0"}
        a, b = shown(body)
        return 200, completion("A" if a == "first" else "B"), {}

    server = endpoint(reply)
    with caplog.at_level(logging.WARNING, logger="rlcf.rewards.judges"):
        out = judge_for(server, retries=3, max_workers=1)(["p"], ["first"], ["second"])
    assert out == [1.0]
    assert len(server.requests) == 5  # 2 x 500, 1 x 429, then both orders
    assert "HTTP 500" in caplog.text and "HTTP 429" in caplog.text
    assert KEY not in caplog.text and "***" in caplog.text


def test_retries_spent_is_a_clear_error_without_the_key(endpoint, api_key, caplog):
    server = endpoint(lambda n, body, headers: (503, f"echo {headers.get('Authorization')}", {}))
    with caplog.at_level(logging.WARNING, logger="rlcf.rewards.judges"), pytest.raises(JudgeError) as err:
        judge_for(server, retries=2, max_workers=1)(["p"], ["a"], ["b"])
    message = str(err.value)
    assert "failed 3 times" in message and "HTTP 503" in message and "--judge.retries" in message
    assert KEY not in message and KEY not in caplog.text and KEY not in repr(err.value)
    assert err.value.__cause__ is None and err.value.__suppress_context__


def test_unauthorized_names_the_env_var_not_the_key(endpoint, api_key):
    server = endpoint(lambda n, body, headers: (401, json.dumps({"error": f"bad key {headers['Authorization']}"}), {}))
    judge = judge_for(server)
    with pytest.raises(JudgeError, match=r"HTTP 401.*\$RLCF_TEST_JUDGE_KEY") as err:
        judge(["p"], ["a"], ["b"])
    assert KEY not in str(err.value) and "***" in str(err.value)
    assert len(server.requests) == 2  # one per order, no retries of a 4xx
    assert KEY not in repr(judge)


def test_malformed_replies_are_quoted_in_the_error(endpoint, api_key):
    server = endpoint(lambda n, body, headers: (200, "<html>gateway says hello</html>", {}))
    with pytest.raises(JudgeError, match=r"not a chat completion.*<html>gateway says hello"):
        judge_for(server)(["p"], ["a"], ["b"])
    server = endpoint(lambda n, body, headers: (200, completion("Both responses are fine, really."), {}))
    with pytest.raises(JudgeError, match=r"no verdict.*'Both responses are fine"):
        judge_for(server)(["p"], ["a"], ["b"])


def test_timeout_is_retried(endpoint, api_key):
    def reply(n, body, headers):
        if n == 0:
            time.sleep(0.6)
        return 200, completion("A" if shown(body)[0] == "a" else "B"), {}

    server = endpoint(reply)
    start = time.perf_counter()
    out = judge_for(server, timeout_s=0.2, max_workers=1)(["p"], ["a"], ["b"])
    assert out == [1.0] and len(server.requests) == 3
    assert time.perf_counter() - start < 5


def test_no_key_sends_no_authorization_and_url_from_env(endpoint, monkeypatch):
    server = endpoint(lambda n, body, headers: (200, completion("A"), {}))
    monkeypatch.delenv("RLCF_UNSET_KEY", raising=False)
    monkeypatch.setenv("RLCF_JUDGE_URL", server.url)
    judge = LLMJudge(None, "m", "RLCF_UNSET_KEY")
    assert judge(["p"], ["a"], ["b"]) == [0.5]
    assert all("Authorization" not in r["headers"] for r in server.requests)
    monkeypatch.delenv("RLCF_JUDGE_URL")
    with pytest.raises(ValueError, match="--judge.llm-url.*RLCF_JUDGE_URL"):
        LLMJudge(None)


def test_parse_verdict():
    for text, verdict in [("A", "A"), (" B.\n", "B"), ("**A**", "A"), ("[[B]]", "B"), ("Response A", "A"),
                          ("A or B", None), ("", None), ("Neither", None), ("AB", None), ("a", None)]:
        assert parse_verdict(text) == verdict, text


def test_make_judge_kinds():
    gold = lambda prompts, responses: [len(r) for r in responses]  # noqa: E731
    judge = make_judge(JudgeConfig(kind="gold"), gold=gold, gold_name="m:len")
    assert isinstance(judge, ScoreJudge) and judge.name == "gold:m:len"
    assert judge(["p", "p"], ["aaa", "a"], ["a", "a"]) == [1.0, 0.5]
    assert make_judge(JudgeConfig(kind="none")) is None
    with pytest.raises(ValueError, match="--gold"):
        make_judge(JudgeConfig(kind="gold"))
    with pytest.raises(ValueError, match="needs a reward"):
        make_judge(JudgeConfig(kind="reward"))
    with pytest.raises(ValueError, match="same length"):
        judge(["p"], ["a", "b"], ["c"])
    with pytest.raises(ValueError, match="one float per"):
        ScoreJudge(lambda p, r: [1.0], "bad")(["p", "p"], ["a", "b"], ["c", "d"])


def test_run_eval_with_the_llm_judge_keeps_the_key_out_of_the_report(endpoint, api_key, monkeypatch, tmp_path,
                                                                    tiny_model_dir, prompts_file, capsys):
    from rlcf.config import EvalConfig, RolloutConfig
    from rlcf.evaluate import run_eval

    server = endpoint(lambda n, body, headers: (200, completion("A"), {}))
    monkeypatch.setenv("RLCF_JUDGE_URL", server.url)
    cfg = EvalConfig(model=tiny_model_dir, reference=tiny_model_dir, prompts=prompts_file, max_prompts=3,
                     judge=JudgeConfig(kind="llm", llm_api_key_env=api_key), rollout=RolloutConfig(max_new_tokens=4),
                     output=str(tmp_path / "eval.json"))
    path = run_eval(cfg)
    report = path.read_text()
    wr = json.loads(report)["win_rate"]
    assert wr["judge"].startswith("llm:gpt-4o-mini@http://127.0.0.1:")
    assert (wr["n"], wr["ties"], wr["win_rate"]) == (3, 3, 0.5) and len(server.requests) == 6
    assert KEY not in report and KEY not in (tmp_path / "eval.samples.jsonl").read_text()
    assert KEY not in capsys.readouterr().out
