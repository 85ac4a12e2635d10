"""`pibridge serve`: the command. --lerobot OUT starts pibridge.serve.server inside the LeRobot environment (found
as `parity run --torch-stack lerobot` finds it) and waits for it, passing Ctrl-C on; --openpi CKPT serves the JAX
stack in this Python. Bad input exits 2 before anything heavy is imported."""

from __future__ import annotations

import signal
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from pibridge.errors import PibridgeError
from pibridge.serve.server import DEFAULT_MAX_SIZE_MB, DEFAULT_QUEUE


@dataclass(frozen=True)
class ServeRequest:
    lerobot: Path | None = None
    openpi: Path | None = None
    profile: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    default_prompt: str | None = None
    tokenizer: Path | None = None
    asset_id: str | None = None
    precision: str = "float32"
    lerobot_python: str | None = None
    device: str | None = None
    max_size_mb: float = DEFAULT_MAX_SIZE_MB
    queue_size: int = DEFAULT_QUEUE
    fixes: bool = True


def check_request(r: ServeRequest) -> None:
    if (r.lerobot is None) == (r.openpi is None):
        raise PibridgeError("`pibridge serve` needs exactly one policy" + (", got --lerobot and --openpi"
                                                                          if r.lerobot else ""),
                            "--lerobot OUT (a converted policy, run by LeRobot) or --openpi CKPT --profile NAME",
                            "pass one of them")
    if not 0 <= r.port <= 65535:
        raise PibridgeError(f"--port {r.port}", "0-65535 (0: any free port, printed on start)", "pick a port")
    if r.lerobot is not None:
        given = [f for f, v in (("--profile", r.profile), ("--tokenizer", r.tokenizer), ("--asset-id", r.asset_id))
                 if v is not None] + (["--precision"] if r.precision != "float32" else [])
        if given:
            raise PibridgeError(f"{', '.join(given)} with --lerobot", "OUT's own profile, tokenizer and norm stats "
                                "(recorded by convert)", f"drop {', '.join(given)}, or serve --openpi CKPT")
        if not (r.lerobot / "pibridge.json").is_file():
            what = "does not exist" if not r.lerobot.exists() else "has no pibridge.json"
            raise PibridgeError(f"--lerobot {r.lerobot} {what}", "a policy directory written by `pibridge convert`",
                                "convert the checkpoint first: pibridge convert CKPT OUT --profile NAME ...")
    else:
        if r.profile is None:
            raise PibridgeError("--openpi without --profile", "the OpenPI config the checkpoint was trained with",
                                "pass --profile NAME, e.g. --profile pi05_droid")
        if r.lerobot_python is not None or r.device is not None:
            raise PibridgeError("--lerobot-python / --device with --openpi", "them only with --lerobot",
                                "drop them (the JAX stack runs in this Python)")


def serve_command(r: ServeRequest) -> int:
    check_request(r)
    return _serve_lerobot(r) if r.lerobot is not None else _serve_openpi(r)


def _serve_openpi(r: ServeRequest) -> int:
    from pibridge.serve.policy import OpenPIServedPolicy
    from pibridge.serve.server import serve_policy

    print(f"pibridge serve: loading {r.openpi} on the JAX stack ({r.profile}, {r.precision})", file=sys.stderr,
          flush=True)
    policy = OpenPIServedPolicy(r.openpi, r.profile, tokenizer=r.tokenizer, default_prompt=r.default_prompt,
                                asset_id=r.asset_id, precision=r.precision)
    return serve_policy(policy, r.host, r.port, max_size_mb=r.max_size_mb, queue_size=r.queue_size)


_PROBE = ("import importlib.util as u, sys; sys.exit(sum(2 ** i for i, m in enumerate(('websockets', 'msgpack')) "
          "if u.find_spec(m) is None))")


def _serve_lerobot(r: ServeRequest) -> int:
    from pibridge.parity.stacks.lerobot.capture import lerobot_python

    py = lerobot_python(r.lerobot_python, flag="--lerobot-python")
    rc = subprocess.run([py, "-c", _PROBE], capture_output=True, timeout=120).returncode
    if rc:
        lacks = " and ".join(m for i, m in enumerate(("websockets", "msgpack")) if rc & 2 ** i)
        raise PibridgeError(f"LeRobot interpreter {py} cannot import {lacks}", "pibridge's [serve] extra there",
                            f"{py} -m pip install 'websockets>=14' 'msgpack>=1.0' (or `make lerobot-env`)")
    argv = [py, "-m", "pibridge.serve.server", "--lerobot", str(r.lerobot), "--host", r.host, "--port", str(r.port),
            "--max-size", str(r.max_size_mb), "--queue-size", str(r.queue_size)]
    argv += ["--default-prompt", r.default_prompt] if r.default_prompt is not None else []
    argv += ["--device", r.device] if r.device else []
    argv += [] if r.fixes else ["--no-fixes"]
    print(f"pibridge serve: loading {r.lerobot} in {py}", file=sys.stderr, flush=True)
    proc = subprocess.Popen(argv)
    try:
        return proc.wait()
    except BaseException:  # Ctrl-C / SIGTERM here (the CLI's handler): stop the server the same way, then go on
        stop_server(proc, timeout=20)
        raise


def stop_server(proc: subprocess.Popen, timeout: float = 30) -> None:
    """Stop a server process as Ctrl-C does (SIGINT: it closes its connections and exits 130); kill it after
    `timeout` s."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
