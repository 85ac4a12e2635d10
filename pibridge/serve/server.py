"""OpenPI's websocket policy server, for pibridge's served policies (asyncio, the `websockets` package).

Protocol as OpenPI's (Physical-Intelligence/openpi@15a9616 src/openpi/serving/websocket_policy_server.py:36-90),
so openpi_client.WebsocketClientPolicy works unchanged:
  - no compression; on connect the server sends the policy metadata (a msgpack map) first (:52);
  - then per binary frame: unpack (pibridge.serve.wire) -> policy.infer -> the reply map plus
    "server_timing" {"infer_ms", "prev_total_ms" from the 2nd request on} (:57-72);
  - `GET /healthz` answers 200 "OK\\n" (:86-90).
Where pibridge differs (robustness; a well-formed client sees no difference):
  - a bad request (not msgpack, a text frame, wrong keys / shapes / dtypes) gets a text frame "pibridge serve: bad
    request: ..." and THAT connection is closed (1008 policy violation); an unexpected error in inference gets the
    traceback text and close 1011, as OpenPI. The client raises on a text reply (websocket_client_policy.py:47-54).
    Other connections keep being served;
  - frames above --max-size MiB are refused by the websocket layer itself: close 1009 "message too big" with the
    size in the reason (no text frame can precede that close); OpenPI sets no limit (max_size=None, :44);
  - inference is serialized: one model, one worker thread, fed by a bounded queue (handlers wait for a place:
    back-pressure, not refusal); a request whose client is gone before its turn is dropped, and a reply to a
    vanished client is discarded;
  - SIGINT / SIGTERM: stop accepting, close connections (1001 going away), exit 130 / 143.

Run inside the policy's environment (the CLI starts it): python -m pibridge.serve.server --lerobot OUT --port P.
"""

from __future__ import annotations

import asyncio
import http
import logging
import signal
import sys
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from pibridge.errors import PibridgeError
from pibridge.serve.wire import WireError, pack, unpack

log = logging.getLogger("pibridge.serve")
DEFAULT_MAX_SIZE_MB = 64.0  # a request: 4 cameras of 720x1280x3 uint8 are 11 MB
DEFAULT_QUEUE = 16
READY = "pibridge serve: listening on"  # the line the CLI prints once the port is bound (tests wait for it)
IMAGES_BY_STEP = "resized by OUT's pibridge_openpi_resize step (the client's size passed through)"
IMAGES_BY_HOST = ("resized to 224x224 here with OpenPI's resize (OUT has no pibridge_openpi_resize step; "
                  "convert with --openpi-resize to have it in OUT)")
BAD_REQUEST, INTERNAL_ERROR = 1008, 1011  # RFC 6455 close codes: policy violation, internal error


class PolicyServer:
    def __init__(self, policy, host: str = "127.0.0.1", port: int = 8000, *,
                 max_size_mb: float = DEFAULT_MAX_SIZE_MB, queue_size: int = DEFAULT_QUEUE):
        if max_size_mb <= 0 or queue_size < 1:
            raise PibridgeError(f"--max-size {max_size_mb} / --queue-size {queue_size}",
                                "a positive message size in MiB and a queue of at least 1", "pass positive values")
        self.policy, self.host, self.port = policy, host, port
        self.max_size = int(max_size_mb * 2**20)
        self.queue_size = queue_size
        self.metadata = pack(policy.metadata or {})
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pibridge-infer")
        self.served = 0

    # -- inference, one at a time ---------------------------------------------------------------------------------
    async def _worker(self, queue: asyncio.Queue) -> None:
        loop = asyncio.get_running_loop()
        while True:
            obs, fut, ws = await queue.get()
            try:
                if fut.done() or _closed(ws):  # its client is gone: no inference for nobody
                    if not fut.done():
                        fut.cancel()
                    continue
                try:
                    reply = await loop.run_in_executor(self.executor, self.policy.infer, obs)
                except Exception as err:  # noqa: BLE001  handed to the connection that asked
                    if not fut.done():
                        fut.set_exception(err)
                else:
                    if not fut.done():
                        fut.set_result(reply)
            finally:
                queue.task_done()

    # -- one connection -------------------------------------------------------------------------------------------
    async def _handler(self, ws) -> None:
        import websockets

        peer = ws.remote_address
        log.info("connection from %s opened", peer)
        try:
            await ws.send(self.metadata)
            prev_total = None
            while True:
                try:
                    msg = await ws.recv()
                except websockets.ConnectionClosed as err:
                    rcvd = err.rcvd or err.sent
                    log.info("connection from %s closed (%s)", peer, rcvd.code if rcvd else "no close frame")
                    return
                t0 = time.monotonic()
                try:
                    obs = unpack(msg)
                    fut = asyncio.get_running_loop().create_future()
                    self.pending.add(fut)
                    try:
                        await self.queue.put((obs, fut, ws))
                        t_infer = time.monotonic()
                        reply = await fut
                        t_infer = time.monotonic() - t_infer
                    finally:
                        self.pending.discard(fut)
                except WireError as err:
                    return await self._refuse(ws, f"pibridge serve: bad request: {err}", BAD_REQUEST)
                except PibridgeError as err:  # the client dict's checks say "bad request: ..." themselves
                    return await self._refuse(ws, f"pibridge serve: {err.render()}", BAD_REQUEST)
                except asyncio.CancelledError:
                    raise
                except Exception:  # noqa: BLE001  OpenPI's behaviour: the traceback as text, then close (:74-80)
                    return await self._refuse(ws, traceback.format_exc(), INTERNAL_ERROR)
                reply = dict(reply)
                reply["server_timing"] = {"infer_ms": t_infer * 1000}
                if prev_total is not None:
                    reply["server_timing"]["prev_total_ms"] = prev_total * 1000
                await ws.send(pack(reply))
                self.served += 1
                prev_total = time.monotonic() - t0
        except websockets.ConnectionClosed:
            log.info("connection from %s vanished", peer)

    async def _refuse(self, ws, text: str, code: int) -> None:
        import websockets

        log.warning("refused a request from %s: %s", ws.remote_address, text.strip().splitlines()[-1][:300])
        try:
            await ws.send(text)
            await ws.close(code=code, reason="bad request (see the previous text frame)" if code == BAD_REQUEST
                           else "internal server error (traceback in the previous text frame)")
        except websockets.ConnectionClosed:
            pass

    # -- lifecycle ------------------------------------------------------------------------------------------------
    async def run(self, on_ready=None) -> int:
        """Serve until SIGINT / SIGTERM; returns the exit code (130 / 143)."""
        from websockets.asyncio.server import serve

        loop = asyncio.get_running_loop()
        stop: asyncio.Future = loop.create_future()
        for s in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(s, lambda s=s: stop.done() or stop.set_result(s))
        self.queue = asyncio.Queue(maxsize=self.queue_size)
        self.pending: set[asyncio.Future] = set()
        worker = asyncio.create_task(self._worker(self.queue))
        try:
            server = await serve(self._handler, self.host, self.port, compression=None, max_size=self.max_size,
                                 process_request=_health_check)
        except OSError as err:
            worker.cancel()
            raise PibridgeError(f"cannot listen on {self.host}:{self.port}: {err.strerror or err}",
                                "a free port on an address of this machine",
                                "pick another --port (0: any free port), or stop what is using it") from None
        self.port = server.sockets[0].getsockname()[1]
        if on_ready is not None:
            on_ready(self)
        try:
            signum = await stop
        finally:
            server.close()  # closes open connections with 1001 going away
            worker.cancel()
            for fut in list(self.pending):  # handlers waiting for a reply end too (wait_closed waits for them)
                fut.cancel()
            await server.wait_closed()
            self.executor.shutdown(wait=False, cancel_futures=True)
        log.info("stopped by %s after %d replies", signal.Signals(signum).name, self.served)
        return 128 + signum


