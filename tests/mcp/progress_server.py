"""A small stdio MCP server the proxy tests run inside a sandbox, beside mcp-server-time: a tool
that reports progress and logs while it runs (for SSE), and one that waits (for crashes in
flight). Built on the MCP Python SDK that mcp-server-time installs."""

import anyio
from mcp.server.mcpserver import Context, MCPServer

server = MCPServer("kernelbox-proxy-test")


@server.tool()
async def countdown(steps: int, ctx: Context) -> str:
    """Reports progress and a log message per step, then answers."""
    for step in range(1, steps + 1):
        await ctx.report_progress(step, steps, f"step {step}")
        await ctx.info(f"log {step}")
        await anyio.sleep(0.1)
    return f"counted {steps}"


@server.tool()
async def wait(seconds: float) -> str:
    """Answers after `seconds`."""
    await anyio.sleep(seconds)
    return "waited"


if __name__ == "__main__":
    server.run()
