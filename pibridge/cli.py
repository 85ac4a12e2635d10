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
