"""Bad input to rewards and judges: a reward function that raises, hangs, or returns strings or NaN; constant
reward batches in the scaler; credentials in the LLM judge's URL. Each is a one-line ValueError naming the
function (or is made safe), and a secret never reaches a repr, a report or an error.

The functions below are also reward specs for the CLI: `PYTHONPATH=tests ... test_bad_inputs_rewards_judges:raises`.
"""

from __future__ import annotations

import json
import threading
import time

import numpy as np
import pytest
import torch

from rlcf.rewards.judges import JudgeError, LLMJudge, public_url, request_url
from rlcf.rewards import RewardError, RewardScaler, RewardSource, check_scores, load_callable
from test_judges import completion
from test_judges import endpoint  # noqa: F401  (the fixture: a local chat-completions server)

HERE = "test_bad_inputs_rewards_judges"
SECRET = "s3cr3t-9d8c7b6a"
_release = threading.Event()  # set at teardown, so an abandoned sleeping call ends with the test


# ---- reward functions a user might write ----

def raises(prompts, responses):
    raise ZeroDivisionError("division by zero")


def strings(prompts, responses):
    return ["0.5"] * len(responses)


def second_is_string(prompts, responses):
    return [0.5, "1.5"] + [0.0] * (len(responses) - 2)


def nones(prompts, responses):
    return [None] * len(responses)


def nan_second(prompts, responses):
    return [0.0, float("nan")] + [0.0] * (len(responses) - 2)


def inf_reward(prompts, responses):
    return [float("inf")] * len(responses)


def sleeps(prompts, responses):
    _release.wait(30)  # a reward server that never answers
    return [0.0] * len(responses)


def constant(prompts, responses):
    return [1.5] * len(responses)


CALLS: list[tuple[int, bool]] = []


def thread_and_grad(prompts, responses):
    CALLS.append((threading.get_ident(), torch.is_grad_enabled()))
    return [0.0] * len(responses)


@pytest.fixture(autouse=True)
def release_sleepers():
    _release.clear()
    yield
    _release.set()


P, R = ["p0", "p1", "p2"], ["r0", "r1", "r2"]


# ---- 1a. a reward function that raises ----

def test_a_raising_reward_function_is_a_reward_error_naming_the_spec_and_the_batch():
    with pytest.raises(RewardError) as info:
        RewardSource(f"{HERE}:raises")(P, R)
    e = info.value
    assert isinstance(e, ValueError) and e.spec == f"{HERE}:raises"
    assert str(e) == (f"reward function '{HERE}:raises' raised ZeroDivisionError: division by zero "
                      "(on a batch of 3 responses)")
    assert isinstance(e.__cause__, ZeroDivisionError)  # chained, for a debug mode
    stepped = e.at("step 7")
    assert str(stepped).startswith(f"step 7: reward function '{HERE}:raises' raised")
    assert stepped.spec == e.spec and stepped.__cause__ is e.__cause__


def test_a_raising_gold_scorer_is_a_reward_error_too():
    gold = load_callable(f"{HERE}:raises", "gold scorer")
    with pytest.raises(RewardError, match=rf"^gold scorer '{HERE}:raises' raised ZeroDivisionError.*batch of 3"):
        gold(P, R)
    with pytest.raises(RewardError, match=rf"gold scorer '{HERE}:sleeps' gave no answer within 0.2 s"):
        load_callable(f"{HERE}:sleeps", "gold scorer", timeout_s=0.2)(P, R)


# ---- 1b. non-numbers and non-finite scores ----

