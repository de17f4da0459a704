"""Malformed and mutated JSON-RPC against a live kernelbox: /mcp (fresh, in a legacy session,
and stateless 2026-07-28) and a guest server's proxy. Any 5xx, a dropped connection, a request
that never ends, or a panic in the server's log fails the run.

Usage: jsonrpc_fuzz.py BASE_URL SERVER_LOG [--cases N] [--seed S]
Standard library only; deterministic for a seed.
"""

import argparse
import http.client
import json
import random
import socket
import sys
import time
import urllib.parse

ECHO_SERVER = r'''
import json, sys
def send(message):
    sys.stdout.write(json.dumps(message) + "\n"); sys.stdout.flush()
for line in sys.stdin:
    try:
        message = json.loads(line)
    except ValueError:
        continue
    if not isinstance(message, dict) or "id" not in message or "method" not in message:
        continue
    method, ident = message["method"], message["id"]
    if method == "initialize":
        send({"jsonrpc": "2.0", "id": ident, "result": {
            "protocolVersion": "2025-06-18", "capabilities": {"tools": {}},
            "serverInfo": {"name": "echo", "version": "1"}}})
    elif method == "tools/list":
        send({"jsonrpc": "2.0", "id": ident, "result": {"tools": [{
            "name": "echo", "description": "echoes", "inputSchema": {"type": "object"}}]}})
    elif method == "tools/call":
        params = message.get("params") if isinstance(message.get("params"), dict) else {}
        send({"jsonrpc": "2.0", "id": ident, "result": {"content": [
            {"type": "text", "text": json.dumps(params)[:1000]}]}})
    elif method == "ping":
        send({"jsonrpc": "2.0", "id": ident, "result": {}})
    else:
        send({"jsonrpc": "2.0", "id": ident, "error": {"code": -32601, "message": "unknown"}})
'''

METHODS = [
    "initialize", "notifications/initialized", "tools/list", "tools/call", "resources/list",
    "resources/read", "resources/templates/list", "prompts/list", "ping", "logging/setLevel",
    "notifications/cancelled", "completion/complete", "nope/unknown", "", "rpc.discover",
]
PROTOCOLS = ["2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25", "2026-07-28", "1999-01-01"]


class Failure(Exception):
    pass


