"""An MCP server over stdio whose tools misbehave on purpose, for the gateway's fault tests.

Run with the `mcp` package (2.x) installed: `python fault_server.py`. It prints a banner line
that is not JSON on stdout before the session starts, as some real servers do.
"""

import asyncio
import os
import sys

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError
from mcp.types import ToolAnnotations

print("fault-server starting (this line is not JSON)", flush=True)

server = MCPServer("fault-server")


@server.tool(annotations=ToolAnnotations(readOnlyHint=True, idempotentHint=True), structured_output=False)
def echo(text: str) -> str:
    """Return the text unchanged."""
    return text


@server.tool()
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@server.tool(annotations=ToolAnnotations(readOnlyHint=True), structured_output=False)
async def sleep(seconds: float) -> str:
    """Sleep for the given number of seconds, then answer."""
    await asyncio.sleep(seconds)
    return f"slept {seconds}"


@server.tool(annotations=ToolAnnotations(destructiveHint=True), structured_output=False)
def crash(code: int = 3) -> str:
    """Exit the server process with the given status while the call is pending."""
    sys.stdout.flush()
    os._exit(code)


@server.tool()
def fail(message: str) -> str:
    """Report a tool error (isError: true) with the given message."""
    raise ToolError(message)


@server.tool(structured_output=False)
def big(size: int, cjk: bool = False) -> str:
    """Return `size` characters of text, mostly CJK when `cjk` is true."""
    unit = "汉字テスト한글" if cjk else "abcdefghij"
    return (unit * (size // len(unit) + 1))[:size]


@server.tool(structured_output=False)
def noisy(text: str) -> str:
    """Print lines that are not JSON on stdout, then answer."""
    print("debug: about to answer", flush=True)
    print("another stray line", flush=True)
    return text


@server.tool(structured_output=False)
def pid() -> int:
    """Return the server's process id."""
    return os.getpid()


@server.tool(structured_output=False)
def environment(name: str) -> str:
    """Return an environment variable of the server process, or "(unset)"."""
    return os.environ.get(name, "(unset)")


if __name__ == "__main__":
    server.run()