def test_strings_and_none_are_rejected_naming_the_row_and_value():
    with pytest.raises(RewardError, match=rf"reward function '{HERE}:second_is_string': row 1 is '1.5' \(str\), "
                                          r"not a number.*float\(text\)"):
        RewardSource(f"{HERE}:second_is_string")(P, R)
    with pytest.raises(RewardError, match=r"row 0 is '0.5' \(str\)"):
        RewardSource(f"{HERE}:strings")(P, R)
    with pytest.raises(RewardError, match=r"row 0 is None"):
        RewardSource(f"{HERE}:nones")(P, R)
    for bad, message in [({"a": 1.0}, "returned dict"), ("1.0", "returned str"), (2.0, "returned float"),
                         (np.array(["1", "2"]), r"row 0 is '1' \(str\)"), (torch.zeros(2, 2), r"shape \[2, 2\]"),
                         ([[1.0], [2.0]], r"row 0 is \[1.0\] \(list\)")]:
        with pytest.raises(RewardError, match=message):
            check_scores(bad, P[:2], R[:2], "m:f")


def test_numbers_arrays_tensors_and_bools_are_accepted():
    want = torch.tensor([1.0, 2.0])
    for good in ([1, 2.0], (1.0, 2), np.array([1.0, 2.0]), np.array([1, 2], dtype=np.int64), torch.tensor([1.0, 2.0]),
                 torch.tensor([[1.0], [2.0]], requires_grad=True), [np.float32(1), torch.tensor(2.0)],
                 (x for x in [1.0, 2.0])):
        out = check_scores(good, P[:2], R[:2], "m:f")
        assert out.dtype == torch.float32 and torch.equal(out, want), good
    assert check_scores([True, False], P[:2], R[:2], "m:f").tolist() == [1.0, 0.0]


def test_nan_and_inf_are_errors_naming_the_row():
    with pytest.raises(RewardError, match=rf"reward function '{HERE}:nan_second': value nan for row 1 .*finite"):
        RewardSource(f"{HERE}:nan_second")(P, R)
    with pytest.raises(RewardError, match=r"value inf for row 0"):
        RewardSource(f"{HERE}:inf_reward")(P, R)
    with pytest.raises(RewardError, match=r"value nan for row 1"):
        check_scores(np.array([0.0, np.nan]), P[:2], R[:2], "m:f")


# ---- 1c. a reward function that never answers ----

def test_timeout_fires_quickly_for_a_function_that_hangs():
    source = RewardSource(f"{HERE}:sleeps", timeout_s=0.5)
    t0 = time.perf_counter()
    with pytest.raises(RewardError) as info:
        source(P, R)
    elapsed = time.perf_counter() - t0
    assert 0.4 < elapsed < 3.0, elapsed
    assert str(info.value) == (f"reward function '{HERE}:sleeps' gave no answer within 0.5 s (on a batch of 3 "
                               "responses); check the function or the server it calls, or raise reward.timeout_s")
    assert info.value.spec == f"{HERE}:sleeps"
    hung = [t for t in threading.enumerate() if t.name.endswith(f"{HERE}:sleeps")]
    assert hung and all(t.daemon for t in hung)  # abandoned, and it cannot keep the process alive


def test_with_a_timeout_the_call_runs_in_a_worker_thread_with_the_callers_grad_mode():
    CALLS.clear()
    with torch.no_grad():
        RewardSource(f"{HERE}:thread_and_grad", timeout_s=5)(P, R)
    RewardSource(f"{HERE}:thread_and_grad", timeout_s=5)(P, R)
    RewardSource(f"{HERE}:thread_and_grad", timeout_s=None)(P, R)
    main = threading.get_ident()
    assert [(ident == main, grad) for ident, grad in CALLS] == [(False, False), (False, True), (True, True)]
    with pytest.raises(RewardError, match="raised ZeroDivisionError"):  # an exception in the worker is wrapped too
        RewardSource(f"{HERE}:raises", timeout_s=5)(P, R)
    for bad in (0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match=r"timeout_s=.* must be a number of seconds > 0, or None"):
            RewardSource(f"{HERE}:constant", timeout_s=bad)


# ---- 1d. the scaler on batches without spread ----

