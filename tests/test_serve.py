"""`pibridge serve`: OpenPI's websocket protocol, checked with OpenPI's real client package (.venvs/openpi-client,
tools/openpi_client_env.sh) against the real CLI serving a tiny pi05_aloha OUT in the real LeRobot (.venvs/lr-0.6.1).

- wire: our msgpack-numpy bytes == openpi_client.msgpack_numpy's, both directions;
- the robot action the client gets == OpenPI's host side on the JAX stack for the same raw client dict and noise;
- healthz; bad requests -> a text frame + close of that connection only; a vanished client; 4 x 3 concurrent
  requests with no lost or mismatched reply; Ctrl-C -> exit 130.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent / "lerobot"))
sys.path.insert(0, str(Path(__file__).parent))
import harness as h  # noqa: E402

from pibridge.errors import PibridgeError  # noqa: E402
from pibridge.serve.wire import WireError, pack, unpack  # noqa: E402

pytestmark = pytest.mark.timeout(600)
DRIVER = Path(__file__).parent / "openpi_client" / "driver.py"
ROBOT_MAX_ABS = 1e-4  # as tests/test_lerobot_host.py: tiny float32 stacks agree to ~1e-5
PROFILE = "pi05_aloha"
CAMERAS = ("cam_high", "cam_left_wrist", "cam_right_wrist")
CAMERA_MAP = "base_0_rgb=cam_high,left_wrist_0_rgb=cam_left_wrist,right_wrist_0_rgb=cam_right_wrist"
N_REQ = 3

# Built identically in this interpreter (numpy 2) and in the client's (numpy 1.26): no RNG, exact values.
OBJECTS_CODE = """
a = np.arange(24, dtype=np.float32).reshape(2, 3, 4) / 7
OBJECTS = [
    {"state": np.linspace(-1, 1, 14), "images": {"cam_high": (np.arange(3 * 4 * 5) % 251).astype(np.uint8).reshape(3, 4, 5)},
     "prompt": "fold the towel", "noise": a},
    {"f16": np.array([1.5, -2.25], dtype=np.float16), "i8": np.array([-3, 4], dtype=np.int8), "u16": np.arange(3, dtype=np.uint16),
     "i64": np.array([[2**40]], dtype=np.int64), "b": np.array([True, False]), "be": np.arange(3, dtype=">f8"),
     "empty": np.zeros((0, 3), np.float32), "zero_d": np.array(2.5), "fortran": np.asfortranarray(a[0]),
     "strided": a[:, ::2, 1:]},
    {"f32": np.float32(0.1), "f64": np.float64(-1e300), "i32": np.int32(-7), "u8": np.uint8(255), "bool": np.bool_(True)},
    {"nested": [1, 2.5, None, True, "s", b"raw", (3, 4), {"k": np.zeros(2)}], "bytes_prompt": "caf\\u00e9".encode()},
]
"""


def _objects() -> list:
    ns: dict = {"np": np}
    exec(OBJECTS_CODE, ns)
    return ns["OBJECTS"]


def _client_python() -> Path:
    return h.venv_python("openpi-client")


def _same(a, b) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype and \
            a.shape == b.shape and np.array_equal(a, b)
    if isinstance(a, np.generic) or isinstance(b, np.generic):
        return type(a) is type(b) and a == b
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, list) and len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    return a == b and type(a) is type(b)


# --------------------------------------------------------------------------------------------------------- wire
def test_wire_bytes_match_the_real_openpi_client(tmp_path):
    objs = _objects()
    for i, o in enumerate(objs):
        (tmp_path / f"ours-{i}.bin").write_bytes(pack(o))
    code = tmp_path / "objects.py"
    code.write_text(OBJECTS_CODE)
    subprocess.run([str(_client_python()), str(DRIVER), "golden", str(code), str(tmp_path)], check=True, timeout=120)
    for i, o in enumerate(objs):
        theirs = (tmp_path / f"openpi-{i}.bin").read_bytes()
        assert pack(o) == theirs, f"object {i}: our bytes differ from openpi_client.msgpack_numpy.packb"
        back = unpack(theirs)
        expected = unpack(pack(o))  # tuples come back as lists (msgpack arrays), as with openpi_client
        assert _same(back, expected), i
        assert (tmp_path / f"repacked-{i}.bin").read_bytes() == theirs, f"object {i}: their decode of our bytes"
    arr = unpack(pack(objs[1]))["strided"]
    assert arr.shape == (2, 2, 3) and np.array_equal(arr, objs[1]["strided"])  # C-order bytes of a view


@pytest.mark.parametrize("data, match", [
    (b"\xc1", "not a msgpack frame"),
    (b"\x92\x01", "not a msgpack frame"),  # truncated array
    (pack({"a": 1}) + b"\x00", "not a msgpack frame"),  # trailing bytes
    ("text", "binary frames"),
])
def test_unpack_refuses_malformed_frames(data, match):
    with pytest.raises(WireError, match=match):
        unpack(data)


def _tagged(over: dict) -> bytes:
    import msgpack

    d = {b"__ndarray__": True, b"data": b"\x00" * 8, b"dtype": "<f4", b"shape": [2]}
    d.update(over)
    return msgpack.packb({"x": d})


@pytest.mark.parametrize("frame, match", [
    (_tagged({b"data": b"\x00" * 7}), "has 7 bytes; shape \\(2,\\) of float32 needs 8"),
    (_tagged({b"dtype": "|O"}), "refused"),
    (_tagged({b"dtype": "<c8"}), "refused"),
    (_tagged({b"dtype": "nonsense"}), "not a numpy dtype"),
    (_tagged({b"shape": [-1]}), "non-negative"),
    (_tagged({b"shape": "2"}), "non-negative"),
])
def test_unpack_refuses_bad_arrays(frame, match):
    with pytest.raises(WireError, match=match):
        unpack(frame)


def test_pack_refuses_what_openpi_refuses():
    for bad in (np.array([object()]), np.zeros(2, np.complex64), np.zeros(2, "V4")):
        with pytest.raises(WireError, match="cannot be sent"):
            pack({"x": bad})


# -------------------------------------------------------------------------------------- the served policy, end to end
def _request(seed: int, noise: bool = True) -> dict:
    """What OpenPI's ALOHA client sends (examples/aloha_real/env.py:35-53: CHW uint8, state float64) + a prompt."""
    rng = np.random.default_rng(seed)
    obs = {"state": rng.uniform(-0.6, 0.6, 14), "prompt": "fold the towel",
           "images": {c: rng.integers(0, 256, (3, 224, 224), dtype=np.uint8) for c in CAMERAS}}
    obs["state"][[6, 13]] = rng.uniform(0.1, 0.9, 2)  # grippers in [0, 1]
    if noise:
        obs["noise"] = rng.standard_normal((50, 32)).astype(np.float32)
    return obs


