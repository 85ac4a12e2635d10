"""The `pibridge` command line. Imports lazily: `pibridge --help` must not import jax, torch or tensorstore."""

from __future__ import annotations

import signal
import sys
import threading
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from pibridge.parity.stacks import STACKS, torch_sides
from pibridge.vocab import DEFAULT_LEROBOT_VERSION, DTYPES, canonical_dtype, exit_code_table, precision_token

EXIT_CODES_HELP = "\b\nExit codes:\n" + exit_code_table()

app = typer.Typer(
    name="pibridge",
    help="Convert OpenPI pi0 / pi0.5 JAX checkpoints to LeRobot's PyTorch layout and prove numeric parity, stage by stage.",
    epilog=EXIT_CODES_HELP,
    no_args_is_help=True,
    add_completion=True,  # --install-completion / --show-completion (bash, zsh, fish, PowerShell)
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

_DEBUG = False


def _version_text() -> str:
    from importlib import metadata

    from pibridge import __version__
    from pibridge.convert.lerobot_config import lerobot_versions, version_data

    versions = {v: version_data(v) for v in lerobot_versions()}
    targets = ", ".join(f"{v} (transformers key layout {d['transformers_default']})" for v, d in versions.items())
    try:
        installed = metadata.version("pibridge")
    except metadata.PackageNotFoundError:
        installed = "not installed (running from source)"
    return (f"pibridge {__version__} (installed distribution: {installed})\n"
            f"default target: LeRobot {DEFAULT_LEROBOT_VERSION}, transformers key layout "
            f"{versions[DEFAULT_LEROBOT_VERSION]['transformers_default']} (convert --lerobot-version / "
            f"--transformers-version)\nknown targets: {targets}")


def _print_version(value: bool) -> None:
    if value:
        print(_version_text())
        raise typer.Exit(0)


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show Python tracebacks for errors (anywhere on the line; exit codes unchanged).")] = False,
    version: Annotated[bool, typer.Option("--version", callback=_print_version, is_eager=True, help="Print the version and the default LeRobot / transformers targets.")] = False,
) -> None:
    global _DEBUG
    _DEBUG = _DEBUG or debug


def _dtype(value: str) -> str:
    """A dtype in any accepted spelling (pibridge.vocab) -> the canonical one; else a usage error (exit 2)."""
    from pibridge.errors import PibridgeError

    try:
        return canonical_dtype(value)
    except PibridgeError:
        raise typer.BadParameter(f"{value!r}: expected {'|'.join(DTYPES)} (bf16 is accepted for bfloat16)") from None


def _complete_dtype(incomplete: str) -> list[str]:
    return [d for d in DTYPES if d.startswith(incomplete)]


DTYPE = {"parser": _dtype, "metavar": "[" + "|".join(DTYPES) + "]", "autocompletion": _complete_dtype}
DTYPE_HELP = " Accepts bf16 for bfloat16."


def _deprecated(old: str, new: str) -> None:
    print(f"pibridge: note: {old} is deprecated; use {new} (same meaning)", file=sys.stderr)


class Layout(str, Enum):
    released = "released"
    training = "training"


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="Checkpoint directory to create (OpenPI step layout: params/ + assets/).")],
    variant: Annotated[str, typer.Option(help="Model sizes: pi0, pi05, tiny-pi0, tiny-pi05 (configs/variants).")] = "tiny-pi05",
    seed: Annotated[int, typer.Option(help="Seed of the version-stable weight formula (not a framework RNG).")] = 0,
    dtype: Annotated[str, typer.Option(**DTYPE, help="Stored dtype of every leaf." + DTYPE_HELP)] = "float32",
    layout: Annotated[Optional[Layout], typer.Option(help="released: {'params': tree}; training: CheckpointManager step, leaves end in 'value' (default: released; training with --lora).")] = None,
    asset_id: Annotated[str, typer.Option(help="assets/<asset_id>/norm_stats.json; may be nested (a/b).")] = "synthetic",
    profile: Annotated[Optional[str], typer.Option(help="Policy profile giving the native state / action dims of the norm stats.")] = None,
    sharp_attention: Annotated[bool, typer.Option(help="Scale q/k so attention is peaked, as in trained models.")] = False,
    outliers: Annotated[bool, typer.Option(help="Add a few large-magnitude channels, as trained models have.")] = False,
    force: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
    lora: Annotated[Optional[str], typer.Option(metavar="[both|paligemma|action_expert]", help="Write a LoRA fine-tune as OpenPI's training does (training layout): LoRA on these experts, adapted llm base leaves bfloat16, factors and the rest float32.")] = None,
    lora_rank: Annotated[Optional[str], typer.Option(help="LoRA rank: N, or paligemma=N,action_expert=M (default OpenPI's variants: 16 / 32).")] = None,
    lora_alpha: Annotated[Optional[str], typer.Option(help="LoRA alpha recorded as the training config (default: OpenPI's variant, alpha = rank); same forms as --lora-rank.")] = None,
    lora_rslora: Annotated[Optional[str], typer.Option(metavar="[both|paligemma|action_expert]", help="Experts trained with rsLoRA (scaling alpha/sqrt(rank)).")] = None,
) -> None:
    """Write a synthetic checkpoint exactly the way OpenPI writes one (orbax OCDBT/zarr), with norm stats."""
    from pibridge.convert.synth import lora_request, synth_command

    layout_name = layout.value if layout else ("training" if lora else "released")
    synth_command(out, variant=variant, seed=seed, dtype=dtype, layout=layout_name, asset_id=asset_id,
                  profile=profile, sharp_attention=sharp_attention, outliers=outliers, force=force,
                  lora=lora_request(lora, lora_rank, lora_alpha, lora_rslora))