def test_running_scaler_leaves_constant_batches_unscaled_then_scales_by_the_running_std():
    scaler = RewardScaler(clip=10.0, scaling="running")
    const = torch.full((4,), 1.5)
    for _ in range(2):
        out = scaler(const)
        assert torch.isfinite(out).all() and torch.equal(out, const)  # divided by 1, not by ~0
    spread = torch.tensor([1.0, 2.0, 3.0])
    seen = torch.cat([const, const, spread]).double()
    torch.testing.assert_close(scaler(spread), (spread / seen.std()).float())
    assert scaler.divisor == pytest.approx(float(seen.std()))


def test_ref_scaler_takes_its_reference_from_the_first_batch_with_spread():
    scaler = RewardScaler(clip=10.0, scaling="ref")
    const = torch.full((4,), 1.5)
    assert torch.equal(scaler(const), const) and scaler.ref_std is None  # no reference yet
    assert torch.equal(scaler(torch.tensor([2.0])), torch.tensor([2.0])) and scaler.ref_std is None
    spread = torch.tensor([1.0, 2.0, 4.0])
    ref = float(spread.double().std())
    torch.testing.assert_close(scaler(spread), spread / ref)
    later = torch.tensor([3.0, -1.0, 0.5, 8.0])
    torch.testing.assert_close(scaler(later), later / ref)  # the reference stays that batch's std
    torch.testing.assert_close(scaler(const), const / ref)  # a constant batch later is scaled like any other
    assert scaler.ref_std == pytest.approx(ref)
    # the statistics come from `batch` (all processes' scores) when given: a constant gathered batch sets nothing
    fresh = RewardScaler(scaling="ref")
    assert torch.equal(fresh(spread, batch=torch.ones(8)), spread) and fresh.ref_std is None


def test_scaler_state_round_trips_and_old_checkpoints_load():
    for scaling in ("running", "ref"):
        a = RewardScaler(scaling=scaling)
        a(torch.full((3,), 2.0))
        b = RewardScaler(scaling=scaling)
        b.load_state_dict(json.loads(json.dumps(a.state_dict())))  # checkpoints keep it as JSON
        assert b.state_dict() == a.state_dict()
        a(torch.tensor([1.0, 5.0]))
        b.load_state_dict(json.loads(json.dumps(a.state_dict())))
        x = torch.tensor([0.3, -2.0, 7.0])
        torch.testing.assert_close(b(x), a(x))
    # a checkpoint written before the fix may hold the zero std of a constant first batch: a new reference is taken
    old = RewardScaler(scaling="ref")
    old.load_state_dict({"count": 0, "mean": 0.0, "m2": 0.0, "ref_std": 0.0})
    assert old.ref_std is None and torch.equal(old(torch.full((2,), 1.5)), torch.full((2,), 1.5))
    partial = RewardScaler(scaling="running")
    partial.load_state_dict({"ref_std": None})  # missing fields take their defaults
    assert (partial.count, partial.mean, partial.m2, partial.std) == (0, 0.0, 0.0, 1.0)


# ---- 2. credentials in the judge's URL ----

def test_public_and_request_urls():
    url = f"https://user:{SECRET}@api.example.com/v1/?api-key={SECRET}&api-version=2024#frag"
    assert public_url(url) == "https://***@api.example.com/v1/?***"
    assert request_url(url) == f"https://api.example.com/v1/chat/completions?api-key={SECRET}&api-version=2024"
    assert request_url("http://h:8000/v1/chat/completions/") == "http://h:8000/v1/chat/completions"
    assert public_url("http://[::1]:8000/v1") == "http://[::1]:8000/v1"
    assert public_url(f"http://u:{SECRET}@[::1/v1?k={SECRET}") == "http://***@[::1/v1?***"  # unparseable: cut by hand
    with pytest.raises(ValueError, match=r"judge.llm_url 'http://\*\*\*@\[::1/v1\?\*\*\*': not a valid URL") as info:
        LLMJudge(f"http://u:{SECRET}@[::1/v1?k={SECRET}")
    assert SECRET not in str(info.value)
    with pytest.raises(ValueError, match=r"has no host"):
        LLMJudge(f"https:///v1?key={SECRET}")