def _closed(ws) -> bool:
    from websockets.protocol import State

    return ws.state in (State.CLOSING, State.CLOSED)


def _health_check(connection, request):
    if request.path == "/healthz":
        return connection.respond(http.HTTPStatus.OK, "OK\n")
    return None


def announce(server: PolicyServer) -> None:
    print(f"{READY} ws://{server.host}:{server.port} (GET /healthz; metadata {server.policy.metadata or {}}; "
          f"max message {server.max_size / 2**20:g} MiB; Ctrl-C stops)", file=sys.stderr, flush=True)


def serve_policy(policy, host: str, port: int, *, max_size_mb: float = DEFAULT_MAX_SIZE_MB,
                 queue_size: int = DEFAULT_QUEUE) -> int:
    """Blocking: serve `policy` until SIGINT / SIGTERM; returns 130 / 143."""
    if not log.handlers:  # our own lines only (LeRobot's and websockets' loggers keep their settings)
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("pibridge serve: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False
    server = PolicyServer(policy, host, port, max_size_mb=max_size_mb, queue_size=queue_size)
    return asyncio.run(server.run(on_ready=announce))


def main(argv: list[str] | None = None) -> int:
    """`python -m pibridge.serve.server --lerobot OUT ...`: the LeRobot side, run in a LeRobot env by the CLI."""
    import argparse
    import os
    import runpy

    ap = argparse.ArgumentParser(prog="python -m pibridge.serve.server",
                                 description="Serve a converted OUT (real LeRobot) over OpenPI's websocket protocol.")
    ap.add_argument("--lerobot", required=True, help="policy directory written by `pibridge convert`")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=8000)
    ap.add_argument("--default-prompt")
    ap.add_argument("--device")
    ap.add_argument("--max-size", type=float, default=DEFAULT_MAX_SIZE_MB, help="MiB")
    ap.add_argument("--queue-size", type=int, default=DEFAULT_QUEUE)
    ap.add_argument("--no-fixes", action="store_true")
    a = ap.parse_args(argv)
    for f in filter(None, os.environ.get("PIBRIDGE_LEROBOT_PRELOAD", "").split(os.pathsep)):
        runpy.run_path(f, run_name="__pibridge_preload__")
    try:
        from pibridge.serve.policy import LeRobotServedPolicy

        policy = LeRobotServedPolicy(a.lerobot, default_prompt=a.default_prompt, device=a.device,
                                     fixes=not a.no_fixes)
        print(f"pibridge serve: images {IMAGES_BY_HOST if policy.resizes_on_host else IMAGES_BY_STEP}",
              file=sys.stderr, flush=True)
        return serve_policy(policy, a.host, a.port, max_size_mb=a.max_size, queue_size=a.queue_size)
    except PibridgeError as err:
        print(f"pibridge: error: {err.render()}", file=sys.stderr)
        return err.exit_code
    except KeyboardInterrupt:  # Ctrl-C while loading (the server's own handler takes over once it listens)
        print("pibridge serve: interrupted while loading", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