@app.command()
def inspect(
    ckpt: Annotated[Path, typer.Argument(help="OpenPI checkpoint: a step directory or its params/ directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    leaves: Annotated[bool, typer.Option("--leaves/--no-leaves", help="Print the leaf table.")] = True,
) -> None:
    """Show variant, sizes, leaf table and norm stats of a checkpoint, from metadata only (no array data)."""
    from pibridge.convert.inspect import inspect_command

    inspect_command(ckpt, as_json=as_json, show_leaves=leaves)


@app.command()
def convert(
    ckpt: Annotated[Path, typer.Argument(help="OpenPI checkpoint: a step directory (params/ + assets/) or its params/.")],
    out: Annotated[Path, typer.Argument(help="LeRobot policy directory to create.")],
    profile: Annotated[Optional[str], typer.Option(help="OpenPI config the policy was trained with (pibridge/configs/profiles), e.g. pi05_droid; pi05_base / pi0_base = OpenPI's defaults; or a profile file path/to/profile.json (your own training config).")] = None,
    camera_map: Annotated[Optional[list[str]], typer.Option(help="OpenPI slot -> your LeRobot camera name: base_0_rgb=top_head,left_wrist_0_rgb=hand_left,right_wrist_0_rgb=empty (repeatable: merged; a slot given twice is refused)")] = None,
    empty_cameras: Annotated[Optional[str], typer.Option(help="Comma-separated OpenPI slots to leave empty (masked blank image, as OpenPI does).")] = None,
    action_horizon: Annotated[Optional[int], typer.Option(help="Override the profile's action horizon (chunk size).")] = None,
    max_token_len: Annotated[Optional[int], typer.Option(help="Override the profile's prompt token budget.")] = None,
    state_dim: Annotated[Optional[int], typer.Option(help="Native state dim (before padding to 32).")] = None,
    action_dim: Annotated[Optional[int], typer.Option(help="Native action dim the robot gets back.")] = None,
    discrete_state_input: Annotated[Optional[bool], typer.Option("--discrete-state-input/--no-discrete-state-input", help="pi05: discretised state in the prompt (OpenPI default True; pi05_libero False).")] = None,
    delta_action_mask: Annotated[Optional[str], typer.Option(help="Delta-action joints in OpenPI's make_bool_mask notation, e.g. 6,-1,6,-1 (ALOHA), or none; written as LeRobot's relative / absolute action steps.")] = None,
    adapt_to_pi: Annotated[Optional[bool], typer.Option("--adapt-to-pi/--no-adapt-to-pi", help="ALOHA joint flips and gripper conversion (aloha_policy.py adapt_to_pi), as pibridge plugin steps in OUT's processors.")] = None,
    default_prompt: Annotated[Optional[str], typer.Option(help="Prompt used when an observation has none (OpenPI's InjectDefaultPrompt).")] = None,
    robot: Annotated[Optional[str], typer.Option(help="Robot family: aloha, droid, libero or none (action names for LeRobot).")] = None,
    policy_metadata: Annotated[Optional[str], typer.Option(help="TrainConfig.policy_metadata as a JSON object, what `pibridge serve` sends first (e.g. ALOHA's '{\"reset_pose\": [0, -1.5, 1.5, 0, 0, 0]}'); for pi0_base / pi05_base served as a config that has it.")] = None,
    openpi_resize: Annotated[bool, typer.Option("--openpi-resize/--no-openpi-resize", help="OpenPI's host image resize (PIL letterbox to 224x224 on uint8, openpi-client image_tools) as a pibridge step in OUT's preprocessor, for cameras that are not 224x224 (LeRobot's own resize is torch bilinear).")] = False,
    lerobot_version: Annotated[str, typer.Option(help="Target LeRobot release: 0.5.1, 0.6.0, 0.6.1 (decides config.json fields and the transformers key layout).")] = DEFAULT_LEROBOT_VERSION,
    transformers_version: Annotated[Optional[str], typer.Option(help="Override the transformers release whose key layout is written (default: what --lerobot-version pins).")] = None,
    weights_dtype: Annotated[str, typer.Option(**DTYPE, help="dtype of model.safetensors: float32, or LeRobot's bfloat16 layout (norms, vision, heads fp32)." + DTYPE_HELP)] = "float32",
    runtime_dtype: Annotated[str, typer.Option(**DTYPE, help="LeRobot's config.json `dtype` (what the policy computes in)." + DTYPE_HELP)] = "float32",
    asset_id: Annotated[Optional[str], typer.Option(help="assets/<asset_id>/norm_stats.json to use (automatic when there is exactly one).")] = None,
    tokenizer: Annotated[Optional[Path], typer.Option(help="PaliGemma SentencePiece model to write into OUT/tokenizer (else LeRobot fetches a gated hub model).")] = None,
    fold_norm_eps: Annotated[bool, typer.Option(help="Fold OpenPI's normalizer epsilons into the stats so LeRobot's formulas give OpenPI's numbers (recorded).")] = False,
    fold_bf16_params: Annotated[bool, typer.Option(help="bf16 runtime: store OpenPI's bf16 parameter rounding in the tensors LeRobot keeps fp32 (norms as bf16(1+bf16(s))-1; recorded).")] = False,
    allow_tiny: Annotated[bool, typer.Option(help="Allow test-size variants (LeRobot cannot build them without a config patch).")] = False,
    allow_nonfinite: Annotated[bool, typer.Option(help="Convert even if a weight contains NaN or Inf.")] = False,
    dry_run: Annotated[bool, typer.Option(help="Metadata only: print one audit line per tensor on stdout, write nothing.")] = False,
    force: Annotated[bool, typer.Option(help="Replace OUT if it exists (the old one survives until the new one is complete).")] = False,
    lora_alpha: Annotated[Optional[str], typer.Option(help="LoRA fine-tunes: the training config's alpha, N or paligemma=N,action_expert=M (default: OpenPI's variant for the rank found, 16 -> gemma_2b_lora, 32 -> gemma_300m_lora; other ranks need it).")] = None,
    lora_rslora: Annotated[Optional[str], typer.Option(metavar="[both|paligemma|action_expert]", help="LoRA fine-tunes: experts trained with rslora=True.")] = None,
) -> None:
    """Convert an OpenPI pi0 / pi05 checkpoint into a LeRobot policy directory (streamed, audited, atomic)."""
    from pibridge.convert.convert import ConvertRequest, convert as run_convert

    overrides = {"action_horizon": action_horizon, "max_token_len": max_token_len, "state_dim": state_dim,
                 "action_dim": action_dim, "discrete_state_input": discrete_state_input,
                 "delta_action_mask": delta_action_mask, "adapt_to_pi": adapt_to_pi, "default_prompt": default_prompt,
                 "robot": robot, "policy_metadata": policy_metadata}
    run_convert(ConvertRequest(
        ckpt=ckpt, out=out, profile=profile, overrides=overrides, camera_map=",".join(camera_map) if camera_map else None,
        empty_cameras=tuple(s.strip() for s in (empty_cameras or "").split(",") if s.strip()),
        lerobot_version=lerobot_version, transformers_version=transformers_version,
        weights_dtype=weights_dtype, runtime_dtype=runtime_dtype, asset_id=asset_id, tokenizer=tokenizer,
        fold_norm_eps=fold_norm_eps, fold_bf16_params=fold_bf16_params, openpi_resize=openpi_resize, allow_tiny=allow_tiny, allow_nonfinite=allow_nonfinite, dry_run=dry_run,
        force=force, lora_alpha=lora_alpha, lora_rslora=lora_rslora))


@app.command()
def check(
    out: Annotated[Path, typer.Argument(help="LeRobot policy directory written by `pibridge convert` (reads its pibridge.json).")],
    strict: Annotated[bool, typer.Option(help="Exit 1 on warnings too (runtime fixes needed, runtime differs from the target).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable findings.")] = False,
) -> None:
    """Is the installed runtime safe for this policy? Probes transformers on tiny modules and names the runtime fix to apply.

    Run it with the Python that will run the policy: the LeRobot environment's (e.g. .venvs/lr-0.6.1/bin/pibridge
    check OUT, after `make lerobot-env`), since the answer depends on its transformers / LeRobot versions."""
    from pibridge.fixes.guard import command_check

    raise typer.Exit(command_check(out, strict=strict, as_json=as_json))


@app.command()
def fixes(
    transformers: Annotated[Optional[str], typer.Option(help="Runtime transformers version (unset: any).")] = None,
    lerobot: Annotated[Optional[str], typer.Option(help="Runtime LeRobot version (unset: any).")] = None,
    dtype: Annotated[Optional[str], typer.Option(**DTYPE, help="Runtime dtype: float32 or bfloat16 (unset: any)." + DTYPE_HELP)] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable rows.")] = False,
) -> None:
    """List the numeric fixes (configs/fixes.json) that apply to a runtime."""
    from pibridge.fixes.guard import command_fixes

    command_fixes(transformers, lerobot, dtype, as_json=as_json)


@app.command()
def serve(
    lerobot: Annotated[Optional[Path], typer.Option(help="Converted policy OUT (pibridge convert), served by the real LeRobot in its own environment (--lerobot-python, $PIBRIDGE_LEROBOT_PYTHON, or the .venvs/lr-0.6.1 that `make lerobot-env` builds).")] = None,
    openpi: Annotated[Optional[Path], typer.Option(help="OpenPI checkpoint CKPT, served by pibridge's JAX stack with OpenPI's host transforms, in this Python (needs --profile and --tokenizer).")] = None,
    profile: Annotated[Optional[str], typer.Option(help="With --openpi: the OpenPI config it was trained with (pibridge/configs/profiles), e.g. pi05_droid, or a profile file path/to/profile.json.")] = None,
    port: Annotated[int, typer.Option(help="TCP port (0: any free port, printed on start). OpenPI's serve_policy.py uses 8000.")] = 8000,
    host: Annotated[str, typer.Option(help="Address to listen on; 0.0.0.0 for every interface (OpenPI's default), 127.0.0.1 for this machine only.")] = "127.0.0.1",
    default_prompt: Annotated[Optional[str], typer.Option(help="Prompt for requests without one (OpenPI serve_policy.py --default-prompt); without it such a request is refused unless the profile has a default.")] = None,
    tokenizer: Annotated[Optional[Path], typer.Option(help="With --openpi: PaliGemma's SentencePiece model.")] = None,
    asset_id: Annotated[Optional[str], typer.Option(help="With --openpi: assets/<asset_id>/norm_stats.json (default: the profile's).")] = None,
    precision: Annotated[str, typer.Option(**DTYPE, help="With --openpi: float32, or the JAX stack's bfloat16 policy." + DTYPE_HELP)] = "float32",
    lerobot_python: Annotated[Optional[str], typer.Option(help="With --lerobot: the LeRobot environment's interpreter (lerobot[pi] + pibridge[serve]).")] = None,
    device: Annotated[Optional[str], typer.Option(help="With --lerobot: torch device (default: OUT's config.json `device`, else cpu).")] = None,
    max_size: Annotated[float, typer.Option(help="Largest request in MiB; bigger frames are refused (close 1009). OpenPI sets no limit.")] = 64.0,
    queue_size: Annotated[int, typer.Option(help="Requests waiting for the one model; more wait for a place.")] = 16,
    fixes: Annotated[bool, typer.Option("--fixes/--no-fixes", help="With --lerobot: apply pibridge's runtime fixes to the loaded policy.")] = True,
) -> None:
    """Serve a policy over OpenPI's websocket protocol: OpenPI's own clients (openpi_client.WebsocketClientPolicy,
    the ALOHA / DROID / LIBERO examples) connect unchanged.

    \b
    The server sends the policy metadata first (the profile's, e.g. ALOHA's reset_pose), then answers each
    request (OpenPI's client dict for the profile's robot) with {"actions": (H, A) float64, "policy_timing",
    "server_timing"}. GET /healthz answers OK. A request may carry "noise" (H, 32) float (pibridge extension) for
    a replayable reply. A bad request gets a text frame naming the problem and its connection is closed; other
    clients are unaffected. Ctrl-C stops it (exit 130)."""
    from pibridge.serve.command import ServeRequest, serve_command

    code = serve_command(ServeRequest(
        lerobot=lerobot, openpi=openpi, profile=profile, host=host, port=port, default_prompt=default_prompt,
        tokenizer=tokenizer, asset_id=asset_id, precision=precision_token(precision), lerobot_python=lerobot_python,
        device=device, max_size_mb=max_size, queue_size=queue_size, fixes=fixes))
    raise typer.Exit(code)


parity_app = typer.Typer(name="parity", help="Prove numeric parity stage by stage: observations, captures, comparisons.",
                         no_args_is_help=True)
app.add_typer(parity_app, name="parity")


# every registered stack (pibridge.parity.stacks: data only, no stack imported) is a --stack / --torch-stack choice
Stack = Enum("Stack", {name: name for name in STACKS}, type=str)
TORCH_SIDES = torch_sides()
TORCH_STACK_HELP = "Torch-side stack: " + "; ".join(f"{n} ({s.about})" for n, s in TORCH_SIDES.items()) + "."


class Resize(str, Enum):
    openpi = "openpi"
    lerobot = "lerobot"


@parity_app.command("obs")
def parity_obs(
    out: Annotated[Path, typer.Argument(help="Observation file to write (.safetensors).")],
    profile: Annotated[str, typer.Option(help="Policy profile (e.g. pi05_droid), a profile file (.json) or a converted OUT dir: gives horizon, state dim, empty cameras.")],
    batch: Annotated[Optional[int], typer.Option(help="Batch size (default 2; with --from-client: the number of files).")] = None,
    seed: Annotated[int, typer.Option(help="Seed of images, state and noise.")] = 0,
    horizon: Annotated[Optional[int], typer.Option(help="Override the profile's action horizon (noise length).")] = None,
    state_dim: Annotated[Optional[int], typer.Option(help="Override the profile's native state dim.")] = None,
    prompt: Annotated[Optional[list[str]], typer.Option(help="Prompt (repeat once per sample; one prompt is used for all).")] = None,
    mask: Annotated[Optional[list[str]], typer.Option(help="SAMPLE:SLOT: mask one camera of one sample (repeatable), e.g. 1:left_wrist_0_rgb.")] = None,
    from_client: Annotated[Optional[list[Path]], typer.Option(help="An OpenPI client dict (what a robot sends a policy server): one msgpack frame (.msgpack/.msg/.bin) or an .npz (np.savez(f, **obs), nested images as 'images/<camera>'); repeat for a batch. Mapped by pibridge serve's key / layout map; images keep their size; noise from --seed unless the dict has 'noise'.")] = None,
    image: Annotated[Optional[list[str]], typer.Option(help="CAMERA=FILE: with --from-client, that camera's image from an image file (PIL, RGB), e.g. cam_high=top.png (repeatable).")] = None,
) -> None:
    """Write an observation file: deterministic synthetic (non-square camera images, state, prompts, noise), or
    from an OpenPI client dict (--from-client)."""
    from pibridge.parity.capture import obs_command

    obs_command(out, profile=profile, batch=batch, seed=seed, horizon=horizon, state_dim=state_dim, prompts=prompt,
                masked=mask, from_client=from_client, images=image)


@parity_app.command("capture")
def parity_capture(
    stack: Annotated[Stack, typer.Option(help="Which stack to run in this process.")],
    obs: Annotated[Path, typer.Option(help="Observation file (pibridge parity obs).")],
    out: Annotated[Path, typer.Option(help="Trace file to write (.safetensors).")],
    openpi: Annotated[Optional[Path], typer.Option(help="OpenPI checkpoint CKPT (jax stack).")] = None,
    lerobot: Annotated[Optional[Path], typer.Option(help="Converted LeRobot policy dir OUT (torch / lerobot stacks).")] = None,
    precision: Annotated[str, typer.Option(**DTYPE, help="float32, or the stack's bfloat16 policy." + DTYPE_HELP)] = "float32",
    fixes: Annotated[bool, typer.Option("--fixes/--no-fixes", help="torch: apply the runtime fixes (configs/fixes.json).")] = True,
    shared_inputs: Annotated[Optional[Path], typer.Option(help="Feed the model these preprocessed inputs (written by --save-inputs) instead of preprocessing.")] = None,
    save_inputs: Annotated[Optional[Path], typer.Option(help="Write the preprocessed inputs this capture fed its model.")] = None,
    resize: Annotated[Resize, typer.Option(help="torch: resize used by its LeRobot preprocessing.")] = Resize.lerobot,
    steps: Annotated[int, typer.Option(help="Euler denoising steps.")] = 10,
    tokenizer: Annotated[Optional[Path], typer.Option(help="SentencePiece model (default: OUT/tokenizer/tokenizer.model, OUT from --lerobot or, jax, --profile OUT).")] = None,
    profile: Annotated[Optional[str], typer.Option(help="jax: profile name, profile file (.json) or converted OUT dir (default: the synthetic checkpoint's profile).")] = None,
    ckpt: Annotated[Optional[Path], typer.Option("--ckpt", hidden=True, help="Deprecated spelling of --openpi.")] = None,
) -> None:
    """Run ONE stack on an observation in this process and write its trace (stages, timings, versions, fingerprints).

    The lerobot stack imports the real LeRobot: run it with a LeRobot environment's interpreter."""
    from pibridge.parity.capture import capture_command

    if ckpt is not None:
        _deprecated("--ckpt", "--openpi")
        if openpi is not None and openpi != ckpt:
            from pibridge.errors import PibridgeError

            raise PibridgeError(f"--openpi {openpi} and --ckpt {ckpt}", "one checkpoint", "pass only --openpi CKPT")
        openpi = ckpt
    capture_command(stack=stack.value, obs=obs, out=out, ckpt=openpi, lerobot=lerobot, precision=precision_token(precision),
                    fixes=fixes, shared_inputs=shared_inputs, save_inputs=save_inputs, resize=resize.value,
                    steps=steps, tokenizer=tokenizer, profile=profile)


@parity_app.command("compare")
def parity_compare(
    a: Annotated[Path, typer.Argument(help="Reference trace (usually the jax stack); with --reference: the candidate.")],
    b: Annotated[Optional[Path], typer.Argument(help="Trace to check (omit with --reference / --baseline).")] = None,
    tolerances: Annotated[Optional[Path], typer.Option(help="Tolerance rules (default pibridge/configs/tolerances.json).")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the JSON report here.")] = None,
    html_out: Annotated[Optional[Path], typer.Option("--html", help="Write the self-contained HTML report here.")] = None,
    reference: Annotated[Optional[Path], typer.Option(help="bf16 allowance: the jax stack's float32 trace (the exact answer).")] = None,
    baseline: Annotated[Optional[Path], typer.Option(help="bf16 allowance: the jax stack's bf16 trace (OpenPI's own bf16).")] = None,
    allowance: Annotated[Optional[Path], typer.Option(help="bf16 allowance rules (default pibridge/configs/allowance.json).")] = None,
    summary: Annotated[bool, typer.Option("--summary", help="Terminal: the verdict only (the files keep everything).")] = False,
    only_failing: Annotated[bool, typer.Option("--only-failing", help="Terminal: only the failing stages' rows.")] = False,
) -> None:
    """Compare two traces stage by stage (numpy only); exit 1 when a stage breaks its tolerance.

    With --reference REF --baseline BASE: judge the one trace given (bf16 candidate) by its error against REF,
    allowed k times the baseline's error plus a floor per stage (bf16 allowance)."""
    from pibridge.errors import PibridgeError

    if reference is None and baseline is None and allowance is None:
        if b is None:
            raise PibridgeError("one trace given", "two traces A B, or one candidate with --reference and --baseline",
                                "pass both traces")
        from pibridge.parity.run import compare_command

        compare_command(a, b, tolerances=tolerances, json_out=json_out, html_out=html_out,
                        view=_view(summary, only_failing))
        return
    if reference is None or baseline is None or b is not None or tolerances is not None:
        raise PibridgeError("bf16 allowance options mixed with two traces or --tolerances, or one of "
                            "--reference / --baseline missing", "CAND --reference REF --baseline BASE [--allowance F] "
                            "[--json F] [--html F]", "pass one candidate trace with both --reference and --baseline")
    from pibridge.parity.allowance import allowance_command

    allowance_command(a, reference, baseline, allowance=allowance, json_out=json_out, html_out=html_out,
                      view=_view(summary, only_failing))


@parity_app.command("run")
def parity_run(
    openpi: Annotated[Path, typer.Option(help="OpenPI checkpoint CKPT (step dir).")],
    lerobot: Annotated[Path, typer.Option(help="Converted LeRobot policy dir (pibridge convert).")],
    obs: Annotated[Optional[Path], typer.Option(help="Observation file (default: a synthetic one for OUT's profile).")] = None,
    torch_stack: Annotated[str, typer.Option(metavar="[" + "|".join(TORCH_SIDES) + "]", help=TORCH_STACK_HELP)] = "ours",
    precision: Annotated[str, typer.Option(**DTYPE, help="float32, or each stack's bfloat16 policy." + DTYPE_HELP)] = "float32",
    shared_preprocessing: Annotated[bool, typer.Option(help="Feed both models OpenPI's preprocessed tensors (model stages free of preprocessing differences).")] = False,
    resize: Annotated[Resize, typer.Option(help="Resize on the torch side (the preprocessing section always compares both).")] = Resize.openpi,
    fixes: Annotated[bool, typer.Option("--fixes/--no-fixes", help="Apply the runtime fixes on the torch side.")] = True,
    steps: Annotated[int, typer.Option(help="Euler denoising steps.")] = 10,
    tokenizer: Annotated[Optional[Path], typer.Option(help="SentencePiece model (default OUT/tokenizer/tokenizer.model).")] = None,
    tolerances: Annotated[Optional[Path], typer.Option(help="Tolerance rules (default pibridge/configs/tolerances.json).")] = None,
    jax_python: Annotated[str, typer.Option(help="Interpreter for the jax capture.")] = sys.executable,
    torch_python: Annotated[Optional[str], typer.Option(help="Interpreter for the torch capture (default: this one; for --torch-stack lerobot see there).")] = None,
    html: Annotated[Optional[Path], typer.Option(help="Write the HTML report here.")] = None,
    json_out: Annotated[Optional[Path], typer.Option("--json", help="Write the JSON report here.")] = None,
    workdir: Annotated[Optional[Path], typer.Option(help="Where traces and the observation go (default: a new temp dir).")] = None,
    summary: Annotated[bool, typer.Option("--summary", help="Terminal: the verdict only (the files keep everything).")] = False,
    only_failing: Annotated[bool, typer.Option("--only-failing", help="Terminal: only the failing stages' rows.")] = False,
    keep_temp: Annotated[bool, typer.Option(help="Keep the temporary directory of a failed run (named on exit).")] = False,
) -> None:
    """Capture both stacks in their own processes, compare, report; exit 1 when a model stage diverges.

    Without --shared-preprocessing it answers "does the deployed policy act like OpenPI?" (each side preprocesses);
    with it, "is the conversion right?" (both models get OpenPI's preprocessed tensors)."""
    from pibridge.parity.run import RunRequest, run

    run(RunRequest(openpi=openpi, lerobot=lerobot, obs=obs, torch_stack=torch_stack, precision=precision_token(precision),
                   shared_preprocessing=shared_preprocessing, resize=resize.value, fixes=fixes, steps=steps,
                   tokenizer=tokenizer, tolerances=tolerances, jax_python=jax_python, torch_python=torch_python,
                   html=html, json=json_out, workdir=workdir, view=_view(summary, only_failing),
                   keep_temp=keep_temp))


def _view(summary: bool, only_failing: bool) -> str:
    if summary and only_failing:
        from pibridge.errors import PibridgeError

        raise PibridgeError("--summary with --only-failing", "one terminal view", "pass one of them")
    return "summary" if summary else "only-failing" if only_failing else "full"


class Interrupted(BaseException):
    """SIGINT / SIGTERM, raised in the main thread: not an Exception, so only cleanup code (`finally`,
    `except BaseException`: the atomic output directory) sees it; not a KeyboardInterrupt, so typer does not
    swallow it into a silent exit."""

    def __init__(self, signum: int):
        self.signum = signum
        super().__init__(signal.Signals(signum).name)


_SIGNALLED: list[int] = []  # the signal that interrupted this run (an import may wrap Interrupted in ImportError)


def _on_signal(signum: int, frame) -> None:
    for s in (signal.SIGINT, signal.SIGTERM):  # a second signal stops at once; the next run removes leftovers
        signal.signal(s, signal.SIG_DFL)
    _SIGNALLED.append(signum)
    raise Interrupted(signum)


def _install_signal_handlers() -> dict:
    """SIGINT / SIGTERM -> Interrupted (clean stop). Returns the previous handlers. (SIGXFSZ needs nothing:
    CPython ignores it at startup, so a write past `ulimit -f` fails with EFBIG -> exit 2, atomic.py.)"""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.signal(s, _on_signal) for s in (signal.SIGINT, signal.SIGTERM)}


def main(argv: list[str] | None = None) -> None:
    """Entry point: bad input -> one message on stderr and exit 2 (1 for a parity failure); --debug (anywhere on
    the line) adds the traceback and keeps the exit code. SIGINT / SIGTERM: temporaries removed, one line, exit
    128 + signal number (130 for Ctrl-C)."""
    import traceback

    from pibridge.errors import PibridgeError

    global _DEBUG
    args = list(sys.argv[1:] if argv is None else argv)
    _DEBUG, args = _take_debug(args)
    _SIGNALLED.clear()
    previous = _install_signal_handlers()
    try:
        cmd = command()
        _refuse_repeats(cmd, args)
        cmd.main(args=args, prog_name="pibridge")  # standalone: usage errors exit 2 with click's message
    except PibridgeError as err:
        _exit_if_interrupted()
        if _DEBUG:
            traceback.print_exc()
        print(f"pibridge: error: {err.render()}", file=sys.stderr)
        sys.exit(err.exit_code)
    except ImportError as err:  # an optional dependency missing: name the extra (other import errors: a traceback)
        _exit_if_interrupted()
        from pibridge.errors import missing_dependency

        bad = missing_dependency(err, f"`pibridge {_command_name(args)}`")
        if bad is None:
            raise
        if _DEBUG:
            traceback.print_exc()
        print(f"pibridge: error: {bad.render()}", file=sys.stderr)
        sys.exit(bad.exit_code)
    except OSError as err:  # the environment (permissions, read-only or failing disk): one message, no traceback
        _exit_if_interrupted()
        if _DEBUG:
            traceback.print_exc()
        where = f": {err.filename}" if err.filename else ""
        print(f"pibridge: error: {err.strerror or err}{where}\nwhat to do: check permissions and free space there "
              "(--debug shows where it happened)", file=sys.stderr)
        sys.exit(2)
    except BaseException:
        _exit_if_interrupted()
        raise  # not interrupted: a bug, keep the traceback
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def _command_name(args: list[str]) -> str:
    words = [a for a in args[:3] if not a.startswith("-")]
    return " ".join(words[:2] if words[:1] == ["parity"] else words[:1])


def _take_debug(args: list[str]) -> tuple[bool, list[str]]:
    """--debug anywhere before a `--` separator: removed from the line (so every subcommand accepts it)."""
    end = args.index("--") if "--" in args else len(args)
    head = [a for a in args[:end] if a != "--debug"]
    return len(head) != end, head + args[end:]


def command():
    """The click command tree of `app`, its help tidied (see _tidy)."""
    cmd = typer.main.get_command(app)
    _tidy(cmd)
    return cmd


def _tidy(cmd) -> None:
    """Help without typer's placeholders: no `<bool>` after flags, `OUT` (not `{out}`) for arguments, `PATH` /
    `INT` / `TEXT` for values; every command's help ends with the exit-code table."""
    for p in cmd.params:  # duck-typed: typer >= 0.2x vendors its own click
        if p.param_type_name == "argument":
            name = p.metavar or p.name.upper()
            p.metavar = name
            p._usage_display_name = (lambda n=name, req=p.required: n if req else f"[{n}]")
            p.display_type_rich = lambda ctx=None: None  # the name says it; typer adds `<path>`
        elif p.param_type_name == "option" and p.metavar is None:
            p.metavar = "" if p.is_flag or p.count else _value_metavar(p)
    if cmd.epilog is None and not hasattr(cmd, "commands"):
        cmd.epilog = EXIT_CODES_HELP
    for sub in getattr(cmd, "commands", {}).values():
        _tidy(sub)


def _value_metavar(p) -> str:
    desc = getattr(p, "type_descriptor", None)  # typer >= 0.2x
    if desc is None:  # older typer: click's own types
        choices = getattr(p.type, "choices", None)
        return "[" + "|".join(map(str, choices)) + "]" if choices else p.type.name.upper()
    if desc.is_choice:
        return "[" + "|".join(str(getattr(c, "value", c)) for c in desc.choices) + "]"
    if desc.is_path:
        return "PATH"
    ann = str(desc.annotation)
    return "INT" if "int" in ann else "FLOAT" if "float" in ann else "TEXT"


def _repeatable(p) -> bool:
    return bool(getattr(p, "multiple", False) or getattr(getattr(p, "type_descriptor", None), "is_list", False))


def _refuse_repeats(cmd, args: list[str]) -> None:
    """A single-valued option given twice is refused (click would keep the last one silently); repeatable
    ones (multiple=True) are merged by their commands."""
    from pibridge.errors import PibridgeError

    i = 0
    while hasattr(cmd, "commands") and i < len(args):  # walk down to the subcommand
        if args[i] in cmd.commands:
            cmd, args = cmd.commands[args[i]], args[i + 1:]
            i = 0
        else:
            i += 1
    seen: dict[str, list[str]] = {}
    names = {o: p for p in cmd.params if p.param_type_name == "option" and not _repeatable(p)
             for o in (*p.opts, *p.secondary_opts)}
    end = args.index("--") if "--" in args else len(args)
    for k, a in enumerate(args[:end]):
        flag, _, inline = a.partition("=")
        p = names.get(flag)
        if p is None:
            continue
        value = inline or (flag if p.is_flag else (args[k + 1] if k + 1 < end else ""))
        seen.setdefault(p.name, []).append(f"{flag} {value}" if not p.is_flag else flag)
    twice = {n: v for n, v in seen.items() if len(v) > 1}
    if twice:
        n, given = next(iter(twice.items()))
        raise PibridgeError(f"option given {len(given)} times: {'; '.join(given)}",
                            "each option once (only repeatable options such as --camera-map, --prompt, --mask merge)",
                            "keep the one you mean")


def _exit_if_interrupted() -> None:
    """After SIGINT / SIGTERM, whatever exception it became (Interrupted, or e.g. pybind11's ImportError
    "initialization failed" when it lands in an extension's import): one line, exit 128 + signal."""
    if _SIGNALLED:
        print(f"pibridge: interrupted by {signal.Signals(_SIGNALLED[0]).name}; stopped (convert and synth leave no "
              "partial output; an existing OUT is kept unless the new one was already complete)", file=sys.stderr)
        sys.exit(128 + _SIGNALLED[0])


if __name__ == "__main__":
    main()
