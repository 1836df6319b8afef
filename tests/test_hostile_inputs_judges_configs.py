"""Hostile config files and hostile judge endpoints.

Config files (`rlcf <command> --config FILE`): a table of cases run through `rlcf.cli.main` in-process; each must end
with a non-zero exit, one short line naming the file and what to do, no traceback, and nothing written. Then the
files that must keep working (empty, comments only, a byte-order mark).

The LLM judge: local servers on 127.0.0.1 started here, each bounded in time, that redirect (the key must never
reach the other server), trickle a reply a byte at a time, send more than the judge reads, drop the connection or
send garbage.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import tracemalloc
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from rlcf.cli import main, parse
from rlcf.config import TrainConfig
from rlcf.rewards.judges import MAX_REPLY_BYTES, JudgeError, LLMJudge, origin
from rlcf.yaml_safe import MAX_YAML_BYTES, YAMLFileError, load_yaml_file

KEY = "sk-hostile-5e1d7c3b9a2f4e60"

# ---------------------------------------------------------------------------------------------------------------
# config files

BOMB = ('a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]\n'
        "b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n"
        "d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]\ne: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]\n"
        "f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]\ng: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]\n"
        "h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]\ni: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]\n")  # 9**9 strings if expanded

FILES: dict[str, bytes | str] = {
    "latin1.yaml": b"steps: 3\n# r\xe9sum\xe9 of the run\n",
    "utf16.yaml": "steps: 3\n".encode("utf-16"),
    "binary.yaml": b"\x7fELF\x02\x01\x01\x00\x00\x00steps",
    "dup-top.yaml": "steps: 3\nseed: 1\nsteps: 4\n",
    "dup-nested.yaml": "steps: 3\np3o:\n  beta: 0.1\n  beta: 0.2\n",
    "bomb.yaml": BOMB,
    "merge.yaml": "base: &base {beta: 0.1}\np3o:\n  <<: *base\n",
    "apply.yaml": 'steps: !!python/object/apply:os.system ["touch {tmp}/pwned"]\n',
    "name.yaml": "reward:\n  function: !!python/name:os.system\n",
    "module.yaml": "seed: !!python/module:os\n",
    "local-tag.yaml": "steps: !include other.yaml\n",
    "deep.yaml": "steps: " + "[" * 10000 + "]" * 10000 + "\n",
    "bad-date.yaml": "seed: 2024-13-45\n",
    "long-int.yaml": "steps: " + "9" * 5000 + "\n",
    "bad-float.yaml": "seed: !!float not-a-number\n",
    "long-value.yaml": "output_dir: " + json.dumps(["x" * 50] * 5000) + "\n",
    "long-string.yaml": "steps: '" + "nine " * 20000 + "'\n",
    "unclosed.yaml": "steps: [" + "1, " * 50000 + "\n",
    "tab.yaml": "p3o:\n\tbeta: 0.1\n",
    "unhashable.yaml": "? [a, b]\n: 1\n",
    "top-scalar.yaml": "false\n",
    "demo.yaml": "steps: 3\n",
}

OUT = ["--output-dir", "{out}"]
# id -> (args after `train`, fragments the one line must contain)
CASES = {
    "folder": (["--config", "{tmp}/adir"], ["adir", "is a folder, not a YAML file"]),
    "folder-named-yaml": (["--config", "{tmp}/x.yaml"], ["x.yaml", "is a folder, not a YAML file"]),
    "symlink-to-dev-zero": (["--config", "{tmp}/zero.yaml"], ["zero.yaml", "a device, not a regular file"]),
    "named-pipe": (["--config", "{tmp}/fifo.yaml"], ["fifo.yaml", "a pipe, not a regular file"]),
    "50-mb-file": (["--config", "{tmp}/big.yaml"], ["big.yaml", "50.0 MiB", "at most 1 MiB"]),
    "latin-1-byte": (["--config", "{tmp}/latin1.yaml"],
                     ["latin1.yaml", "not UTF-8", "byte 0xE9 at offset 12 (line 2)", "save it as UTF-8"]),
    "utf-16": (["--config", "{tmp}/utf16.yaml"], ["utf16.yaml", "UTF-16", "save it as UTF-8"]),
    "binary": (["--config", "{tmp}/binary.yaml"], ["binary.yaml", "NUL byte at offset 7", "binary file"]),
    "duplicate-key": (["--config", "{tmp}/dup-top.yaml"], ["dup-top.yaml", "'steps' appears twice", "line 1 and line 3"]),
    "duplicate-nested-key": (["--config", "{tmp}/dup-nested.yaml"],
                             ["dup-nested.yaml", "'beta' appears twice", "line 3 and line 4"]),
    "alias-bomb": (["--config", "{tmp}/bomb.yaml"], ["bomb.yaml", "line 1", "aliases (*name) are not allowed"]),
    "merge-alias": (["--config", "{tmp}/merge.yaml"], ["merge.yaml", "anchor &base", "not allowed"]),
    "python-object-apply": (["--config", "{tmp}/apply.yaml"],
                            ["apply.yaml", "line 1", "'!!python/object/apply:os.system' is not allowed", "plain values"]),
    "python-name": (["--config", "{tmp}/name.yaml"], ["name.yaml", "line 2", "!!python/name:os.system", "not allowed"]),
    "python-module": (["--config", "{tmp}/module.yaml"], ["module.yaml", "!!python/module:os", "not allowed"]),
    "local-tag": (["--config", "{tmp}/local-tag.yaml"], ["local-tag.yaml", "'!include' is not allowed"]),
    "deep-nesting": (["--config", "{tmp}/deep.yaml"], ["deep.yaml", "line 1", "nested deeper than 50 levels"]),
    "month-13": (["--config", "{tmp}/bad-date.yaml"], ["bad-date.yaml", "'2024-13-45'", "month must be in 1..12"]),
    "5000-digit-number": (["--config", "{tmp}/long-int.yaml"], ["long-int.yaml", "as int", "Exceeds the limit"]),
    "float-tag-on-text": (["--config", "{tmp}/bad-float.yaml"], ["bad-float.yaml", "'not-a-number' as float"]),
    "long-list-value": (["--config", "{tmp}/long-value.yaml"], ["long-value.yaml", "output_dir", "characters cut"]),
    "long-string-value": (["--config", "{tmp}/long-string.yaml"], ["long-string.yaml", "steps", "characters cut"]),
    "unclosed-bracket": (["--config", "{tmp}/unclosed.yaml"], ["unclosed.yaml", "not valid YAML", "line 2"]),
    "tab-indent": (["--config", "{tmp}/tab.yaml"], ["tab.yaml", "not valid YAML", "line 2", "'\\t'"]),
    "unhashable-key": (["--config", "{tmp}/unhashable.yaml"], ["unhashable.yaml", "unhashable key"]),
    "top-level-scalar": (["--config", "{tmp}/top-scalar.yaml"], ["top-scalar.yaml", "expected a mapping, got bool"]),
    "missing-near-miss": (["--config", "{tmp}/dmo.yaml"], ["dmo.yaml", "does not exist", "did you mean", "demo.yaml"]),
    "config-equals-empty": (["--config="], ["--config= is empty"]),
    "config-then-a-flag": (["--config", "--steps", "3"], ["--config needs a YAML file path", "--steps"]),
    "config-twice": (["--config", "{tmp}/demo.yaml", "--config={tmp}/demo.yaml"], ["--config is given 2 times"]),
}


@pytest.fixture(scope="module")
def configs(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile-configs")
    for name, content in FILES.items():
        if isinstance(content, str):
            (tmp / name).write_text(content.replace("{tmp}", str(tmp)), encoding="utf-8")
        else:
            (tmp / name).write_bytes(content)
    (tmp / "adir").mkdir()
    (tmp / "x.yaml").mkdir()
    (tmp / "zero.yaml").symlink_to("/dev/zero")
    os.mkfifo(tmp / "fifo.yaml")
    with open(tmp / "big.yaml", "wb") as f:  # sparse: 50 MiB of size, no disk used
        f.truncate(50 << 20)
    return tmp


def _snapshot(folder: Path) -> dict:
    return {p.name: (p.lstat().st_size, p.lstat().st_mtime_ns) for p in sorted(folder.iterdir())}


def run_main(argv, capsys):
    try:
        rc = main(argv)
    except SystemExit as e:  # config errors exit from parsing
        rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
        if isinstance(e.code, str):
            print(e.code, file=sys.stderr)
    captured = capsys.readouterr()
    return rc, captured.out + captured.err


def test_case_table_is_large_enough():
    assert len(CASES) >= 14


@pytest.mark.parametrize("case", list(CASES))
def test_hostile_config_is_one_short_line(case, configs, capsys, tmp_path):
    args, expected = CASES[case]
    argv = ["train"] + [a.format(tmp=configs, out=tmp_path / "out") for a in args + OUT]
    before = _snapshot(configs)
    start = time.perf_counter()
    rc, out = run_main(argv, capsys)
    assert time.perf_counter() - start < 5, case
    assert rc not in (0, None), f"{case}: exit {rc}\n{out}"
    assert "Traceback" not in out
    lines = [line for line in out.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("rlcf"), out[:2000]
    for part in expected:
        assert part in lines[0], f"{case}: {part!r} not in {lines[0]!r}"
    assert len(lines[0]) <= 700, f"{case}: {len(lines[0])} characters"
    assert not (tmp_path / "out").exists()
    assert _snapshot(configs) == before
    assert not (configs / "pwned").exists()  # the !!python/object/apply tag ran nothing


def test_alias_bomb_is_refused_fast_and_small(configs):
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(YAMLFileError, match="aliases"):
            load_yaml_file(str(configs / "bomb.yaml"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 1.0
    assert peak < 5 << 20, peak
    assert len(BOMB.encode()) < 400  # small file, 9**9 = 387 million strings if it were expanded


def test_the_size_cap_is_checked_before_reading(tmp_path):
    path = tmp_path / "edge.yaml"
    path.write_text("# " + "x" * (MAX_YAML_BYTES - 3) + "\n")  # exactly the cap: still read (a comment only)
    assert path.stat().st_size == MAX_YAML_BYTES and load_yaml_file(str(path)) is None
    path.write_text("# " + "x" * (MAX_YAML_BYTES - 2) + "\n")
    with pytest.raises(YAMLFileError, match="config files are at most 1 MiB"):
        load_yaml_file(str(path))


@pytest.mark.parametrize("text", ["", "\n\n", "# nothing here\n   # indented comment\n", "---\n", "---\n...\n"])
def test_empty_and_comment_only_configs_keep_the_defaults(text, tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text(text)
    assert parse("train", ["--config", str(path)]) == TrainConfig()


def test_plain_configs_still_load_with_a_bom_and_utf8_text(tmp_path):
    path = tmp_path / "ok.yaml"
    path.write_bytes("\ufeff# résumé\nsteps: 7\np3o:\n  beta: 0.2\nrollout: {temperature: 0.7}\n".encode())
    cfg = parse("train", ["--config", str(path), "--seed", "3"])
    assert (cfg.steps, cfg.p3o.beta, cfg.rollout.temperature, cfg.seed) == (7, 0.2, 0.7, 3)
    assert parse("train", [f"--config={path}"]).steps == 7
    # the same key in two different mappings is no duplicate
    path.write_text("p3o:\n  beta: 0.2\nppo:\n  beta: 0.3\n")
    cfg = parse("train", ["--config", str(path)])
    assert (cfg.p3o.beta, cfg.ppo.beta) == (0.2, 0.3)


# ---------------------------------------------------------------------------------------------------------------
# the LLM judge against hostile endpoints

def completion(content: str) -> str:
    return json.dumps({"choices": [{"index": 0, "message": {"role": "assistant", "content": content}}]})


class Server:
    """An HTTP server on 127.0.0.1 in a thread; `respond(handler)` answers a POST. Records every request."""

    def __init__(self, respond):
        self.requests: list[dict] = []
        self.stop = threading.Event()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def _record(self):
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                server.requests.append({"method": self.command, "path": self.path, "headers": dict(self.headers),
                                        "body": body})

            def do_POST(self):
                self._record()
                try:
                    respond(self)
                except (BrokenPipeError, ConnectionResetError):
                    pass  # the judge gave up and went away

            def do_GET(self):
                self._record()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.end_headers()
                self.wfile.write(completion("A").encode())

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.httpd.stop_event = self.stop
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.thread.start()
        self.port = self.httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}/v1"

    def close(self):
        self.stop.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture()
def serve():
    servers = []

    def start(respond):
        servers.append(Server(respond))
        return servers[-1]

    yield start
    for s in servers:
        s.close()


@pytest.fixture()
def api_key(monkeypatch):
    monkeypatch.setenv("RLCF_HOSTILE_JUDGE_KEY", KEY)
    return "RLCF_HOSTILE_JUDGE_KEY"


def judge_for(server, **kw) -> LLMJudge:
    """A judge for `server`; tests call its .verdict() (one request per attempt) to count requests exactly."""
    kw = {"backoff_s": 0.01, "max_workers": 1, "retries": 0, "timeout_s": 5.0} | kw
    return LLMJudge(server.url, "m", "RLCF_HOSTILE_JUDGE_KEY", **kw)


def _redirect_to(location: str, code: int = 302):
    def respond(h):
        h.send_response(code)
        h.send_header("Location", location)
        h.send_header("Content-Length", "0")
        h.end_headers()
    return respond


@pytest.mark.parametrize("code", [301, 302, 303, 307, 308])
def test_a_redirect_to_another_origin_never_carries_the_key(serve, api_key, code, caplog):
    other = serve(lambda h: None)
    first = serve(_redirect_to(f"http://127.0.0.1:{other.port}/v1/chat/completions?token=abc123xyz", code))
    with pytest.raises(JudgeError) as info:
        judge_for(first, retries=2).verdict("p", "a", "b")
    message = str(info.value)
    assert sum("Authorization" in r["headers"] for r in other.requests) == 0
    assert other.requests == []  # not followed at all
    assert len(first.requests) == 1 and first.requests[0]["headers"]["Authorization"] == f"Bearer {KEY}"
    assert f"http://127.0.0.1:{first.port}/v1/chat/completions" in message
    assert f"HTTP {code}" in message and f"a redirect to http://127.0.0.1:{other.port} (another origin)" in message
    assert "--judge.llm-url" in message and "final address" in message
    assert "\n" not in message and KEY not in message and "abc123xyz" not in message and KEY not in caplog.text


def test_a_same_origin_or_relative_redirect_is_refused_too(serve, api_key):
    server = serve(_redirect_to("/v2/chat/completions", 307))
    with pytest.raises(JudgeError, match=rf"HTTP 307, a redirect to http://127.0.0.1:{server.port} \(the same origin\)"):
        judge_for(server).verdict("p", "a", "b")
    assert len(server.requests) == 1
    bare = serve(lambda h: (h.send_response(302), h.send_header("Content-Length", "0"), h.end_headers()))
    with pytest.raises(JudgeError, match="a redirect without a Location"):
        judge_for(bare).verdict("p", "a", "b")
    creds = serve(_redirect_to(f"https://user:{KEY}@example.invalid:8443/x?k={KEY}"))
    with pytest.raises(JudgeError, match=r"a redirect to https://example.invalid:8443 \(another origin\)") as info:
        judge_for(creds).verdict("p", "a", "b")
    assert KEY not in str(info.value) and "user" not in str(info.value)


def test_origin():
    assert origin("https://u:p@Example.com/x?y#z") == "https://example.com"
    assert origin("http://[::1]:8080/v1") == "http://[::1]:8080"
    assert origin("http://h:notaport/") == "(an unreadable address)"


def _trickle(h, headers_too=False):
    """A reply sent one byte every 0.2 s: the body after its headers, or the headers themselves."""
    if headers_too:
        h.wfile.write(b"HTTP/1.0 200 OK\r\nX-Slow: ")
    else:
        h.send_response(200)
        h.send_header("Content-Length", "100")
        h.end_headers()
    h.wfile.flush()
    for _ in range(100):  # at most 20 s, and it stops when the test ends
        if h.server.stop_event.wait(0.2):
            return
        h.wfile.write(b"x" if headers_too else b" ")
        h.wfile.flush()


@pytest.mark.parametrize("headers_too", [False, True], ids=["body", "headers"])
def test_a_reply_that_trickles_is_cut_off_at_the_timeout(serve, api_key, headers_too):
    server = serve(lambda h: _trickle(h, headers_too))
    start = time.perf_counter()
    with pytest.raises(JudgeError) as info:
        judge_for(server, timeout_s=1.0).verdict("p", "a", "b")
    elapsed = time.perf_counter() - start
    assert 0.9 < elapsed < 3.0, elapsed
    message = str(info.value)
    assert server.url in message and "TimeoutError" in message and "within 1 s" in message
    assert "--judge.timeout-s" in message and "\n" not in message


def test_the_timeout_bounds_each_attempt_and_retries_stay_bounded(serve, api_key):
    server = serve(_trickle)
    start = time.perf_counter()
    with pytest.raises(JudgeError, match="request failed 3 times"):
        judge_for(server, timeout_s=0.5, retries=2).verdict("p", "a", "b")
    assert time.perf_counter() - start < 4.0
    assert len(server.requests) == 3


def _send_body(size: int, declare: bool):
    def respond(h):
        h.send_response(200)
        if declare:
            h.send_header("Content-Length", str(size))
        h.end_headers()
        block = b" " * (64 << 10)
        sent = 0
        while sent < size:
            h.wfile.write(block[: size - sent])
            sent += len(block)
    return respond


@pytest.mark.parametrize("declare", [True, False], ids=["content-length", "no-length"])
def test_a_reply_over_the_cap_is_a_size_error(serve, api_key, declare):
    size = MAX_REPLY_BYTES + (1 << 20)
    server = serve(_send_body(size, declare))
    tracemalloc.start()
    try:
        with pytest.raises(JudgeError) as info:
            judge_for(server, retries=2).verdict("p", "a", "b")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    message = str(info.value)
    seen = f"{size} bytes (its Content-Length)" if declare else f"more than {MAX_REPLY_BYTES} bytes"
    assert server.url in message and seen in message and "over the 4 MiB" in message
    assert len(server.requests) == 1  # not retried: it would be as big again
    assert peak < 2 * MAX_REPLY_BYTES, peak  # one buffer of the cap, never the whole reply


def test_a_reply_just_under_the_cap_is_read_whole(serve, api_key):
    text = completion("A")
    padded = text + " " * (MAX_REPLY_BYTES - len(text))  # JSON allows trailing whitespace

    def respond(h):
        h.send_response(200)
        h.end_headers()
        h.wfile.write(padded.encode())

    assert judge_for(serve(respond)).verdict("p", "a", "b") == "A"


def test_a_dropped_connection_is_retried_then_one_line(serve, api_key):
    server = serve(lambda h: h.connection.shutdown(socket.SHUT_RDWR))
    with pytest.raises(JudgeError) as info:
        judge_for(server, retries=1).verdict("p", "a", "b")
    message = str(info.value)
    assert server.url in message and "request failed 2 times" in message and "RemoteDisconnected" in message
    assert len(server.requests) == 2 and "\n" not in message


def test_a_body_shorter_than_its_content_length_is_retried_then_one_line(serve, api_key):
    def respond(h):
        h.send_response(200)
        h.send_header("Content-Length", "1000")
        h.end_headers()
        h.wfile.write(b'{"choices": [')
        h.wfile.flush()
        h.connection.shutdown(socket.SHUT_RDWR)

    server = serve(respond)
    with pytest.raises(JudgeError, match=r"request failed 2 times, last: IncompleteRead.*13 bytes read, 987 more"):
        judge_for(server, retries=1).verdict("p", "a", "b")


@pytest.mark.parametrize("body", [b"{not json", b"\xff\xfe\x00garbage\x80", b'{"choices": "A"}', b"null"])
def test_garbage_json_is_one_line_naming_the_url(serve, api_key, body):
    def respond(h):
        h.send_response(200)
        h.send_header("Content-Length", str(len(body)))
        h.end_headers()
        h.wfile.write(body)

    server = serve(respond)
    with pytest.raises(JudgeError) as info:
        judge_for(server).verdict("p", "a", "b")
    message = str(info.value)
    assert server.url in message and "not a chat completion" in message and "\n" not in message
    assert len(server.requests) == 1


def test_an_error_reply_is_read_only_in_part(serve, api_key):
    def respond(h):
        h.send_response(400)
        h.end_headers()
        h.wfile.write(b"bad request " + b"x" * (8 << 20))

    with pytest.raises(JudgeError, match=r"HTTP 400.*'bad request xxx.*\.\.\.") as info:
        judge_for(serve(respond)).verdict("p", "a", "b")
    assert len(str(info.value)) < 600
