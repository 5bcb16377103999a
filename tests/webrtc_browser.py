"""Drives `realtime serve --webrtc` from headless Chromium; run by test_webrtc_browser.py inside `unshare -n`.

Starts the service (bound to loopback, it offers 127.0.0.1 as its ICE
candidate: the only interface of the namespace) and Chromium with fake camera and microphone
files, opens the page with ``?autostart=1``, and talks to the page through
the Chrome DevTools Protocol (a small client over aiohttp's websocket):
it waits until the page has received ``--seconds`` of video, grabs received
frames as PNG, takes a screenshot, and writes ``result.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import aiohttp



def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Cdp:
    """The smallest Chrome DevTools Protocol client: ``await call(method, **params)``."""

    def __init__(self, ws):
        self.ws, self.n = ws, 0

    async def call(self, method: str, **params):
        self.n += 1
        await self.ws.send_json({"id": self.n, "method": method, "params": params})
        while True:
            msg = await self.ws.receive_json(timeout=60)
            if msg.get("id") == self.n:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg["result"]

    async def js(self, expression: str):
        r = await self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        return r["result"].get("value")


async def drive(args, port: int, profile: Path) -> dict:
    out = Path(args.out)
    devtools = profile / "DevToolsActivePort"
    async with aiohttp.ClientSession() as http:
        for _ in range(600):
            if devtools.is_file() and devtools.read_text().strip():
                break
            await asyncio.sleep(0.1)
        cdp_port = int(devtools.read_text().split()[0])
        for _ in range(100):
            async with http.get(f"http://127.0.0.1:{cdp_port}/json/list") as r:
                pages = [p for p in await r.json() if p["type"] == "page" and p["url"].startswith("http://127.0.0.1")]
            if pages:
                break
            await asyncio.sleep(0.2)
        async with http.ws_connect(pages[0]["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            cdp = Cdp(ws)
            state, grabbed, t0 = {}, [], time.monotonic()
            next_grab = 0.0
            while time.monotonic() - t0 < args.timeout:
                text = await cdp.js("window.dubcam ? JSON.stringify(window.dubcam) : null")
                if text is None:  # the page is still loading
                    await asyncio.sleep(0.25)
                    continue
                state = json.loads(text)
                if state.get("error"):
                    break
                span = (state["lastFrameAt"] - state["firstFrameAt"]) / 1000 if state.get("firstFrameAt") else 0
                if span >= 1.0 and span >= next_grab and len(grabbed) < args.grabs:
                    png = base64.b64decode((await cdp.js("dubcam.grab()")).split(",", 1)[1])
                    path = out / f"received_{len(grabbed)}.png"
                    path.write_bytes(png)
                    grabbed.append(path.name)
                    next_grab = span + 0.4
                if span >= args.seconds and len(grabbed) >= args.grabs:
                    break
                await asyncio.sleep(0.25)
            shot = await cdp.call("Page.captureScreenshot", format="png")
            Path(args.screenshot).parent.mkdir(parents=True, exist_ok=True)
            Path(args.screenshot).write_bytes(base64.b64decode(shot["data"]))
        async with http.get(f"http://127.0.0.1:{port}/sessions") as r:
            sessions = await r.json()
    return {"page": state, "grabbed": grabbed, "sessions": sessions}


def main() -> int:
    p = argparse.ArgumentParser()
    p.add_argument("--y4m", required=True)
    p.add_argument("--wav", required=True)
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--screenshot", required=True)
    p.add_argument("--seconds", type=float, default=5.5)
    p.add_argument("--grabs", type=int, default=8)
    p.add_argument("--timeout", type=float, default=150)
    args = p.parse_args()
    port = free_port()
    procs = []
    with tempfile.TemporaryDirectory() as profile:
        try:
            server = subprocess.Popen([sys.executable, "-m", "realtime.cli", "serve", "--webrtc", "--port", str(port),
                                       "--checkpoint", args.checkpoint, "--latency", "0.8"],
                                      stdout=open(Path(args.out) / "server.log", "w"), stderr=subprocess.STDOUT)
            procs.append(server)
            for _ in range(1200):  # the service is up (model loaded)
                try:
                    socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
                    break
                except OSError:
                    if server.poll() is not None:
                        raise SystemExit("the service exited; see server.log")
                    time.sleep(0.1)
            browser = subprocess.Popen([
                "chromium", "--headless", "--no-sandbox", "--disable-gpu", "--allow-loopback-in-peer-connection",
                "--use-fake-ui-for-media-stream", "--use-fake-device-for-media-stream",
                f"--use-file-for-fake-video-capture={args.y4m}", f"--use-file-for-fake-audio-capture={args.wav}",
                "--disable-background-networking", "--disable-component-update", "--no-first-run",
                "--autoplay-policy=no-user-gesture-required", "--window-size=900,700",
                f"--user-data-dir={profile}", "--remote-debugging-port=0",
                f"http://127.0.0.1:{port}/?autostart=1"],
                stdout=open(Path(args.out) / "chromium.log", "w"), stderr=subprocess.STDOUT)
            procs.append(browser)
            result = asyncio.run(drive(args, port, Path(profile)))
        finally:
            for proc in reversed(procs):
                proc.terminate()
                try:
                    proc.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    proc.kill()
    (Path(args.out) / "result.json").write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
