"""Test driver run in .venvs/openpi-client (tools/openpi_client_env.sh): OpenPI's REAL client package against a
`pibridge serve` server. Requests come as files in OpenPI's wire format (decoded here by openpi_client's own
msgpack_numpy), replies are written back the same way (packed by openpi_client's own packer).

    driver.py golden CODE_FILE OUT_DIR          pack the objects CODE_FILE builds with openpi_client.msgpack_numpy
    driver.py session PORT WORK N_REQ OPENPI_PORT   the whole client session of tests/test_serve.py (see session())
    driver.py replies PORT META_JSON REQ REPLY [REQ REPLY ...]   one WebsocketClientPolicy: the server's metadata to
                                                META_JSON, then each request file's reply (tests/lerobot/harness.py)
"""

from __future__ import annotations

import json
import sys
import threading
import time
from pathlib import Path

import numpy as np
import websockets.sync.client
from openpi_client import msgpack_numpy
from openpi_client.websocket_client_policy import WebsocketClientPolicy


def golden(code_file: str, out_dir: str) -> None:
    """Golden bytes: each object of the shared CODE_FILE packed by the real encoder; and the real decoder's view of
    the bytes pibridge wrote (ours-<i>.bin), re-packed, so the caller can check the decode side too."""
    ns: dict = {"np": np}
    exec(Path(code_file).read_text(), ns)
    out = Path(out_dir)
    for i, obj in enumerate(ns["OBJECTS"]):
        (out / f"openpi-{i}.bin").write_bytes(msgpack_numpy.packb(obj))
        ours = out / f"ours-{i}.bin"
        if ours.exists():
            (out / f"repacked-{i}.bin").write_bytes(msgpack_numpy.packb(msgpack_numpy.unpackb(ours.read_bytes())))


def _raw(uri: str):
    ws = websockets.sync.client.connect(uri, compression=None, max_size=None)
    msgpack_numpy.unpackb(ws.recv())  # the metadata frame
    return ws


def _bad(uri: str, payload) -> dict:
    """Send one bad frame on a fresh connection: what came back (text / bytes) and how the connection closed."""
    ws = _raw(uri)
    got = {"text": None, "binary": False, "close_code": None, "close_reason": None}
    try:
        ws.send(payload)
        reply = ws.recv(timeout=60)
        if isinstance(reply, str):
            got["text"] = reply
        else:
            got["binary"] = True
        ws.recv(timeout=60)  # the close must follow
    except websockets.ConnectionClosed as err:
        got["close_code"], got["close_reason"] = (err.rcvd.code, err.rcvd.reason) if err.rcvd else (None, None)
    finally:
        ws.close()
    return got


def session(port: str, work: str, n_req: str, openpi_port: str) -> None:
    """0. metadata + the reply to req-0.bin from the `serve --openpi` server (openpi-reply-0.bin);
    1. metadata + serial replies to req-<i>.bin on one WebsocketClientPolicy (reply-<i>.bin);
    2. bad requests, each on its own connection (bad-*.bin / the cases below), while that first client stays open;
    3. the first client is served again (reply-again-0.bin);
    4. load: 4 clients x 3 requests concurrently (load-<client>-<k>.bin + which request each was);
    writes session.json."""
    work, n = Path(work), int(n_req)
    reqs = [msgpack_numpy.unpackb((work / f"req-{i}.bin").read_bytes()) for i in range(n)]
    uri = f"ws://127.0.0.1:{port}"
    out: dict = {}
    jax = WebsocketClientPolicy("127.0.0.1", int(openpi_port))
    out["openpi_metadata"] = jax.get_server_metadata()
    (work / "openpi-reply-0.bin").write_bytes(msgpack_numpy.packb(jax.infer(reqs[0])))
    good = WebsocketClientPolicy("127.0.0.1", int(port))
    out["metadata"] = good.get_server_metadata()
    for i, r in enumerate(reqs):
        (work / f"reply-{i}.bin").write_bytes(msgpack_numpy.packb(good.infer(r)))

    cases = {"malformed": b"\xc1\x00 not msgpack", "text_frame": "hello"}
    for f in sorted(work.glob("bad-*.bin")):
        cases[f.stem[4:]] = f.read_bytes()
    cases["oversized"] = b"\x00" * (2 * 2**20 + 1)  # the server runs with --max-size 2
    out["bad"] = {name: _bad(uri, payload) for name, payload in cases.items()}
    ws = _raw(uri)  # a client that vanishes with its request in flight
    ws.send(msgpack_numpy.packb(reqs[0]))
    ws.close()
    (work / "reply-again-0.bin").write_bytes(msgpack_numpy.packb(good.infer(reqs[0])))

    clients, per = 4, 3
    errors: list[str] = []

    def run(c: int) -> None:
        try:
            pol = WebsocketClientPolicy("127.0.0.1", int(port))
            for k in range(per):
                i = (c + k) % n
                (work / f"load-{c}-{k}-req{i}.bin").write_bytes(msgpack_numpy.packb(pol.infer(reqs[i])))
        except Exception as err:  # noqa: BLE001
            errors.append(f"client {c}: {err!r}")

    t0 = time.perf_counter()
    threads = [threading.Thread(target=run, args=(c,)) for c in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=240)
    out["load"] = {"clients": clients, "per_client": per, "seconds": time.perf_counter() - t0, "errors": errors,
                   "hung": sum(t.is_alive() for t in threads)}
    (work / "session.json").write_text(json.dumps(out, indent=1))


def replies(port: str, meta_json: str, *pairs: str) -> None:
    pol = WebsocketClientPolicy("127.0.0.1", int(port))
    Path(meta_json).write_text(json.dumps(pol.get_server_metadata()))
    for req, reply in zip(pairs[::2], pairs[1::2]):
        Path(reply).write_bytes(msgpack_numpy.packb(pol.infer(msgpack_numpy.unpackb(Path(req).read_bytes()))))


if __name__ == "__main__":
    {"golden": golden, "session": session, "replies": replies}[sys.argv[1]](*sys.argv[2:])