def test_a_key_in_the_query_is_sent_but_never_shown(endpoint, monkeypatch, tmp_path):  # noqa: F811
    monkeypatch.delenv("RLCF_UNSET_KEY", raising=False)
    server = endpoint(lambda n, body, headers: (200, completion("A"), {}))
    judge = LLMJudge(f"{server.url}?api-key={SECRET}", "m", "RLCF_UNSET_KEY", backoff_s=0.01)
    for shown in (repr(judge), judge.name, judge.endpoint, str(vars(judge).get("endpoint"))):
        assert SECRET not in shown and "?***" in shown
    assert judge(["p"], ["a"], ["b"]) == [0.5]
    assert [r["path"] for r in server.requests] == [f"/v1/chat/completions?api-key={SECRET}"] * 2
    # an error reply that echoes the URL is quoted without it, and so is the retried-then-failed message
    echo = endpoint(lambda n, body, headers: (400, f"unknown parameter api-key={SECRET}", {}))
    with pytest.raises(JudgeError) as info:
        LLMJudge(f"{echo.url}?api-key={SECRET}", "m", "RLCF_UNSET_KEY")(["p"], ["a"], ["b"])
    assert SECRET not in str(info.value) and "HTTP 400" in str(info.value)
    flaky = endpoint(lambda n, body, headers: (503, f"busy {SECRET}", {}))
    with pytest.raises(JudgeError, match="request failed 2 times") as info:
        LLMJudge(f"{flaky.url}?api-key={SECRET}", "m", "RLCF_UNSET_KEY", retries=1, backoff_s=0.01)(["p"], ["a"], ["b"])
    assert SECRET not in str(info.value)


def test_user_and_password_in_the_url_go_as_basic_auth_and_are_never_shown(endpoint, monkeypatch):  # noqa: F811
    import base64

    monkeypatch.delenv("RLCF_UNSET_KEY", raising=False)
    server = endpoint(lambda n, body, headers: (200, completion("B"), {}))
    url = server.url.replace("http://", f"http://alice:{SECRET}@")
    judge = LLMJudge(url, "m", "RLCF_UNSET_KEY")
    assert SECRET not in repr(judge) and "alice" not in repr(judge) and "***@127.0.0.1" in judge.name
    assert judge(["p"], ["a"], ["b"]) == [0.5]
    request = server.requests[0]
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["Authorization"] == "Basic " + base64.b64encode(f"alice:{SECRET}".encode()).decode()
    assert SECRET not in request["headers"].get("Host", "")


def test_eval_report_shows_the_judge_url_without_its_credentials(endpoint, monkeypatch, tmp_path, capsys,  # noqa: F811
                                                                 tiny_model_dir, prompts_file):
    from rlcf.config import EvalConfig, JudgeConfig, RolloutConfig
    from rlcf.evaluate import run_eval

    monkeypatch.delenv("RLCF_UNSET_KEY", raising=False)
    server = endpoint(lambda n, body, headers: (200, completion("A"), {}))
    url = server.url.replace("http://", f"http://bob:{SECRET}@") + f"?api-key={SECRET}"
    cfg = EvalConfig(model=tiny_model_dir, reference=tiny_model_dir, prompts=prompts_file, max_prompts=2,
                     judge=JudgeConfig(kind="llm", llm_url=url, llm_api_key_env="RLCF_UNSET_KEY"),
                     rollout=RolloutConfig(max_new_tokens=2), output=str(tmp_path / "eval.json"))
    report = run_eval(cfg).read_text()
    assert SECRET not in report and "bob" not in report and SECRET not in capsys.readouterr().out
    data = json.loads(report)
    assert data["config"]["judge"]["llm_url"] == public_url(url) and data["win_rate"]["judge"].endswith("/v1?***")
    assert {r["path"] for r in server.requests} == {f"/v1/chat/completions?api-key={SECRET}"}
