"""End-to-end MCP scenarios against kernelbox, driven by the official MCP Python SDK (and, where
named, fastmcp's Client and openai-agents' strict schema conversion).

The Rust tests in tests/it/mcp.rs start the server (or hand over the stdio command) and run one
scenario each:

    python scenarios.py stdio <mode> <kernelbox> <args...>
    python scenarios.py stress <count> <kernelbox> <args...>
    python scenarios.py http-legacy <url>
    python scenarios.py http-stateless <url>
    python scenarios.py http-tenants <url> <key> <other key>
    python scenarios.py proxy <mode> <url>      (mcp-server-time behind the MCP proxy)
    python scenarios.py bad-input <url>         (the error codes of three bad inputs)
    python scenarios.py fastmcp-state <url> <key> <calls>   (fastmcp, no session_id)
    python scenarios.py session-per-call <url>  (a new MCP session for every call)
    python scenarios.py strict-schemas <url>    (openai-agents' strict conversion, null arguments)
    python scenarios.py tenants-many-calls <url> <calls> <extra key> <keys...>
    python scenarios.py processes <url>         (background processes: start, read, kill)

A scenario asserts as it goes and exits non-zero on the first failure. It prints one line
`RESULT <json>` with facts the Rust side checks against Docker (sandbox ids, timings).
"""

from __future__ import annotations

import base64
import json
import sys
import time

import anyio
from mcp.client.client import Client
from mcp.client.stdio import StdioServerParameters

EXPECTED_TOOLS = {
    "execute_code",
    "interrupt",
    "restart_kernel",
    "run_command",
    "install_packages",
    "write_file",
    "read_file",
    "list_files",
    "delete_file",
    "stat_file",
    "make_directory",
    "copy_file",
    "move_file",
    "create_session",
    "list_sessions",
    "close_session",
    "set_session_timeout",
    "start_process",
    "list_processes",
    "read_process_output",
    "kill_process",
}


def check(condition: bool, message: str) -> None:
    if not condition:
        raise AssertionError(message)


def text_of(result) -> str:
    return "\n".join(block.text for block in result.content if getattr(block, "type", "") == "text")


def result_line(facts: dict) -> None:
    print("RESULT " + json.dumps(facts), flush=True)


async def call(client: Client, name: str, arguments: dict, **kwargs):
    return await client.call_tool(name, arguments, **kwargs)


async def check_tools(client: Client) -> None:
    listed = await client.list_tools()
    names = {tool.name for tool in listed.tools}
    check(names == EXPECTED_TOOLS, f"tools listed: {sorted(names)}")
    for tool in listed.tools:
        schema = tool.input_schema
        check(schema.get("type") == "object", f"{tool.name} schema is not an object: {schema}")
        check(bool(tool.description) and len(tool.description) > 30, f"{tool.name} lacks a description")
    execute = next(tool for tool in listed.tools if tool.name == "execute_code")
    properties = execute.input_schema["properties"]
    check("code" in properties and "code" in execute.input_schema.get("required", []), "code is required")
    # Nullable, with no default and no x-mcp-header (clients drop a tool whose annotated
    # property is not of one primitive type).
    check(properties["session_id"] == {"type": ["string", "null"], "description": properties["session_id"]["description"]}, f"session_id: {properties['session_id']}")


async def check_execution_basics(client: Client) -> str:
    first = await call(client, "execute_code", {"code": "x = 6*7"})
    check(not first.is_error, f"x = 6*7 failed: {text_of(first)}")
    session_id = first.structured_content["session_id"]
    printed = await call(client, "execute_code", {"code": "print(x)"})
    check(printed.structured_content["stdout"] == "42\n", f"print(x): {printed.structured_content}")
    check("42" in text_of(printed), f"print(x) text: {text_of(printed)}")
    check(printed.structured_content["session_id"] == session_id, "the default session changed")

    plot = await call(
        client,
        "execute_code",
        {"code": "import matplotlib.pyplot as plt\nplt.plot([1, 2, 3], [1, 4, 9])\nplt.show()"},
    )
    images = [block for block in plot.content if block.type == "image"]
    check(len(images) == 1, f"plot gave {len(images)} images: {plot.content}")
    check(images[0].mime_type == "image/png", f"mime {images[0].mime_type}")
    check(base64.b64decode(images[0].data).startswith(b"\x89PNG\r\n\x1a\n"), "not a PNG")

    failure = await call(client, "execute_code", {"code": "1/0"})
    check(failure.is_error is True, "1/0 is not an error")
    check("ZeroDivisionError" in text_of(failure), f"1/0 text: {text_of(failure)}")
    check("\x1b[" not in text_of(failure), "ANSI codes in the traceback")
    check(failure.structured_content["error"]["ename"] == "ZeroDivisionError", "structured error")
    return session_id