class Target:
    """One HTTP endpoint: host, port, path and the headers every request carries."""

    def __init__(self, base, path, headers=None):
        parsed = urllib.parse.urlsplit(base)
        self.host, self.port = parsed.hostname, parsed.port
        self.path = path
        self.headers = dict(headers or {})

    def post(self, body, extra=None, timeout=90.0):
        """Sends one POST as a careful client does: a large body waits for `100 Continue`, so an
        early refusal is read, not lost to a reset. Returns status, headers and body."""
        headers = {
            "host": f"{self.host}:{self.port}",
            "content-type": "application/json",
            "accept": "application/json, text/event-stream",
            **self.headers,
            **(extra or {}),
            "content-length": str(len(body)),
            "connection": "close",
        }
        expect = len(body) > 64 * 1024
        if expect:
            headers["expect"] = "100-continue"
        head = f"POST {self.path} HTTP/1.1\r\n" + "".join(
            f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
        sock = socket.create_connection((self.host, self.port), timeout=timeout)
        try:
            sock.sendall(head.encode("latin-1", "replace"))
            send_body = True
            if expect:
                sock.settimeout(5)
                try:
                    early = sock.recv(65536, socket.MSG_PEEK)
                except socket.timeout:
                    early = b""
                sock.settimeout(timeout)
                if early.startswith(b"HTTP/1.1 100"):
                    end = early.find(b"\r\n\r\n")
                    sock.recv(end + 4)
                elif early:
                    send_body = False
            if send_body:
                sock.sendall(body)
            response = http.client.HTTPResponse(sock)
            response.begin()
            data = response.read()
            return response.status, response.headers, data
        except (ConnectionError, http.client.HTTPException) as error:
            raise Failure(f"connection dropped: {error!r}") from error
        except socket.timeout as error:
            raise Failure(f"no answer within {timeout} s") from error
        finally:
            sock.close()


def rest(base, method, path, body=None):
    parsed = urllib.parse.urlsplit(base)
    connection = http.client.HTTPConnection(parsed.hostname, parsed.port, timeout=120)
    headers = {"content-type": "application/json"} if body is not None else {}
    connection.request(method, path, body=json.dumps(body) if body is not None else None, headers=headers)
    response = connection.getresponse()
    data = response.read()
    connection.close()
    if response.status >= 300:
        raise SystemExit(f"setup: {method} {path} answered {response.status}: {data[:500]!r}")
    return json.loads(data) if data else None


def initialize_message(rng, protocol="2025-06-18"):
    return {"jsonrpc": "2.0", "id": rng.randint(1, 10**6), "method": "initialize",
            "params": {"protocolVersion": protocol, "capabilities": {},
                       "clientInfo": {"name": "fuzz", "version": "1"}}}


def random_scalar(rng):
    return rng.choice([
        None, True, False, 0, -1, 2**63, -(2**63) - 1, 10**400, 1.5, float("1e308"),
        "", "x", "\u0000", "\ud800", "🦀" * 50, "a" * rng.randint(0, 5000),
    ])


def random_value(rng, depth=0):
    if depth > 3 or rng.random() < 0.4:
        return random_scalar(rng)
    if rng.random() < 0.5:
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    return {rng.choice(["name", "arguments", "code", "path", "uri", "session_id", "_meta",
                        "protocolVersion", "cursor", "x" * 30, ""]): random_value(rng, depth + 1)
            for _ in range(rng.randint(0, 5))}


def valid_message(rng):
    method = rng.choice(METHODS)
    message = {"jsonrpc": "2.0", "method": method}
    if not method.startswith("notifications/"):
        message["id"] = rng.choice([1, rng.randint(-10**9, 10**9), "id-" + str(rng.random())])
    if method == "initialize":
        message["params"] = {"protocolVersion": rng.choice(PROTOCOLS), "capabilities": {},
                             "clientInfo": {"name": "fuzz", "version": "1"}}
    elif method == "tools/call":
        name = rng.choice(["execute_code", "list_files", "read_file", "echo", "run_command", "nope"])
        arguments = {"code": rng.choice(["1+1", "print('x')", "", "1/0"]), "path": "a.txt",
                     "command": "true", "timeout_secs": rng.choice([1, 0, -5, 10**9, "x"])}
        message["params"] = {"name": name, "arguments": arguments}
    elif rng.random() < 0.5:
        message["params"] = random_value(rng)
    return message


def mutate(rng, message):
    """One mutation of a message, as the bytes to send."""
    kind = rng.randrange(16)
    message = json.loads(json.dumps(message))
    if kind == 0:  # wrong types in the envelope
        field = rng.choice(["jsonrpc", "id", "method", "params"])
        message[field] = random_value(rng)
    elif kind == 1:  # huge ids
        message["id"] = rng.choice([10**100, -(10**100), 1e308, "i" * 100_000, [1], {"a": 1}])
    elif kind == 2:  # deep nesting
        depth = rng.choice([64, 512, 5000, 100_000])
        return ("[" * depth + "]" * depth).encode() if rng.random() < 0.5 else (
            '{"jsonrpc":"2.0","id":1,"method":"ping","params":' + '{"a":' * depth + "1" + "}" * depth + "}"
        ).encode()
    elif kind == 3:  # invalid UTF-8
        raw = json.dumps(message).encode()
        cut = rng.randrange(len(raw) + 1)
        return raw[:cut] + rng.choice([b"\xff", b"\xc3", b"\xed\xa0\x80", b"\x80\x80"]) + raw[cut:]
    elif kind == 4:  # batches, small to large
        size = rng.choice([0, 1, 2, 10, 200, 2000])
        return json.dumps([valid_message(rng) for _ in range(size)]).encode()
    elif kind == 5:  # unknown methods
        message["method"] = rng.choice(["x" * 10_000, "tools/" + "a" * 300, "\u0000", "rpc.x"])
    elif kind == 6:  # 10 MB strings (over the body limit) and 1 MB ones (under it)
        size = rng.choice([10 * 1024 * 1024, 1024 * 1024])
        message.setdefault("params", {})
        if isinstance(message["params"], dict):
            message["params"]["blob"] = "z" * size
        else:
            message["params"] = {"blob": "z" * size}
    elif kind == 7:  # truncated JSON
        raw = json.dumps(message).encode()
        return raw[: rng.randrange(len(raw))]
    elif kind == 8:  # not JSON at all
        return rng.choice([b"", b"null", b"true", b"42", b'"s"', b"\x00" * 100, b"{{{{", b"[,]"])
    elif kind == 9:  # responses and errors sent to the server
        return json.dumps(rng.choice([
            {"jsonrpc": "2.0", "id": 1, "result": random_value(rng)},
            {"jsonrpc": "2.0", "id": 1, "error": {"code": "x", "message": random_value(rng)}},
            {"jsonrpc": "2.0", "id": None, "error": {"code": -32600, "message": "m"}},
        ])).encode()
    elif kind == 10:  # duplicate keys and odd numbers
        return b'{"jsonrpc":"2.0","jsonrpc":"1.0","id":1,"id":NaN,"method":"ping"}'
    elif kind == 11:  # random params
        message["params"] = random_value(rng)
    elif kind == 12:  # drop a required field
        message.pop(rng.choice(["jsonrpc", "method", "id"]), None)
    elif kind == 13:  # meta with odd progress tokens
        message.setdefault("params", {})
        if isinstance(message["params"], dict):
            message["params"]["_meta"] = {"progressToken": random_value(rng)}
    elif kind == 14:  # a batch of mutations
        return json.dumps([json.loads(json.dumps(valid_message(rng))) for _ in range(3)] + [random_value(rng)]).encode()
    return json.dumps(message).encode()


def odd_headers(rng, session=None):
    headers = {}
    if session is not None:
        headers["mcp-session-id"] = session
    choice = rng.randrange(8)
    if choice == 0:
        headers["mcp-session-id"] = rng.choice(["", "x" * 5000, "not-a-session", "\t"])
    elif choice == 1:
        headers["mcp-protocol-version"] = rng.choice(PROTOCOLS + ["", "garbage"])
    elif choice == 2:
        headers["accept"] = rng.choice(["text/event-stream", "application/json", "*/*", "text/html"])
    elif choice == 3:
        headers["content-type"] = rng.choice(["application/json; charset=latin1", "application/json;;"])
    return headers


def check(status, headers, data, what):
    if status >= 500:
        raise Failure(f"{what}: HTTP {status}: {data[:300]!r}")


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("base")
    parser.add_argument("server_log")
    parser.add_argument("--cases", type=int, default=5000)
    parser.add_argument("--seed", type=int, default=20261202)
    args = parser.parse_args()
    rng = random.Random(args.seed)

    # A sandbox running our echo guest server, for the proxy.
    sandbox = rest(args.base, "POST", "/containers", {"tag": "jsonrpc-fuzz"})["id"]
    written = rest(args.base, "POST", f"/containers/{sandbox}/execute",
                   {"code": f"open('/workspace/echo_mcp.py', 'w').write({ECHO_SERVER!r})"})
    if written.get("error"):
        raise SystemExit(f"setup: writing the echo server failed: {written}")
    rest(args.base, "PUT", f"/containers/{sandbox}/mcp/echo",
         {"server_params": {"command": "python3", "args": ["/workspace/echo_mcp.py"]}})

    mcp = Target(args.base, "/mcp")
    proxy = Target(args.base, f"/containers/{sandbox}/mcp-proxy/echo")

    def open_session(target):
        status, headers, data = target.post(json.dumps(initialize_message(rng)).encode())
        check(status, headers, data, "initialize")
        session = headers.get("mcp-session-id")
        if session:
            target.post(json.dumps({"jsonrpc": "2.0", "method": "notifications/initialized"}).encode(),
                        {"mcp-session-id": session, "mcp-protocol-version": "2025-06-18"})
        return session

    sessions = {"mcp": open_session(mcp), "proxy": open_session(proxy)}
    if not sessions["proxy"]:
        raise SystemExit("setup: the proxy gave no session id")
    counts, statuses, started = {"mcp": 0, "proxy": 0}, {}, time.monotonic()
    opened = {"mcp": set(), "proxy": set()}
    for case in range(args.cases):
        name = "mcp" if case % 2 == 0 else "proxy"
        target = mcp if name == "mcp" else proxy
        message = valid_message(rng)
        body = mutate(rng, message) if rng.random() < 0.85 else json.dumps(message).encode()
        use_session = rng.random() < 0.6
        headers = odd_headers(rng, sessions[name] if use_session else None)
        if use_session and "mcp-protocol-version" not in headers:
            headers["mcp-protocol-version"] = "2025-06-18"
        what = f"case {case} ({name}, {len(body)} bytes: {body[:120]!r})"
        try:
            status, response_headers, data = target.post(body, headers)
        except Failure as failure:
            raise SystemExit(f"FAIL {what}: {failure}")
        check(status, response_headers, data, what)
        if response_headers.get("mcp-session-id"):
            opened[name].add(response_headers["mcp-session-id"])
        statuses[status] = statuses.get(status, 0) + 1
        counts[name] += 1
        # A session the fuzz closed or broke is opened again.
        if status == 404 and use_session and headers.get("mcp-session-id") == sessions[name]:
            sessions[name] = open_session(target) or sessions[name]
        if case % 500 == 499:
            print(f"{case + 1} cases, {time.monotonic() - started:.0f} s, statuses {sorted(statuses.items())}",
                  flush=True)

    # Sessions the fuzz opened are closed (each is refused or gone afterwards); then the server
    # is still whole: a clean call through each face works.
    for name, target in (("mcp", mcp), ("proxy", proxy)):
        for session in opened[name]:
            connection = http.client.HTTPConnection(target.host, target.port, timeout=60)
            connection.request("DELETE", target.path, headers={
                "mcp-session-id": session, "mcp-protocol-version": "2025-06-18"})
            response = connection.getresponse()
            response.read()
            connection.close()
            if response.status >= 500:
                raise SystemExit(f"FAIL: DELETE of a session answered {response.status}")
    status, _, data = proxy.post(json.dumps({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                                             "params": initialize_message(rng)["params"]}).encode())
    if status != 200:
        raise SystemExit(f"FAIL: the proxy no longer initializes: {status} {data[:200]!r}")
    rest(args.base, "GET", "/health")
    with open(args.server_log, encoding="utf8", errors="replace") as log:
        text = log.read()
    if "panicked" in text:
        raise SystemExit("FAIL: the server log shows a panic:\n" + text[-4000:])
    print(f"jsonrpc-fuzz: {counts['mcp']} cases to /mcp and {counts['proxy']} to the proxy in "
          f"{time.monotonic() - started:.0f} s, no 5xx, no dropped connection, no panic; "
          f"statuses {sorted(statuses.items())}")


if __name__ == "__main__":
    main()