def _openpi_actions(ck: Path, obs: dict) -> np.ndarray:
    """OpenPI's Policy.infer on the JAX stack for the raw client dict, transcribed here by hand (AlohaInputs:
    images CHW -> HWC under OpenPI's slots; preprocess does adapt_to_pi, Normalize, tokenizing; then the model and
    the output transforms)."""
    from pibridge.configs import load_variant
    from pibridge.convert.detect import detect
    from pibridge.convert.profile import load_profile
    from pibridge.convert.reader import open_checkpoint
    from pibridge.parity.stacks.jax import run_policy
    from pibridge.parity.openpi_preprocess import postprocess_actions, preprocess
    from pibridge.tokenizer import load_tokenizer

    p = load_profile(PROFILE)
    c = open_checkpoint(ck)
    stats = c.norm_stats(p.asset_id)
    slots = dict(zip(CAMERAS, ("base_0_rgb", "left_wrist_0_rgb", "right_wrist_0_rgb")))
    raw = {"state": obs["state"], "prompt": obs["prompt"],
           "images": {slots[k]: np.transpose(v, (1, 2, 0)) for k, v in obs["images"].items()}}
    inputs = preprocess(raw, p, stats, load_tokenizer(h.TOKENIZER))
    actions = run_policy(c.read_tree(), load_variant(detect(c.leaves).variant.name), inputs, obs["noise"][None],
                         precision="float32")
    return postprocess_actions(np.asarray(actions), inputs.state, p, stats)[0]