async def check_progress(client: Client) -> int:
    messages: list[tuple[float, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append((time.monotonic(), message))

    code = "import time\nfor i in range(6):\n    print(f'tick {i}', flush=True)\n    time.sleep(0.5)"
    result = await call(client, "execute_code", {"code": code}, progress_callback=on_progress)
    finished = time.monotonic()
    ticks = [m for _, m in messages if m and "tick" in m]
    check(len(ticks) >= 3, f"only {len(ticks)} progress messages: {messages}")
    early = [t for t, m in messages if m and "tick" in m and t < finished - 1.0]
    check(len(early) >= 3, "progress did not arrive while the code ran")
    check(result.structured_content["stdout"].count("tick") == 6, "final stdout")
    return len(ticks)


async def check_cancellation(client: Client, session_id: str | None = None) -> float:
    """Cancels a `while True` call and measures how soon the next call answers."""
    started = anyio.Event()

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        started.set()

    arguments = {"code": "import time\nwhile True:\n    print('spin', flush=True)\n    time.sleep(0.05)"}
    if session_id:
        arguments["session_id"] = session_id
    with anyio.move_on_after(30):
        async with anyio.create_task_group() as group:

            async def spin() -> None:
                await call(client, "execute_code", arguments, progress_callback=on_progress)

            group.start_soon(spin)
            await started.wait()
            group.cancel_scope.cancel()
    check(started.is_set(), "the spinning call never reported progress")
    begun = time.monotonic()
    follow = {"code": "print('after')"}
    if session_id:
        follow["session_id"] = session_id
    after = await call(client, "execute_code", follow)
    elapsed = time.monotonic() - begun
    check(
        after.structured_content is not None and after.structured_content["stdout"] == "after\n",
        f"after cancel: {text_of(after)} {after.structured_content}",
    )
    check(elapsed < 1.0, f"the next call took {elapsed:.2f} s")
    return elapsed


async def check_bad_input(client: Client, session_id: str) -> None:
    unknown = await call(client, "execute_code", {"code": "1", "session_id": "sbx_doesnotexist0000000"})
    check(unknown.is_error is True and "unknown session_id" in text_of(unknown), f"unknown session: {text_of(unknown)}")

    try:
        wrong = await call(client, "execute_code", {"code": 12345})
        check(wrong.is_error is True, f"wrong type accepted: {wrong}")
    except Exception as error:  # a JSON-RPC invalid-params error is a clear answer too
        check("code" in str(error) or "invalid" in str(error).lower(), f"wrong type error: {error}")

    # Larger than the code limit (2 MiB), under every face's body limit (8 MiB).
    huge = await call(client, "execute_code", {"code": "#" * (6 * 1024 * 1024)})
    check(huge.is_error is True and "larger than" in text_of(huge), f"6 MiB code: {text_of(huge)[:200]}")

    escape = await call(client, "read_file", {"path": "../../etc/passwd"})
    check(escape.is_error is True and "outside" in text_of(escape), f"escape: {text_of(escape)}")
    escape = await call(client, "write_file", {"path": "/etc/evil", "content": "x"})
    check(escape.is_error is True and "outside" in text_of(escape), f"escape write: {text_of(escape)}")

    still = await call(client, "execute_code", {"code": "print(x)", "session_id": session_id})
    check(still.structured_content["stdout"] == "42\n", "state lost after bad input")


async def check_files_and_commands(client: Client) -> None:
    wrote = await call(client, "write_file", {"path": "data/hello.txt", "content": "hello\n"})
    check(not wrote.is_error, text_of(wrote))
    blob = base64.b64encode(bytes(range(256))).decode()
    wrote = await call(client, "write_file", {"path": "data/blob.bin", "content": blob, "encoding": "base64"})
    check(not wrote.is_error, text_of(wrote))
    read = await call(client, "read_file", {"path": "data/hello.txt"})
    check(text_of(read) == "hello\n", f"read: {text_of(read)!r}")
    listing = await call(client, "list_files", {"path": "data"})
    names = sorted(entry["name"] for entry in listing.structured_content["entries"])
    check(names == ["blob.bin", "hello.txt"], f"listing: {names}")
    command = await call(client, "run_command", {"command": "wc -c < data/blob.bin && id -un"})
    check(command.structured_content["stdout"] == "256\nsandbox\n", f"command: {command.structured_content}")
    failing = await call(client, "run_command", {"command": "exit 3"})
    check(failing.is_error is True and failing.structured_content["exit_code"] == 3, "exit 3")
    deleted = await call(client, "delete_file", {"path": "data"})
    check(not deleted.is_error, text_of(deleted))
    gone = await call(client, "read_file", {"path": "data/hello.txt"})
    check(gone.is_error is True, "deleted file still readable")


async def check_restart(client: Client) -> None:
    await call(client, "execute_code", {"code": "kept = 1"})
    restarted = await call(client, "restart_kernel", {})
    check(not restarted.is_error, text_of(restarted))
    after = await call(client, "execute_code", {"code": "print('kept' in globals())"})
    check(after.structured_content["stdout"] == "False\n", "restart kept variables")


async def scenario_stdio(mode: str, command: list[str]) -> None:
    params = StdioServerParameters(command=command[0], args=command[1:])
    async with Client(params, mode=mode) as client:
        await check_tools(client)
        session_id = await check_execution_basics(client)
        progress = await check_progress(client)
        cancel_seconds = await check_cancellation(client)
        await check_bad_input(client, session_id)
        await check_files_and_commands(client)
        await check_restart(client)
        result_line(
            {
                "session_id": session_id,
                "protocol": client.protocol_version,
                "progress_messages": progress,
                "next_call_after_cancel_s": cancel_seconds,
            }
        )


async def scenario_stress(count: int, command: list[str]) -> None:
    params = StdioServerParameters(command=command[0], args=command[1:])
    async with Client(params, mode="legacy") as client:
        await call(client, "execute_code", {"code": "pass"})
        lost = 0
        started = time.monotonic()
        for _ in range(count):
            result = await call(client, "execute_code", {"code": "print(1+1)"})
            if result.structured_content["stdout"] != "2\n" or text_of(result) != "2\n":
                lost += 1
        elapsed = time.monotonic() - started
        check(lost == 0, f"{lost} of {count} calls lost their output")
        result_line({"calls": count, "lost": lost, "seconds": elapsed, "per_call_ms": elapsed / count * 1000})


async def scenario_http_legacy(url: str) -> None:
    """Two legacy clients of one tenant share its default sandbox; create_session isolates."""
    async with Client(url, mode="legacy") as first, Client(url, mode="legacy") as second:
        check(first.protocol_version < "2026-07-28", f"legacy protocol: {first.protocol_version}")
        a = await call(first, "execute_code", {"code": "owner = 'first'\nprint(owner)"})
        check(not a.is_error, f"first call: {text_of(a)}")
        b = await call(second, "execute_code", {"code": "print(globals().get('owner'))"})
        check(a.structured_content["stdout"] == "first\n", "first client")
        check(b.structured_content["stdout"] == "first\n", "the second client does not see the tenant's default")
        default_id = a.structured_content["session_id"]
        check(b.structured_content["session_id"] == default_id, "two default sandboxes for one tenant")
        created = await call(second, "create_session", {})
        isolated = created.structured_content["session_id"]
        c = await call(second, "execute_code", {"code": "print(globals().get('owner'))", "session_id": isolated})
        check(c.structured_content["stdout"] == "None\n", "create_session is not isolated")
        await check_cancellation(first)
        beats = await check_keepalive(second)
        result_line({"default": default_id, "isolated": isolated, "keepalives": beats})
        # Leaving the context managers ends both MCP sessions (HTTP DELETE); the default
        # sandbox stays.


async def check_keepalive(client: Client) -> int:
    """A silent run still sends progress notifications (keep-alives) at least every 10 s."""
    beats: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        beats.append(time.monotonic())

    started = time.monotonic()
    result = await call(client, "execute_code", {"code": "import time\ntime.sleep(11)"}, progress_callback=on_progress)
    check(not result.is_error, text_of(result))
    check(len(beats) >= 1, "no keep-alive during 11 silent seconds")
    gaps = [later - earlier for earlier, later in zip([started, *beats], beats)]
    check(max(gaps) <= 10.5, f"keep-alive gaps: {gaps}")
    return len(beats)


async def scenario_http_tenants(url: str, first_key: str, second_key: str) -> None:
    """Each API key is a tenant: another tenant's session id is unknown to it."""
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    def client_for(key: str) -> Client:
        http = httpx2.AsyncClient(headers={"x-api-key": key}, timeout=120)
        return Client(streamable_http_client(url, http_client=http), mode="legacy")

    async with client_for(first_key) as first, client_for(second_key) as second:
        created = await call(first, "create_session", {})
        owned = created.structured_content["session_id"]
        await call(first, "execute_code", {"code": "secret = 'first tenant'", "session_id": owned})
        stolen = await call(second, "execute_code", {"code": "print(secret)", "session_id": owned})
        check(stolen.is_error is True and "unknown session_id" in text_of(stolen), f"foreign session: {text_of(stolen)}")
        listed = await call(second, "list_sessions", {})
        ids = {session["id"] for session in listed.structured_content["sessions"]}
        check(owned not in ids, "another tenant's session is listed")
        closed = await call(second, "close_session", {"session_id": owned})
        check(closed.is_error is True, "another tenant closed the session")
        try:
            await second.read_resource(f"session://{owned}")
            check(False, "another tenant read the session resource")
        except Exception as error:
            check("no resource" in str(error), f"resource error: {error}")
        mine = await call(first, "execute_code", {"code": "print(secret)", "session_id": owned})
        check(mine.structured_content["stdout"] == "first tenant\n", "the owner lost its session")
        await call(first, "close_session", {"session_id": owned})
        result_line({"owned": owned})


async def scenario_http_answer(url: str, key: str) -> None:
    """One client with an API key: a session's code cell gives its value back."""
    import httpx2
    from mcp.client.streamable_http import streamable_http_client

    http = httpx2.AsyncClient(headers={"x-api-key": key}, timeout=120)
    async with Client(streamable_http_client(url, http_client=http), mode="legacy") as client:
        created = await call(client, "create_session", {})
        session = created.structured_content["session_id"]
        answer = await call(client, "execute_code", {"code": "print(6*7)", "session_id": session})
        check(not answer.is_error, f"execute_code failed: {text_of(answer)}")
        await call(client, "close_session", {"session_id": session})
        result_line({"stdout": answer.structured_content["stdout"], "session": session})


async def scenario_http_stateless(url: str) -> None:
    async with Client(url) as client:
        check(client.protocol_version >= "2026-07-28", f"stateless protocol: {client.protocol_version}")
        await check_tools(client)
        first = await call(client, "execute_code", {"code": "value = 7\nprint(value)"})
        check(not first.is_error, f"first call: {text_of(first)}")
        session_id = first.structured_content["session_id"]
        check(session_id.startswith("sbx_"), f"no session id: {first.structured_content}")
        check(session_id in text_of(first), "the id is not in the text")
        again = await call(client, "execute_code", {"code": "print(value * 6)", "session_id": session_id})
        check(again.structured_content["stdout"] == "42\n", f"state not kept: {again.structured_content}")
        other = await call(client, "execute_code", {"code": "print(globals().get('value'))"})
        other_id = other.structured_content["session_id"]
        check(other_id == session_id and other.structured_content["stdout"] == "7\n", "the default sandbox changed")
        check(session_id not in text_of(other), "the default's note repeated")
        check(other.structured_content["session_idle_timeout_secs"] > 0, "no idle timeout")
        other_created = await call(client, "create_session", {})
        other_id = other_created.structured_content["session_id"]

        created = await call(client, "create_session", {"env": [{"name": "GREETING", "value": "hi"}]})
        created_id = created.structured_content["session_id"]
        env = await call(client, "run_command", {"command": "echo $GREETING", "session_id": created_id})
        check(env.structured_content["stdout"] == "hi\n", f"env: {env.structured_content}")
        listed = await call(client, "list_sessions", {})
        ids = {session["id"] for session in listed.structured_content["sessions"]}
        check({session_id, other_id, created_id} <= ids, f"list_sessions: {ids}")

        await call(client, "write_file", {"path": "notes.txt", "content": "resource text", "session_id": session_id})
        resources = await client.list_resources()
        uris = {str(resource.uri) for resource in resources.resources}
        check("sessions://" in uris and f"session://{session_id}" in uris, f"resources: {uris}")
        templates = await client.list_resource_templates()
        check(len(templates.resource_templates) >= 2, "templates")
        read = await client.read_resource(f"session://{session_id}/files/notes.txt")
        check(read.contents[0].text == "resource text", f"file resource: {read.contents}")
        info = await client.read_resource(f"session://{session_id}")
        check(json.loads(info.contents[0].text)["id"] == session_id, "session resource")
        listing = await client.read_resource("sessions://")
        check(session_id in listing.contents[0].text, "sessions resource")

        big = await call(
            client,
            "execute_code",
            {
                "session_id": session_id,
                "code": "import numpy as np\nfrom PIL import Image\nfrom IPython.display import display\n"
                "display(Image.fromarray(np.random.default_rng(1).integers(0, 255, (460, 460, 3), dtype=np.uint8)))",
            },
        )
        links = [block for block in big.content if block.type == "resource_link"]
        check(len(links) == 1, f"large image: {[block.type for block in big.content]}")
        image = await client.read_resource(str(links[0].uri))
        check(base64.b64decode(image.contents[0].blob).startswith(b"\x89PNG"), "large image resource")

        await check_cancellation(client, session_id)

        for closing in (session_id, other_id, created_id):
            closed = await call(client, "close_session", {"session_id": closing})
            check(not closed.is_error, text_of(closed))
        gone = await call(client, "execute_code", {"code": "1", "session_id": session_id})
        check(gone.is_error is True and "unknown session_id" in text_of(gone), "closed session still answers")
        result_line({"closed": [session_id, other_id, created_id]})


async def scenario_bad_input(url: str) -> None:
    """Bad input comes back as an error result whose structured content names the stable code."""

    def code_of(result) -> str:
        check(result.is_error is True, f"not an error: {text_of(result)}")
        return result.structured_content["error"]["code"]

    async with Client(url) as client:
        image = await call(client, "create_session", {"image": "kernelbox-no-such-image:latest"})
        created = await call(client, "create_session", {})
        session_id = created.structured_content["session_id"]
        nul = await call(client, "run_command", {"command": "echo a\u0000b", "session_id": session_id})
        path = await call(client, "read_file", {"path": "../../etc/passwd", "session_id": session_id})
        await call(client, "close_session", {"session_id": session_id})
        widen = await call(client, "create_session", {"network": {"allowed_ips": ["10.1.2.3"]}})
        narrow = await call(client, "create_session", {"network": {"allowed_domains": ["pypi.org"]}})
        check(not narrow.is_error, f"a narrower network was refused: {text_of(narrow)}")
        await call(client, "close_session", {"session_id": narrow.structured_content["session_id"]})
        listed = await client.list_tools()
        create = next(tool for tool in listed.tools if tool.name == "create_session")
        check("never" in create.description and "narrow" in create.description, create.description)
        result_line(
            {
                "widen": code_of(widen),
                "widen_message": text_of(widen),
                "image": code_of(image),
                "image_message": text_of(image),
                "nul_command": code_of(nul),
                "nul_message": text_of(nul),
                "path": code_of(path),
                "path_message": text_of(path),
            }
        )


async def scenario_proxy(mode: str, url: str) -> None:
    """The MCP proxy in front of mcp-server-time inside a sandbox: handshake, tools, a call."""
    async with Client(url, mode=mode) as client:
        listed = await client.list_tools()
        names = sorted(tool.name for tool in listed.tools)
        check(names == ["convert_time", "get_current_time"], f"tools listed: {names}")
        result = await call(client, "get_current_time", {"timezone": "Europe/Paris"})
        check(not result.is_error, f"get_current_time failed: {text_of(result)}")
        structured = result.structured_content or json.loads(text_of(result))
        check(structured["timezone"] == "Europe/Paris", f"result: {structured}")
        converted = await call(
            client, "convert_time", {"source_timezone": "Etc/UTC", "time": "12:00", "target_timezone": "Asia/Tokyo"}
        )
        check("21:00" in text_of(converted) or "21:00" in json.dumps(converted.structured_content), f"convert_time: {text_of(converted)}")
        bad = await call(client, "get_current_time", {"timezone": "Not/A_Zone"})
        check(bad.is_error is True, f"an invalid timezone is not an error: {text_of(bad)}")
        result_line({"protocol": client.protocol_version, "tools": names, "datetime": structured["datetime"]})


def fastmcp_client(url: str, key: str | None = None):
    """fastmcp's Client in its default mode (it negotiates 2026-07-28 over HTTP)."""
    from fastmcp import Client as FastClient
    from fastmcp.client.transports import StreamableHttpTransport

    headers = {"x-api-key": key} if key else {}
    return FastClient(StreamableHttpTransport(url, headers=headers), timeout=120)


async def fast_call(client, name: str, arguments: dict):
    return await client.call_tool(name, arguments, raise_on_error=False)


async def scenario_fastmcp_state(url: str, key: str, calls: int) -> None:
    """Unchanged client code, no session_id: state and files persist, one default sandbox."""
    async with fastmcp_client(url, key) as client:
        check(client.protocol_version >= "2026-07-28", f"fastmcp negotiated {client.protocol_version}")
        first = await fast_call(client, "execute_code", {"code": "x = 21"})
        check(not first.is_error, f"x = 21: {text_of(first)}")
        second = await fast_call(client, "execute_code", {"code": "print(x*2)"})
        check(second.structured_content["stdout"] == "42\n", f"print(x*2): {text_of(second)}")
        wrote = await fast_call(client, "write_file", {"path": "kept.txt", "content": "written before"})
        check(not wrote.is_error, text_of(wrote))
        read = await fast_call(client, "read_file", {"path": "kept.txt"})
        check(text_of(read) == "written before", f"read_file: {text_of(read)!r}")
        ids = {first.structured_content["session_id"], second.structured_content["session_id"]}
        started = time.monotonic()
        for i in range(calls):
            result = await fast_call(client, "execute_code", {"code": "n = globals().get('n', 0) + 1\nprint(n)"})
            check(result.structured_content["stdout"] == f"{i + 1}\n", f"call {i}: {text_of(result)}")
            ids.add(result.structured_content["session_id"])
        elapsed = time.monotonic() - started
        listed = await fast_call(client, "list_sessions", {})
        defaults = [s for s in listed.structured_content["sessions"] if s.get("tag") == "default"]
        result_line(
            {
                "protocol": client.protocol_version,
                "ids": sorted(ids),
                "default_sessions": len(defaults),
                "idle_timeout_secs": second.structured_content["session_idle_timeout_secs"],
                "per_call_ms": elapsed / max(calls, 1) * 1000,
            }
        )


async def scenario_session_per_call(url: str) -> None:
    """A client that opens a new MCP session for every call keeps its state, with or without
    passing the returned session_id back: the SDK in both modes, and fastmcp."""

    def opener(kind: str):
        if kind == "fastmcp":
            return fastmcp_client(url)
        return Client(url, mode=kind)

    facts = {}
    for kind in ("legacy", "auto", "fastmcp"):
        name = f"v_{kind}"

        async def one_call(arguments: dict):
            # Each session lists the tools first, as a client offering them to a model does: on
            # 2026-07-28 that is how a client learns to mirror session_id into its header.
            async with opener(kind) as client:
                await client.list_tools()
                if kind == "fastmcp":
                    return await fast_call(client, "execute_code", arguments)
                return await call(client, "execute_code", arguments)

        first = await one_call({"code": f"{name} = 5"})
        check(not first.is_error, f"{kind}: {text_of(first)}")
        session_id = first.structured_content["session_id"]
        without = await one_call({"code": f"print({name} * 2)"})
        check(without.structured_content["stdout"] == "10\n", f"{kind} without the id: {text_of(without)}")
        passed = await one_call({"code": f"print({name} * 3)", "session_id": session_id})
        check(passed.structured_content["stdout"] == "15\n", f"{kind} with the id: {text_of(passed)}")
        facts[kind] = session_id
    result_line(facts)


async def scenario_tenants_many_calls(url: str, calls: int, extra_key: str, *keys: str) -> None:
    """Several tenants make many calls without session_id at once; none may be refused. Then a
    tenant more makes one call while the server's cap is full of the others' default sandboxes."""
    refused: dict[str, list[str]] = {key: [] for key in keys}
    ids: dict[str, set[str]] = {key: set() for key in keys}

    async def tenant(key: str) -> None:
        async with fastmcp_client(url, key) as client:
            for i in range(calls):
                result = await fast_call(client, "execute_code", {"code": f"print({i})"})
                if result.is_error or result.structured_content.get("stdout") != f"{i}\n":
                    refused[key].append(f"call {i}: {text_of(result)}")
                else:
                    ids[key].add(result.structured_content["session_id"])

    started = time.monotonic()
    async with anyio.create_task_group() as group:
        for key in keys:
            group.start_soon(tenant, key)
    elapsed = time.monotonic() - started
    check(all(not errors for errors in refused.values()), f"refused calls: {refused}")
    async with fastmcp_client(url, extra_key) as client:
        late = await fast_call(client, "execute_code", {"code": "print('late')"})
        check(not late.is_error and late.structured_content["stdout"] == "late\n", f"the extra tenant: {text_of(late)}")
    result_line(
        {
            "calls": calls * len(keys),
            "seconds": elapsed,
            "ids": {key: sorted(found) for key, found in ids.items()},
            "extra": late.structured_content["session_id"],
        }
    )


async def scenario_strict_schemas(url: str) -> None:
    """Every tool's input schema passes openai-agents' strict conversion exactly as its MCP
    integration calls it (no fallback to non-strict), and a call that sets every optional
    argument to null, as a strict-mode model does, succeeds."""
    import copy

    from agents.strict_schema import ensure_strict_json_schema

    required_values = {
        "execute_code": {"code": "print(6*7)"},
        "run_command": {"command": "echo ok"},
        # Already installed: pip answers without the package index.
        "install_packages": {"packages": ["pip"]},
        "write_file": {"path": "strict.txt", "content": "strict"},
        "read_file": {"path": "strict.txt"},
        "stat_file": {"path": "strict.txt"},
        "make_directory": {"path": "strictdir/sub"},
        "copy_file": {"source": "strict.txt", "destination": "strictdir/copy.txt"},
        "move_file": {"source": "strictdir/copy.txt", "destination": "strictdir/moved.txt"},
        "delete_file": {"path": "strict.txt"},
        "start_process": {"command": "sleep 60"},
        "read_process_output": {"process": "1"},
        "kill_process": {"process": "1"},
        "set_session_timeout": {"timeout": 600},
    }
    order = [
        "create_session", "execute_code", "interrupt", "restart_kernel", "run_command", "install_packages",
        "write_file", "read_file", "stat_file", "make_directory", "copy_file", "move_file",
        "list_files", "delete_file", "start_process", "list_processes",
        "read_process_output", "kill_process", "set_session_timeout", "list_sessions", "close_session",
    ]
    async with Client(url) as client:
        listed = await client.list_tools()
        strict = {}
        for tool in listed.tools:
            schema = copy.deepcopy(tool.input_schema)
            # What openai-agents 0.24's MCPUtil.to_function_tool does before converting.
            if "properties" not in schema:
                schema["properties"] = {}
            strict[tool.name] = ensure_strict_json_schema(copy.deepcopy(schema), _reject_open_objects=schema != {})
            originally_required = set(tool.input_schema.get("required", []))
            check(
                set(strict[tool.name]["required"]) == set(strict[tool.name]["properties"]),
                f"{tool.name}: strict schema does not require every property",
            )
            for name, prop in strict[tool.name]["properties"].items():
                if name not in originally_required:
                    kinds = prop.get("type")
                    nullable = (isinstance(kinds, list) and "null" in kinds) or any(
                        option.get("type") == "null" for option in prop.get("anyOf", [])
                    )
                    check(nullable, f"{tool.name}.{name} became a required non-null value: {prop}")
        check(set(strict) == set(order), f"tools: {sorted(strict)}")
        created_id = None
        outcomes = {}
        for name in order:
            arguments = {prop: None for prop in strict[name]["properties"]}
            arguments.update(required_values.get(name, {}))
            if name == "close_session":
                arguments["session_id"] = created_id
            result = await call(client, name, arguments)
            check(not result.is_error, f"{name} with every optional argument null: {text_of(result)}")
            if name == "create_session":
                created_id = result.structured_content["session_id"]
            outcomes[name] = "ok"
        result_line({"tools": sorted(strict), "calls": outcomes, "created": created_id})


async def scenario_processes(url: str) -> None:
    """A background loop started, its output read while it runs (waiting for it), killed by
    tag; bad input is an error result naming the stable code."""
    async with Client(url) as client:
        started = await call(
            client,
            "start_process",
            {"command": "for i in $(seq 1 300); do echo tick $i; sleep 0.1; done", "tag": "ticker"},
        )
        check(not started.is_error, f"start_process: {text_of(started)}")
        pid = started.structured_content["process"]["pid"]
        check(started.structured_content["process"]["state"] == "running", f"{started.structured_content}")
        first = await call(client, "read_process_output", {"process": "ticker", "wait_secs": 20})
        check("tick 1" in first.structured_content["stdout"], f"first read: {text_of(first)}")
        cursor = first.structured_content["next_seq"]
        newer = await call(
            client, "read_process_output", {"process": str(pid), "since": cursor, "wait_secs": 20}
        )
        check(newer.structured_content["next_seq"] > cursor, f"no newer output: {newer.structured_content}")
        check("tick 1\n" not in newer.structured_content["stdout"], "since repeated old output")
        listed = await call(client, "list_processes", {})
        check(
            [p["tag"] for p in listed.structured_content["processes"]] == ["ticker"],
            f"list_processes: {listed.structured_content}",
        )
        killed = await call(client, "kill_process", {"process": "ticker", "signal": "SIGKILL"})
        check(not killed.is_error, f"kill_process: {text_of(killed)}")
        ended = killed
        cursor = killed.structured_content["process"]["next_seq"]
        for _ in range(10):
            # Waits for output past the cursor or the exit, whichever comes first.
            ended = await call(
                client, "read_process_output", {"process": "ticker", "since": cursor, "wait_secs": 5}
            )
            if ended.structured_content["process"]["state"] != "running":
                break
            cursor = ended.structured_content["next_seq"]
        process = ended.structured_content["process"]
        bad_signal = await call(client, "kill_process", {"process": "ticker", "signal": "SIGBOGUS"})
        unknown = await call(client, "read_process_output", {"process": "999"})
        escape = await call(client, "start_process", {"command": "pwd", "cwd": "../etc"})
        too_long = await call(client, "read_process_output", {"process": "ticker", "wait_secs": 3600})
        for result in (bad_signal, unknown, escape, too_long):
            check(result.is_error is True, f"not an error: {text_of(result)}")
        result_line(
            {
                "state": process["state"],
                "signal": process["signal"],
                "exit_code": process["exit_code"],
                "bad_signal": bad_signal.structured_content["error"]["code"],
                "unknown": unknown.structured_content["error"]["code"],
                "escape": escape.structured_content["error"]["code"],
                "too_long": too_long.structured_content["error"]["code"],
            }
        )


def main() -> None:
    scenario, *rest = sys.argv[1:]
    if scenario == "stdio":
        anyio.run(scenario_stdio, rest[0], rest[1:])
    elif scenario == "stress":
        anyio.run(scenario_stress, int(rest[0]), rest[1:])
    elif scenario == "http-legacy":
        anyio.run(scenario_http_legacy, rest[0])
    elif scenario == "http-stateless":
        anyio.run(scenario_http_stateless, rest[0])
    elif scenario == "http-answer":
        anyio.run(scenario_http_answer, rest[0], rest[1])
    elif scenario == "http-tenants":
        anyio.run(scenario_http_tenants, rest[0], rest[1], rest[2])
    elif scenario == "proxy":
        anyio.run(scenario_proxy, rest[0], rest[1])
    elif scenario == "fastmcp-state":
        anyio.run(scenario_fastmcp_state, rest[0], rest[1], int(rest[2]))
    elif scenario == "session-per-call":
        anyio.run(scenario_session_per_call, rest[0])
    elif scenario == "tenants-many-calls":
        anyio.run(scenario_tenants_many_calls, rest[0], int(rest[1]), rest[2], *rest[3:])
    elif scenario == "strict-schemas":
        anyio.run(scenario_strict_schemas, rest[0])
    elif scenario == "processes":
        anyio.run(scenario_processes, rest[0])
    elif scenario == "bad-input":
        anyio.run(scenario_bad_input, rest[0])
    else:
        raise SystemExit(f"unknown scenario {scenario}")


if __name__ == "__main__":
    main()
