"""The seed's stack in the benchmark: FastAPI under uvicorn with one worker, answering the same
minimal protocol as examples/floor.rs, and nothing else.

    python bench/fastapi_app.py [--addr 127.0.0.1:0] [--model-url http://HOST:PORT/v1]

It prints `listening on http://ADDR` as its first stdout line, like `sparky` and the floor. A
`connect` frame gets `session_info` and `ready`; a `message` frame gets the three events of a
plain Sparky turn (`user_message`, `thought`, `message`, each with `seq`, `session_id` and
`turn_id`). Not part of the crate: scripts/bench.sh installs FastAPI and uvicorn (with uvloop,
httptools and websockets, as `uvicorn[standard]` brings them) and httpx into a virtualenv under
target/.

With `--model-url` a `message` is answered the way Sparky answers it with `--model openai`: the
`user_message` event, then the answer streamed from the OpenAI-compatible server at that URL
(`POST /chat/completions` with `stream: true`, read with httpx) as one `message_delta` per
chunk, then the closing `message` event with the whole answer. This is the relay that
`loadgen stream` measures; it stores nothing, as the rest of this peer.
"""

import argparse
import asyncio
import json
import secrets
import socket
import sys

import httpx
import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

# What Sparky's offline model thinks for plain text, and the built-in tools `ready` lists.
THOUGHT = "No command here, so I echo the text back."
TOOLS = ["session_note", "session_notes", "calculator", "clock", "wait"]

# Sparky's listen backlog.
LISTEN_BACKLOG = 4096

app = FastAPI()

# Set by main() with --model-url: the model server's base URL and one client for every
# conversation (no cap on its connections: every conversation streams at once).
MODEL = {"url": None, "client": None}


def frame(kind, data, session_id, seq=None):
    envelope = {"type": kind, "data": data, "session_id": session_id}
    if seq is not None:
        envelope["seq"] = seq
    return json.dumps(envelope, separators=(",", ":"))


@app.websocket("/ws")
async def chat(ws: WebSocket):
    await ws.accept()
    session_id = None
    seq = 0
    turn = 0
    try:
        while True:
            text = await ws.receive_text()
            try:
                message = json.loads(text)
            except ValueError:
                continue
            kind = message.get("type")
            if kind == "connect" and session_id is None:
                session_id = secrets.token_hex(16)
                info = {"session_id": session_id, "is_new": True, "reconnected": False}
                ready = {"tools_loaded": len(TOOLS), "tools": TOOLS, "model": "offline"}
                await ws.send_text(frame("session_info", info, session_id))
                await ws.send_text(frame("ready", ready, session_id))
            elif kind == "message" and session_id is not None and MODEL["url"]:
                turn += 1
                said = (message.get("data") or {}).get("text", "")
                seq += 1
                data = {"turn_id": turn, "text": said}
                await ws.send_text(frame("user_message", data, session_id, seq))
                answer = await relay(ws, session_id, turn, said)
                seq += 1
                data = {"turn_id": turn, "text": answer}
                await ws.send_text(frame("message", data, session_id, seq))
            elif kind == "message" and session_id is not None:
                turn += 1
                said = (message.get("data") or {}).get("text", "")
                for event, body in (
                    ("user_message", said),
                    ("thought", THOUGHT),
                    ("message", "You said: " + said),
                ):
                    seq += 1
                    data = {"turn_id": turn, "text": body}
                    await ws.send_text(frame(event, data, session_id, seq))
            # Everything else (bad frames, cancel, a second connect) is outside the benchmark.
    except WebSocketDisconnect:
        pass


async def relay(ws, session_id, turn, said):
    """Streams the model's answer to `said` to the client, a `message_delta` per chunk, and
    returns the whole answer."""
    request = {
        "model": "fake",
        "stream": True,
        "messages": [{"role": "user", "content": said}],
    }
    answer = []
    url = MODEL["url"] + "/chat/completions"
    async with MODEL["client"].stream("POST", url, json=request) as response:
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[5:].strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            for choice in chunk.get("choices") or []:
                text = (choice.get("delta") or {}).get("content")
                if text:
                    answer.append(text)
                    delta = {"turn_id": turn, "text": text}
                    await ws.send_text(frame("message_delta", delta, session_id))
    return "".join(answer)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default="127.0.0.1:0")
    parser.add_argument("--model-url", default=None)
    args = parser.parse_args()
    host, _, port = args.addr.rpartition(":")
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    # As Sparky and the floor do: accepted sockets inherit TCP_NODELAY from the listener on
    # Linux, and without it the second and third frames of a turn wait for a delayed ACK.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    sock.bind((host, int(port)))
    sock.listen(LISTEN_BACKLOG)
    bound_host, bound_port = sock.getsockname()
    print(f"listening on http://{bound_host}:{bound_port}", flush=True)
    config = uvicorn.Config(
        app, workers=1, log_level="warning", backlog=LISTEN_BACKLOG, ws_ping_interval=None
    )
    server = uvicorn.Server(config)

    async def serve():
        if args.model_url:
            MODEL["url"] = args.model_url.rstrip("/")
            limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
            MODEL["client"] = httpx.AsyncClient(limits=limits, timeout=60.0)
        await server.serve(sockets=[sock])

    asyncio.run(serve())
    return 0


if __name__ == "__main__":
    sys.exit(main())