def _env() -> dict:
    plugin = h.ROOT / "plugins" / "lerobot_policy_pibridge"
    return dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1", PYTHONWARNINGS="ignore",
                PYTHONPATH=os.pathsep.join([str(h.ROOT), str(plugin)]))


def _readme_line(flag: str) -> list[str]:
    """README's `pibridge serve <flag> ...` line (test_readme.py parses it; it runs here: a server never exits by
    itself, so test_readme_runs.py leaves it to this file)."""
    from test_readme import LINES

    lines = [shlex.split(x) for x in LINES if x.startswith(f"pibridge serve {flag} ")]
    assert lines, f"README.md shows no `pibridge serve {flag}` line"
    return lines[0][1:]


def _substitute(args: list[str], values: dict[str, str]) -> list[str]:
    """Placeholders (CKPT, OUT, paligemma.model) and option values (--port, --profile) -> this test's."""
    out = [a if a.startswith("--") else values.get(a, a) for a in args]
    for i, a in enumerate(out[:-1]):
        if a.startswith("--") and a in values:
            out[i + 1] = values[a]
    return out


def _start(args: list[str], log: Path):
    with open(log, "w") as f:
        return subprocess.Popen([sys.executable, "-m", "pibridge.cli", *args], stdout=f, stderr=subprocess.STDOUT,
                                env=_env(), cwd=h.ROOT)


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """README's two serve lines through the real CLI, started together: `serve --lerobot OUT` (the LeRobot env found
    by itself; --max-size 2 added for the oversized case) and `serve --openpi CKPT` (JAX, this venv); port 0."""
    h.venv_python("lr-0.6.1")
    _client_python()
    work = tmp_path_factory.mktemp("serve")
    ck = h.make_ckpt(work, "pi05", PROFILE, asset="trossen")
    out = h.make_tiny_out(work, "pi05", "0.6.1", "float32", profile=PROFILE, camera_map=CAMERA_MAP, ckpt=ck)
    values = {"OUT": str(out), "CKPT": str(ck), "paligemma.model": str(h.TOKENIZER), "--port": "0",
              "--profile": PROFILE}
    lr = _start(_substitute(_readme_line("--lerobot"), values) + ["--max-size", "2"], work / "serve.log")
    jx = _start(_substitute(_readme_line("--openpi"), values), work / "serve-openpi.log")
    try:
        port, openpi_port = h.wait_ready(lr, work / "serve.log"), h.wait_ready(jx, work / "serve-openpi.log")
        yield {"port": port, "proc": lr, "log": work / "serve.log", "work": work, "ckpt": ck, "out": out,
               "openpi_port": openpi_port, "openpi_proc": jx, "openpi_log": work / "serve-openpi.log"}
    finally:
        h.stop_server(lr)
        h.stop_server(jx)


@pytest.fixture(scope="module")
def session(served):
    """One run of the client driver (OpenPI's real client): serial, bad, vanished, load."""
    work = served["work"] / "client"
    work.mkdir()
    for i in range(N_REQ):
        (work / f"req-{i}.bin").write_bytes(pack(_request(i)))
    r0 = _request(0)
    no_state = {k: v for k, v in r0.items() if k != "state"}
    bad = {"missing_key": no_state, "wrong_shape": dict(r0, state=r0["state"][:13]),
           "wrong_dtype": dict(r0, state=np.array(["a"] * 14)),
           "chw_expected": dict(r0, images=dict(r0["images"], cam_high=np.zeros((224, 224, 3), np.uint8))),
           "no_prompt": {k: v for k, v in r0.items() if k != "prompt"},
           "bad_noise": dict(r0, noise=np.zeros((10, 32), np.float32))}
    for name, obs in bad.items():
        (work / f"bad-{name}.bin").write_bytes(pack(obs))
    t0 = time.perf_counter()
    r = subprocess.run([str(_client_python()), str(DRIVER), "session", str(served["port"]), str(work), str(N_REQ),
                        str(served["openpi_port"])],
                       capture_output=True, text=True, timeout=500)
    assert r.returncode == 0, r.stderr[-4000:]
    res = json.loads((work / "session.json").read_text())
    res["wall_s"] = time.perf_counter() - t0
    res["work"] = work
    return res


