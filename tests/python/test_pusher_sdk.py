"""The `pusher` Python server SDK against a real `herald serve`: trigger an event that a raw
Pusher-protocol WebSocket client receives, and query channels."""

import asyncio
import json
import os
import socket
import subprocess
import tempfile
import time
import unittest
import urllib.request

import pusher
import websockets

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
HERALD_BIN = os.environ.get("HERALD_BIN", os.path.join(ROOT, "target", "debug", "herald"))
# The Python SDK accepts only numeric app ids (as Pusher issues them).
APP_ID, KEY, SECRET = "123456", "app-key", "app-secret-123"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PusherPythonSdk(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.dir = tempfile.TemporaryDirectory()
        config = os.path.join(cls.dir.name, "herald.toml")
        with open(config, "w") as f:
            f.write(f'[[apps]]\nid = "{APP_ID}"\nkey = "{KEY}"\nsecret = "{SECRET}"\n')
        cls.port, admin = free_port(), free_port()
        cls.proc = subprocess.Popen(
            [HERALD_BIN, "serve", "--config", config, "--listen", f"127.0.0.1:{cls.port}",
             "--admin-listen", f"127.0.0.1:{admin}", "--log-level", "warn"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            # HERALD_* variables are configuration to herald (HERALD_BIN is not a key).
            env={k: v for k, v in os.environ.items() if not k.startswith("HERALD_")})
        deadline = time.time() + 15
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{admin}/ready", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError("herald did not become ready")
            time.sleep(0.05)
        cls.sdk = pusher.Pusher(app_id=APP_ID, key=KEY, secret=SECRET,
                                host="127.0.0.1", port=cls.port, ssl=False)

    @classmethod
    def tearDownClass(cls):
        cls.proc.terminate()
        cls.proc.wait(timeout=15)
        cls.dir.cleanup()

    def test_trigger_reaches_a_subscriber_and_channels_are_queried(self):
        async def scenario():
            url = f"ws://127.0.0.1:{self.port}/app/{KEY}?protocol=7&client=python&version=1"
            async with websockets.connect(url) as ws:
                hello = json.loads(await asyncio.wait_for(ws.recv(), 5))
                self.assertEqual(hello["event"], "pusher:connection_established")
                await ws.send(json.dumps({"event": "pusher:subscribe", "data": {"channel": "py-news"}}))
                ok = json.loads(await asyncio.wait_for(ws.recv(), 5))
                self.assertEqual(ok["event"], "pusher_internal:subscription_succeeded")

                # The SDK is synchronous: run it off the event loop.
                await asyncio.to_thread(self.sdk.trigger, "py-news", "story", {"title": "hi"})
                while True:
                    msg = json.loads(await asyncio.wait_for(ws.recv(), 5))
                    if msg["event"] == "story":
                        break
                self.assertEqual(msg["channel"], "py-news")
                self.assertEqual(json.loads(msg["data"]), {"title": "hi"})

                channels = await asyncio.to_thread(self.sdk.channels_info, prefix_filter="py-")
                self.assertIn("py-news", channels["channels"])
                info = await asyncio.to_thread(self.sdk.channel_info, "py-news", ["subscription_count"])
                self.assertEqual(info["occupied"], True)
                self.assertEqual(info["subscription_count"], 1)

        asyncio.run(scenario())

    def test_a_wrong_secret_is_refused(self):
        bad = pusher.Pusher(app_id=APP_ID, key=KEY, secret="not-the-secret",
                            host="127.0.0.1", port=self.port, ssl=False)
        with self.assertRaises(pusher.errors.PusherBadAuth):
            bad.trigger("py-news", "story", {})


if __name__ == "__main__":
    unittest.main()
