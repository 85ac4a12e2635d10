"""The `pibridge` command line. Imports lazily: `pibridge --help` must not import jax, torch or tensorstore."""

from __future__ import annotations

import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

app = typer.Typer(
    name="pibridge",
    help="Convert OpenPI pi0 / pi0.5 JAX checkpoints to LeRobot's PyTorch layout and prove numeric parity, stage by stage.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

_DEBUG = False


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show Python tracebacks for errors.")] = False,
) -> None:
    global _DEBUG
    _DEBUG = debug


class Layout(str, Enum):
    released = "released"
    training = "training"


class StoredDtype(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"


@app.command()
def synth(
    out: Annotated[Path, typer.Argument(help="Checkpoint directory to create (OpenPI step layout: params/ + assets/).")],
    variant: Annotated[str, typer.Option(help="Model sizes: pi0, pi05, tiny-pi0, tiny-pi05 (configs/variants).")] = "tiny-pi05",
    seed: Annotated[int, typer.Option(help="Seed of the version-stable weight formula (not a framework RNG).")] = 0,
    dtype: Annotated[StoredDtype, typer.Option(help="Stored dtype of every leaf.")] = StoredDtype.float32,
    layout: Annotated[Layout, typer.Option(help="released: {'params': tree}; training: CheckpointManager step, leaves end in 'value'.")] = Layout.released,
    asset_id: Annotated[str, typer.Option(help="assets/<asset_id>/norm_stats.json; may be nested (a/b).")] = "synthetic",
    profile: Annotated[Optional[str], typer.Option(help="Policy profile giving the native state / action dims of the norm stats.")] = None,
    sharp_attention: Annotated[bool, typer.Option(help="Scale q/k so attention is peaked, as in trained models.")] = False,
    outliers: Annotated[bool, typer.Option(help="Add a few large-magnitude channels, as trained models have.")] = False,
    force: Annotated[bool, typer.Option(help="Replace OUT if it exists.")] = False,
) -> None:
    """Write a synthetic checkpoint exactly the way OpenPI writes one (orbax OCDBT/zarr), with norm stats."""
    from pibridge.convert.synth import synth_command

    synth_command(out, variant=variant, seed=seed, dtype=dtype.value, layout=layout.value, asset_id=asset_id,
                  profile=profile, sharp_attention=sharp_attention, outliers=outliers, force=force)


@app.command()
def inspect(
    ckpt: Annotated[Path, typer.Argument(help="OpenPI checkpoint: a step directory or its params/ directory.")],
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
    leaves: Annotated[bool, typer.Option("--leaves/--no-leaves", help="Print the leaf table.")] = True,
) -> None:
    """Show variant, sizes, leaf table and norm stats of a checkpoint, from metadata only (no array data)."""
    from pibridge.convert.inspect import inspect_command

    inspect_command(ckpt, as_json=as_json, show_leaves=leaves)


class WeightsDtype(str, Enum):
    float32 = "float32"
    bfloat16 = "bfloat16"


@app.command()
def convert(
    ckpt: Annotated[Path, typer.Argument(help="OpenPI checkpoint: a step directory (params/ + assets/) or its params/.")],
    out: Annotated[Path, typer.Argument(help="LeRobot policy directory to create.")],
    profile: Annotated[Optional[str], typer.Option(help="OpenPI config the policy was trained with (pibridge/configs/profiles), e.g. pi05_droid; pi05_base / pi0_base = OpenPI's defaults.")] = None,
    camera_map: Annotated[Optional[str], typer.Option(help="OpenPI slot -> your LeRobot camera name: base_0_rgb=top_head,left_wrist_0_rgb=hand_left,right_wrist_0_rgb=empty")] = None,
    empty_cameras: Annotated[Optional[str], typer.Option(help="Comma-separated OpenPI slots to leave empty (masked blank image, as OpenPI does).")] = None,
    action_horizon: Annotated[Optional[int], typer.Option(help="Override the profile's action horizon (chunk size).")] = None,
    max_token_len: Annotated[Optional[int], typer.Option(help="Override the profile's prompt token budget.")] = None,
    state_dim: Annotated[Optional[int], typer.Option(help="Native state dim (before padding to 32).")] = None,
    action_dim: Annotated[Optional[int], typer.Option(help="Native action dim the robot gets back.")] = None,
    discrete_state_input: Annotated[Optional[bool], typer.Option("--discrete-state-input/--no-discrete-state-input", help="pi05: discretised state in the prompt (OpenPI default True; pi05_libero False).")] = None,
    lerobot_version: Annotated[str, typer.Option(help="Target LeRobot release: 0.5.1, 0.6.0, 0.6.1 (decides config.json fields and the transformers key layout).")] = "0.6.1",
    transformers_version: Annotated[Optional[str], typer.Option(help="Override the transformers release whose key layout is written (default: what --lerobot-version pins).")] = None,
    weights_dtype: Annotated[WeightsDtype, typer.Option(help="dtype of model.safetensors: float32, or LeRobot's bf16 layout (norms, vision, heads fp32).")] = WeightsDtype.float32,
    runtime_dtype: Annotated[WeightsDtype, typer.Option(help="LeRobot's config.json `dtype` (what the policy computes in).")] = WeightsDtype.float32,
    asset_id: Annotated[Optional[str], typer.Option(help="assets/<asset_id>/norm_stats.json to use (automatic when there is exactly one).")] = None,
    tokenizer: Annotated[Optional[Path], typer.Option(help="PaliGemma SentencePiece model to write into OUT/tokenizer (else LeRobot fetches a gated hub model).")] = None,
    fold_norm_eps: Annotated[bool, typer.Option(help="Fold OpenPI's normalizer epsilons into the stats so LeRobot's formulas give OpenPI's numbers (recorded).")] = False,
    fold_bf16_params: Annotated[bool, typer.Option(help="bf16 runtime: store OpenPI's bf16 parameter rounding in the tensors LeRobot keeps fp32 (norms as bf16(1+bf16(s))-1; recorded).")] = False,
    allow_tiny: Annotated[bool, typer.Option(help="Allow test-size variants (LeRobot cannot build them without a config patch).")] = False,
    allow_nonfinite: Annotated[bool, typer.Option(help="Convert even if a weight contains NaN or Inf.")] = False,
    dry_run: Annotated[bool, typer.Option(help="Metadata only: print one audit line per tensor, write nothing.")] = False,
    force: Annotated[bool, typer.Option(help="Replace OUT if it exists (the old one survives until the new one is complete).")] = False,
) -> None:
    """Convert an OpenPI pi0 / pi05 checkpoint into a LeRobot policy directory (streamed, audited, atomic)."""
    from pibridge.convert.convert import ConvertRequest, convert as run_convert

    overrides = {"action_horizon": action_horizon, "max_token_len": max_token_len, "state_dim": state_dim,
                 "action_dim": action_dim, "discrete_state_input": discrete_state_input}
    run_convert(ConvertRequest(
        ckpt=ckpt, out=out, profile=profile, overrides=overrides, camera_map=camera_map,
        empty_cameras=tuple(s.strip() for s in (empty_cameras or "").split(",") if s.strip()),
        lerobot_version=lerobot_version, transformers_version=transformers_version,
        weights_dtype=weights_dtype.value, runtime_dtype=runtime_dtype.value, asset_id=asset_id, tokenizer=tokenizer,
        fold_norm_eps=fold_norm_eps, fold_bf16_params=fold_bf16_params, allow_tiny=allow_tiny, allow_nonfinite=allow_nonfinite, dry_run=dry_run,
        force=force))


def main(argv: list[str] | None = None) -> None:
    """Entry point: bad input -> one message on stderr and exit 2 (1 for a parity failure); --debug re-raises."""
    from pibridge.errors import PibridgeError

    try:
        app(args=argv)  # standalone: usage errors exit 2 with click's message
    except PibridgeError as err:
        if _DEBUG or "--debug" in (argv if argv is not None else sys.argv):
            raise
        print(f"pibridge: error: {err.render()}", file=sys.stderr)
        sys.exit(err.exit_code)


if __name__ == "__main__":
    main()