def test_healthz(served):
    with urllib.request.urlopen(f"http://127.0.0.1:{served['port']}/healthz", timeout=10) as resp:
        assert resp.status == 200 and resp.read() == b"OK\n"


def test_openpi_client_gets_openpi_actions(served, session):
    work = session["work"]
    assert session["metadata"] == {"reset_pose": [0, -1.5, 1.5, 0, 0, 0]}  # pi05_aloha's policy_metadata
    reply = unpack((work / "reply-0.bin").read_bytes())
    assert set(reply) == {"actions", "policy_timing", "server_timing"}, set(reply)  # OpenPI's reply keys
    got = reply["actions"]
    assert got.dtype == np.float64 and got.shape == (50, 14)
    expected = _openpi_actions(served["ckpt"], _request(0))
    err = float(np.abs(got - expected).max())
    print(f"served LeRobot vs OpenPI host side on the JAX stack: max-abs {err:.2e}")
    assert err <= ROBOT_MAX_ABS, err
    # `serve --openpi` (the JAX stack behind the same protocol) replies what OpenPI's host side computes here
    assert session["openpi_metadata"] == session["metadata"]
    jax_reply = unpack((work / "openpi-reply-0.bin").read_bytes())
    assert set(jax_reply) == set(reply) and jax_reply["actions"].dtype == np.float64
    jax_err = float(np.abs(jax_reply["actions"] - expected).max())
    print(f"served JAX stack vs OpenPI host side in-process: max-abs {jax_err:.2e}; vs served LeRobot "
          f"{float(np.abs(jax_reply['actions'] - got).max()):.2e}")
    assert jax_err <= 1e-6, jax_err
    # the noise is what decides the reply: another request's noise gives another action
    other = unpack((work / "reply-1.bin").read_bytes())["actions"]
    assert float(np.abs(other - got).max()) > 100 * ROBOT_MAX_ABS


def test_bad_requests_close_only_their_connection(session):
    bad = session["bad"]
    expect = {"malformed": "not a msgpack frame", "text_frame": "binary frames", "missing_key": "no 'state' key",
              "wrong_shape": "state has shape (13,)", "wrong_dtype": "'state' is a <U1 array",
              "chw_expected": "has shape (224, 224, 3)", "no_prompt": "--default-prompt",
              "bad_noise": "'noise' is float32 (10, 32)"}
    for name, got in bad.items():
        print(f"bad request {name}: close {got['close_code']}, text {(got['text'] or '').splitlines()[:1]}, "
              f"reason {got['close_reason']!r}")
    for name, needle in expect.items():
        got = bad[name]
        assert got["text"] is not None and needle in got["text"] and "bad request" in got["text"], (name, got)
        assert got["close_code"] == 1008 and not got["binary"], (name, got)
    big = bad["oversized"]  # refused by the websocket layer: close 1009, the limit in the reason
    assert big["text"] is None and big["close_code"] == 1009 and "exceeds limit" in big["close_reason"], big
    # the first client, connected before all of these, is still served, with the same reply as before
    again = unpack((session["work"] / "reply-again-0.bin").read_bytes())["actions"]
    assert np.array_equal(again, unpack((session["work"] / "reply-0.bin").read_bytes())["actions"])


