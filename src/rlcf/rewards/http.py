"""HTTP for rlcf's servers (the LLM judge, a remote reward server): one request that follows no redirect (credentials
go to the configured origin only), finishes by a deadline however slowly the reply trickles in, and reads at most a
fixed number of bytes; and URLs as they may be shown (credentials masked)."""

from __future__ import annotations

import functools
import http.client
import io
import time
import urllib.parse
import urllib.request

MAX_REPLY_BYTES = 4 << 20
"""The most of a reply the LLM judge reads: a verdict is a few hundred bytes, so more is the wrong endpoint."""
ERROR_BODY_BYTES = 64 << 10
"""The most of an HTTP error's body read (only its start is quoted)."""
_CHUNK = 64 << 10


def redact(text: str, secrets) -> str:
    """`text` with every secret (a string, or an iterable of them; empty ones skipped) replaced by '***'."""
    if isinstance(secrets, str) or secrets is None:
        secrets = [secrets]
    for secret in sorted((s for s in secrets if s), key=len, reverse=True):  # longest first: a part never leaks
        text = text.replace(secret, "***")
    return text


def public_url(url: str) -> str:
    """The URL as it may be shown (reports, logs, errors): a user:password@ becomes ***@ and a query string ?***
    (either may carry a credential, e.g. ?api-key=...); the fragment is dropped."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:  # unparseable (e.g. an unclosed IPv6 bracket): cut by hand
        scheme, sep, rest = url.partition("://")
        rest, query, _ = rest.split("#")[0].partition("?")
        authority, slash, path = rest.partition("/")
        authority = "***@" + authority.rpartition("@")[2] if "@" in authority else authority
        return f"{scheme}{sep}{authority}{slash}{path}" + ("?***" if query else "")
    _, at, host = parts.netloc.rpartition("@")
    netloc = f"***@{host}" if at else host
    return urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "***" if parts.query else "", ""))


def request_url(url: str) -> str:
    """The chat-completions URL for a base URL: path + '/chat/completions' (unless it ends so already), the query
    string kept, user:password@ and the fragment dropped (the credentials go in a header)."""
    parts = urllib.parse.urlsplit(url)
    path = parts.path.rstrip("/")
    if not path.endswith("/chat/completions"):
        path += "/chat/completions"
    host = parts.netloc.rpartition("@")[2]
    return urllib.parse.urlunsplit((parts.scheme, host, path, parts.query, ""))


def url_secrets(url: str) -> list[str]:
    """The parts of a URL that may be credentials: the user, the password, the query string and its values."""
    parts = urllib.parse.urlsplit(url)
    userinfo = parts.netloc.rpartition("@")[0]
    user, _, password = userinfo.partition(":")
    found = [userinfo, user, password, urllib.parse.unquote(user), urllib.parse.unquote(password)]
    if parts.query:
        found.append(parts.query)
        for key, value in urllib.parse.parse_qsl(parts.query, keep_blank_values=True):
            found += [value, urllib.parse.quote(value, safe=""), urllib.parse.quote_plus(value)]
            if not value:  # ?TOKEN with no '=': the name is the secret
                found.append(key)
    return [s for s in found if len(s) >= 3]  # shorter ones would mangle every message and hide nothing


class _DeadlineSocket:
    """A connected socket (plain or TLS) whose every send and read gets only the time left until `deadline`
    (time.monotonic()), so a reply that trickles in a byte at a time still ends by the deadline with a TimeoutError.
    http.client reads through makefile('rb'); the socket is closed once it and every file made from it are."""

    def __init__(self, sock, deadline: float, timeout_s: float):
        self._sock, self._deadline, self._timeout_s = sock, deadline, timeout_s
        self._files, self._closed = 0, False

    def _arm(self) -> None:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"no complete reply within {self._timeout_s:g} s")
        self._sock.settimeout(left)

    def sendall(self, data, *args):
        self._arm()
        try:
            return self._sock.sendall(data, *args)  # the timeout bounds the whole sendall (Python >= 3.5)
        except TimeoutError:
            raise TimeoutError(f"the request was not sent within {self._timeout_s:g} s") from None

    def recv_into(self, buffer, *args):
        self._arm()
        try:
            return self._sock.recv_into(buffer, *args)
        except TimeoutError:
            raise TimeoutError(f"no complete reply within {self._timeout_s:g} s") from None

    def makefile(self, mode="rb", *args, **kwargs):
        if mode != "rb":
            raise ValueError(f"_DeadlineSocket.makefile: only 'rb' is supported, not {mode!r}")
        self._files += 1
        return io.BufferedReader(_DeadlineReader(self))

    def _file_closed(self) -> None:
        self._files -= 1
        if self._closed and self._files <= 0:
            self._sock.close()

    def close(self) -> None:
        self._closed = True
        if self._files <= 0:
            self._sock.close()

    def __getattr__(self, name):  # setsockopt, fileno, getpeercert, ...
        return getattr(self._sock, name)


class _DeadlineReader(io.RawIOBase):
    def __init__(self, sock: _DeadlineSocket):
        super().__init__()
        self._owner = sock

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        return self._owner.recv_into(buffer)

    def close(self) -> None:
        if not self.closed:
            super().close()
            self._owner._file_closed()


def _deadline_connection(base):
    class Connection(base):
        def __init__(self, *args, deadline: float, timeout_s: float, **kwargs):
            super().__init__(*args, **kwargs)
            self._rlcf_deadline, self._rlcf_timeout_s = deadline, timeout_s

        def connect(self):
            super().connect()  # TCP (and TLS) with the socket timeout urllib passes: the time left at the start
            self.sock = _DeadlineSocket(self.sock, self._rlcf_deadline, self._rlcf_timeout_s)

    Connection.__name__ = f"Deadline{base.__name__}"
    return Connection


_DeadlineHTTPConnection = _deadline_connection(http.client.HTTPConnection)
_DeadlineHTTPSConnection = _deadline_connection(http.client.HTTPSConnection)


class _DeadlineHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: float, timeout_s: float):
        super().__init__()
        self._times = {"deadline": deadline, "timeout_s": timeout_s}

    def http_open(self, req):
        return self.do_open(functools.partial(_DeadlineHTTPConnection, **self._times), req)


class _DeadlineHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: float, timeout_s: float):
        super().__init__()
        self._times = {"deadline": deadline, "timeout_s": timeout_s}

    def https_open(self, req):  # no context: http.client's default one (certificates and host name checked)
        return self.do_open(functools.partial(_DeadlineHTTPSConnection, **self._times), req)


class _RefuseRedirects(urllib.request.HTTPRedirectHandler):
    """Follows no redirect: the 3xx reaches the caller as an HTTPError (urllib would repeat the request, with its
    Authorization header, at whatever address the Location names)."""

    def http_error_302(self, req, fp, code, msg, headers):
        return None

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def deadline_opener(timeout_s: float) -> urllib.request.OpenerDirector:
    """An opener for one request that follows no redirect and must finish within `timeout_s` from now (the proxy
    settings of the environment apply, as with urllib.request.urlopen)."""
    deadline = time.monotonic() + timeout_s
    return urllib.request.build_opener(_RefuseRedirects, _DeadlineHTTPHandler(deadline, timeout_s),
                                       _DeadlineHTTPSHandler(deadline, timeout_s))


def origin(url: str) -> str:
    """scheme://host[:port] of a URL, without user:password@, path or query; '(unreadable)' if it does not parse."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return "(an unreadable address)"
    host = parts.hostname or ""
    host = f"[{host}]" if ":" in host else host
    return f"{parts.scheme}://{host}" + (f":{port}" if port is not None else "")


def read_capped(response, limit: int) -> tuple[bytearray, bool]:
    """At most `limit` bytes of a response body, read in chunks into one buffer; (body, True) if there was more."""
    body = bytearray()
    while len(body) <= limit:
        chunk = response.read(min(_CHUNK, limit + 1 - len(body)))
        if not chunk:
            break
        body += chunk
    more = len(body) > limit
    if more:
        del body[limit:]
    return body, more
