"""Measures what a weir replica needs, for the resource requests and limits in
deploy/kubernetes and the README's sizing table. Loopback only; bounded in time.

Usage: python3 deploy/sizing.py [WEIR_BINARY]   (default target/release/weir; needs nginx, wrk)

1. Idle: RSS of a started replica.
2. Requests: wrk, 64 connections, JSON chat completions through weir to nginx answering a
   fixed completion; CPU seconds weir used (from /proc) per request -> requests/s per core,
   and peak RSS.
3. Streams: 1,000 then 3,000 concurrent streamed completions held open through weir to a
   trickling upstream (one SSE chunk a second); RSS at each -> MiB per 1,000 open streams.
"""

import asyncio
import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import tempfile
import time

CHAT = json.dumps({"model": "chat", "messages": [{"role": "user", "content": "Hello there, how are you?"}], "max_tokens": 16})
STREAM = json.dumps({"model": "stream", "stream": True, "messages": [{"role": "user", "content": "Hello"}]})
COMPLETION = json.dumps({
    "id": "chatcmpl-1", "object": "chat.completion", "created": 1, "model": "m",
    "choices": [{"index": 0, "message": {"role": "assistant", "content": "Hello! I am fine, thank you for asking."}, "finish_reason": "stop"}],
    "usage": {"prompt_tokens": 12, "completion_tokens": 10, "total_tokens": 22},
})
CHUNK = 'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[{"index":0,"delta":{"content":"word "},"finish_reason":null}]}\n\n'


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_port(port, deadline=30):
    end = time.time() + deadline
    while time.time() < end:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def proc_status(pid, field):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024  # MiB
    return 0.0


def cpu_seconds(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def trickling_upstream(port, ready):
    """An OpenAI-compatible upstream whose streams send one chunk a second for 60 s."""

    async def handle(reader, writer):
        try:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.decode().split("\r\n"):
                if line.lower().startswith("content-length:"):
                    length = int(line.split(":")[1])
            await reader.readexactly(length)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n")
            for _ in range(60):
                data = CHUNK.encode()
                writer.write(b"%x\r\n%s\r\n" % (len(data), data))
                await writer.drain()
                await asyncio.sleep(1)
            done = b"data: [DONE]\n\n"
            writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(done), done))
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.CancelledError):
            pass  # the client (weir) went away, or the measurement is over
        finally:
            writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", port, backlog=8192)
    ready.set()
    async with server:
        await server.serve_forever()


async def open_streams(port, n, held):
    """Opens `n` streamed requests through weir and waits for each one's first chunk."""
    body = STREAM.encode()
    request = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    ).encode() + body

    async def one():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(request)
        await writer.drain()
        await reader.readuntil(b"data:")
        held.append(writer)

    for start in range(0, n, 200):
        await asyncio.gather(*(one() for _ in range(min(200, n - start))))


async def streams_phase(weir_pid, port, upstream_port):
    ready = asyncio.Event()
    upstream = asyncio.create_task(trickling_upstream(upstream_port, ready))
    await ready.wait()
    held = []
    before = proc_status(weir_pid, "VmRSS")
    results = {}
    for n in (1000, 3000):
        await open_streams(port, n - len(held), held)
        await asyncio.sleep(2)
        results[n] = proc_status(weir_pid, "VmRSS")
        print(f"  {n} open streams: RSS {results[n]:.1f} MiB (before any: {before:.1f} MiB)")
    for writer in held:
        writer.close()
    await asyncio.sleep(1)
    upstream.cancel()
    per_thousand = (results[3000] - results[1000]) / 2
    return before, results, per_thousand


def main():
    weir = sys.argv[1] if len(sys.argv) > 1 else "target/release/weir"
    for tool in ("wrk",):
        if not shutil.which(tool):
            raise SystemExit(f"{tool} is needed (apt-get install {tool})")
    nginx = shutil.which("nginx") or "/usr/sbin/nginx"
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    tmp = tempfile.mkdtemp()
    port, admin, fast, slow = free_port(), free_port(), free_port(), free_port()

    with open(f"{tmp}/nginx.conf", "w") as f:
        f.write(
            f"daemon off; worker_processes 1; pid {tmp}/nginx.pid; error_log {tmp}/error.log;\n"
            f"events {{ worker_connections 4096; }}\n"
            f"http {{ access_log off; client_body_temp_path {tmp}/body; proxy_temp_path {tmp}/proxy;\n"
            f"  fastcgi_temp_path {tmp}/f; uwsgi_temp_path {tmp}/u; scgi_temp_path {tmp}/s;\n"
            f"  server {{ listen 127.0.0.1:{fast}; location / {{ default_type application/json; return 200 '{COMPLETION}'; }} }} }}\n"
        )
    with open(f"{tmp}/weir.yaml", "w") as f:
        f.write(
            f"server: {{ listen: 127.0.0.1:{port}, admin_listen: 127.0.0.1:{admin} }}\n"
            f"backends:\n"
            f"  fast: {{ kind: openai, base_url: http://127.0.0.1:{fast}/v1 }}\n"
            f"  slow: {{ kind: openai, base_url: http://127.0.0.1:{slow}/v1, timeouts: {{ idle: 30s, total: 600s }} }}\n"
            f"models:\n"
            f"  chat: {{ targets: [ {{ backend: fast, model: m }} ] }}\n"
            f"  stream: {{ targets: [ {{ backend: slow, model: m }} ] }}\n"
            f"auth: {{ mode: none }}\n"
        )
    with open(f"{tmp}/post.lua", "w") as f:
        f.write(f'wrk.method = "POST"\nwrk.headers["content-type"] = "application/json"\nwrk.body = {json.dumps(CHAT)}\n')

    nginx_proc = subprocess.Popen([nginx, "-p", tmp, "-c", f"{tmp}/nginx.conf", "-e", f"{tmp}/error.log"])
    weir_proc = subprocess.Popen([weir, "serve", "--config", f"{tmp}/weir.yaml"], env={**os.environ, "RUST_LOG": "warn"})
    try:
        wait_port(fast)
        wait_port(port)
        time.sleep(1)
        idle = proc_status(weir_proc.pid, "VmRSS")
        print(f"idle: RSS {idle:.1f} MiB")

        subprocess.run(["wrk", "-t1", "-c64", "-d3s", "-s", f"{tmp}/post.lua", f"http://127.0.0.1:{port}/v1/chat/completions"], capture_output=True)
        cpu0 = cpu_seconds(weir_proc.pid)
        out = subprocess.run(
            ["wrk", "-t1", "-c64", "-d10s", "-s", f"{tmp}/post.lua", f"http://127.0.0.1:{port}/v1/chat/completions"],
            capture_output=True, text=True,
        ).stdout
        cpu = cpu_seconds(weir_proc.pid) - cpu0
        requests = int(next(line for line in out.splitlines() if "requests in" in line).split()[0])
        errors = [line.strip() for line in out.splitlines() if "Non-2xx" in line or "Socket errors" in line]
        peak = proc_status(weir_proc.pid, "VmHWM")
        print(f"requests: {requests} in 10 s, weir CPU {cpu:.2f} s -> {cpu * 1e6 / requests:.0f} us/request, "
              f"{requests / cpu:.0f} requests/s per core; peak RSS {peak:.1f} MiB {errors}")

        before, at, per_thousand = asyncio.run(streams_phase(weir_proc.pid, port, slow))
        print(f"streams: {per_thousand:.1f} MiB per 1,000 open streams (1,000 -> 3,000)")
    finally:
        weir_proc.terminate()
        nginx_proc.terminate()
        weir_proc.wait(timeout=40)
        nginx_proc.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