def test_concurrent_clients_get_their_own_replies(session):
    load, work = session["load"], session["work"]
    assert load["errors"] == [] and load["hung"] == 0, load
    serial = [unpack((work / f"reply-{i}.bin").read_bytes())["actions"] for i in range(N_REQ)]
    files = sorted(work.glob("load-*.bin"))
    assert len(files) == load["clients"] * load["per_client"] == 12
    for f in files:
        i = int(f.stem.rsplit("req", 1)[1])
        got = unpack(f.read_bytes())["actions"]
        assert np.array_equal(got, serial[i]), f.name  # inference is serialized: bit-identical to the serial reply
    print(f"load: {load['clients']} clients x {load['per_client']} requests in {load['seconds']:.1f} s "
          f"({len(files) / load['seconds']:.1f} replies/s); whole client session {session['wall_s']:.1f} s")
    assert load["seconds"] < 120


def test_native_size_client_gets_openpi_actions(served):
    """Cameras at their own sizes (CHW: cam_high 480x640 as ALOHA's, the wrists 240x320; all three at 480x640 would
    pass this server's --max-size 2) to an OUT without --openpi-resize: the serve glue resizes with OpenPI's resize
    (serve/policy.py; its startup line says so), so the client still gets OpenPI's action."""
    from pibridge.serve.server import IMAGES_BY_HOST

    work = served["work"] / "native"
    work.mkdir()
    req = _request(7)
    rng = np.random.default_rng(7)
    req["images"] = {c: rng.integers(0, 256, (3, 480, 640) if c == "cam_high" else (3, 240, 320), dtype=np.uint8)
                     for c in CAMERAS}
    (work / "req.bin").write_bytes(pack(req))
    r = subprocess.run([str(_client_python()), str(DRIVER), "replies", str(served["port"]), str(work / "meta.json"),
                        str(work / "req.bin"), str(work / "reply.bin")], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-4000:]
    got = unpack((work / "reply.bin").read_bytes())["actions"]
    err = float(np.abs(got - _openpi_actions(served["ckpt"], req)).max())
    print(f"served LeRobot at 480x640 vs OpenPI host side: max-abs {err:.2e}")
    assert err <= ROBOT_MAX_ABS, err
    assert f"pibridge serve: images {IMAGES_BY_HOST}" in served["log"].read_text()


@pytest.mark.parametrize("which", ["", "openpi_"])
def test_ctrl_c_stops_the_server_with_130(served, session, which):
    proc, log, port = served[f"{which}proc"], served[f"{which}log"], served[f"{which}port"]
    proc.send_signal(signal.SIGINT)
    assert proc.wait(timeout=60) == 130, log.read_text()[-2000:]
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=5)
    assert "stopped by SIGINT after" in log.read_text() and "Traceback" not in log.read_text(), log.read_text()[-2000:]


# ---------------------------------------------------------------------------------------------------- bad input
def _cli(*args) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "pibridge.cli", "serve", *args], capture_output=True, text=True,
                          env=_env(), cwd=h.ROOT, timeout=120)


@pytest.mark.parametrize("args, needle", [
    ((), "exactly one policy"),
    (("--lerobot", "/nonexistent/out"), "does not exist"),
    (("--openpi", "/nonexistent/ck"), "--profile"),
    (("--lerobot", ".", "--profile", "pi05_aloha"), "--profile with --lerobot"),
    (("--lerobot", "."), "has no pibridge.json"),
    (("--lerobot", ".", "--port", "70000"), "0-65535"),
])
def test_cli_bad_input_exits_2(args, needle):
    r = _cli(*args)
    assert r.returncode == 2 and needle in r.stderr, r.stderr


def test_port_in_use_is_a_clear_error():
    import asyncio
    import socket

    from pibridge.serve.server import PolicyServer

    class Echo:
        metadata: dict = {}

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        port = s.getsockname()[1]
        with pytest.raises(PibridgeError, match=f"cannot listen on 127.0.0.1:{port}") as err:
            asyncio.run(PolicyServer(Echo(), "127.0.0.1", port).run())
        assert "--port" in err.value.fix
