"""The seed's stack in the benchmark: FastAPI under uvicorn with one worker, answering the same
minimal protocol as examples/floor.rs, and nothing else.

    python bench/fastapi_app.py [--addr 127.0.0.1:0]

It prints `listening on http://ADDR` as its first stdout line, like `sparky` and the floor. A
`connect` frame gets `session_info` and `ready`; a `message` frame gets the three events of a
plain Sparky turn (`user_message`, `thought`, `message`, each with `seq`, `session_id` and
`turn_id`). Not part of the crate: scripts/bench.sh installs FastAPI and uvicorn (with uvloop,
httptools and websockets, as `uvicorn[standard]` brings them) into a virtualenv under target/.
"""

import argparse
import asyncio
import json
import secrets
import socket
import sys

import uvicorn
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

# What Sparky's offline model thinks for plain text, and the built-in tools `ready` lists.
THOUGHT = "No command here, so I echo the text back."
TOOLS = ["session_note", "session_notes", "calculator", "clock", "wait"]

# Sparky's listen backlog.
LISTEN_BACKLOG = 4096

app = FastAPI()


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


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--addr", default="127.0.0.1:0")
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
    asyncio.run(server.serve(sockets=[sock]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
