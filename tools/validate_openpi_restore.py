"""Prove that OpenPI's own code reads what `pibridge synth` writes, and that pibridge's reader reads OpenPI's own.

Runs OUTSIDE the project venv, in a scratch venv with OpenPI's pins (orbax-checkpoint 0.11.13, which
OpenPI's restore_params needs; jax 0.5.3, flax 0.10.2, numpy < 2, ml-dtypes 0.4.1, tensorstore 0.1.74; plus xxhash
for pibridge's fingerprint):

    PYTHONPATH=/work/openpi-src/src:/work/main /work/openpi-venv-orbax011/bin/python \\
        tools/validate_openpi_restore.py [--pibridge-python /work/main/.venv/bin/python]

Checks, for tiny-pi05 and tiny-pi0 x float32 / bfloat16 x released / training layouts:
 1. the checkpoint written by the project venv (`--pibridge-python -m pibridge.cli synth`, tensorstore of
    that venv) is read by openpi.models.model.restore_params (np.ndarray and jax.Array), bit-identical to
    pibridge's reader running here;
 2. Pi0Config(paligemma_variant="dummy", action_expert_variant="dummy", pi05=...).load(params) accepts it
    (SigLIP forced to "mu/14": OpenPI hard-codes So400m/14 at pi0.py:84), and sample_actions gives finite
    actions (once per variant);
 3. orbax 0.11.13 PyTreeCheckpointer.metadata gives the same shapes / dtypes as pibridge's reader;
 4. the fingerprint recomputed here (numpy 1.x, ml_dtypes 0.4, tensorstore 0.1.74) from the stored arrays,
    and from a synth run in this venv, equals the one the project venv recorded;
 5. the norm_stats.json round-trips through OpenPI's normalize.deserialize_json / serialize_json unchanged;
and once: the full-size pi0 / pi05 trees synth plans equal OpenPI's (nnx.eval_shape of Pi0Config().create: path,
shape, float32; nothing allocated), and OpenPI's own training/checkpoints.save_state of a tiny pi05 is read by pibridge's reader
bit-identically to restore_params, and its params/ JSON files equal those of a synth training layout.
Exit status 1 on any failure.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import types
from pathlib import Path

import jax
import numpy as np

REPO = Path(__file__).resolve().parents[1]
FAILURES: list[str] = []


def check(ok: bool, what: str) -> None:
    print(("  ok   " if ok else "  FAIL ") + what, flush=True)
    if not ok:
        FAILURES.append(what)


def force_tiny_siglip() -> None:
    import openpi.models.siglip as siglip

    original = siglip.Module
    if getattr(original, "_pibridge_forced", False):
        return

    def module(**kw):
        kw["variant"] = "mu/14"
        return original(**kw)

    module._pibridge_forced = True
    siglip.Module = module


def flat(tree: dict, prefix: tuple = ()) -> dict:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flat(v, prefix + (k,)))
        else:
            out[prefix + (k,)] = v
    return out


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def synth_with(python: str, out: Path, variant: str, dtype: str, layout: str) -> None:
    cmd = [python, "-m", "pibridge.cli", "synth", str(out), "--variant", variant, "--dtype", dtype, "--layout", layout,
           "--asset-id", "physical-intelligence/libero", "--seed", "7", "--sharp-attention", "--outliers"]
    subprocess.run(cmd, check=True, cwd=REPO, capture_output=True, text=True)


def validate_one(ck_dir: Path, variant: str, dtype: str, layout: str, run_forward: bool) -> None:
    import orbax.checkpoint as ocp
    from openpi.models import model as openpi_model
    from openpi.models import pi0_config
    from openpi.shared import normalize

    from pibridge.convert.reader import open_checkpoint
    from pibridge.convert.synth import write_synthetic_checkpoint

    ours = open_checkpoint(ck_dir)
    check(ours.layout == layout, f"reader layout {ours.layout}")
    params = flat(openpi_model.restore_params(ck_dir / "params", restore_type=np.ndarray))
    check(set(params) == set(ours.leaves), f"restore_params leaf set == reader leaf set ({len(params)} leaves)")
    check(all(same_bits(params[p], ours.read(p)) for p in params), "restore_params arrays == reader arrays, bit for bit")
    check(all(str(params[p].dtype) == dtype for p in params), f"restore_params dtype {dtype}")
    jparams = openpi_model.restore_params(ck_dir / "params")  # jax.Array, replicated sharding (model.py:307-309)
    check(all(same_bits(np.asarray(v), params[p]) for p, v in flat(jparams).items()), "restore_params jax.Array == np")
    with ocp.PyTreeCheckpointer() as ckptr:
        meta = flat(ckptr.metadata(ck_dir / "params")["params"])
    strip = (lambda k: k[:-1]) if layout == "training" else (lambda k: k)
    check({strip(k): (tuple(m.shape), str(m.dtype)) for k, m in meta.items()}
          == {p: (i.shape, i.dtype) for p, i in ours.leaves.items()}, "orbax 0.11.13 metadata == reader leaves")
    cfg = pi0_config.Pi0Config(paligemma_variant="dummy", action_expert_variant="dummy", pi05=variant == "tiny-pi05")
    model = cfg.load(openpi_model.restore_params(ck_dir / "params", restore_type=np.ndarray))
    check(type(model).__name__ == "Pi0", "Pi0Config.load(params) accepted the tree")
    if run_forward:
        actions = model.sample_actions(jax.random.key(0), cfg.fake_obs(1), num_steps=2)
        check(bool(np.isfinite(np.asarray(actions)).all()), f"sample_actions finite, shape {tuple(actions.shape)}, "
              f"rms {float(np.sqrt(np.mean(np.square(np.asarray(actions, np.float32))))):.3f}")
    recorded = ours.synth_record["fingerprint"]
    check(ours.fingerprint() == recorded, f"fingerprint recomputed here == recorded {recorded[:19]}...")
    with tempfile.TemporaryDirectory(dir=ck_dir.parent) as tmp:
        here = write_synthetic_checkpoint(Path(tmp) / "x", variant=variant, seed=7, dtype=dtype, layout=layout,
                                          asset_id="physical-intelligence/libero", sharp_attention=True, outliers=True)
    check(here.fingerprint == recorded, "synth in this venv (numpy 1.x, ts 0.1.74) gives the same fingerprint")
    text = (ck_dir / "assets/physical-intelligence/libero/norm_stats.json").read_text()
    check(normalize.serialize_json(normalize.deserialize_json(text)) == text,
          "norm_stats.json == OpenPI serialize_json(deserialize_json(it))")


def validate_full_size_plans() -> None:
    """synth's leaf plans for pi0 / pi05 == OpenPI's abstract param trees (default So400m SigLIP)."""
    from flax import nnx
    from openpi.models import pi0_config

    from pibridge.configs import load_variant
    from pibridge.convert.synth_weights import plan_leaves

    for name, pi05 in (("pi0", False), ("pi05", True)):
        model = nnx.eval_shape(pi0_config.Pi0Config(pi05=pi05).create, jax.random.key(0))
        ref = {k: (tuple(v.shape), str(v.dtype)) for k, v in flat(nnx.state(model).to_pure_dict()).items()}
        ours = {p.path: (p.shape, "float32") for p in plan_leaves(load_variant(name), 0)}
        n = sum(int(np.prod(s)) for s, _ in ref.values())
        check(ref == ours, f"{name}: synth plan == OpenPI eval_shape tree ({len(ref)} leaves, {n:,} params, float32)")


def openpi_saved_checkpoint(out: Path) -> Path:
    """A tiny pi05 training checkpoint written by OpenPI's own save_state (orbax 0.11.13)."""
    sys.modules.setdefault("openpi.training.data_loader", types.ModuleType("openpi.training.data_loader"))
    from flax import nnx
    from openpi.models import pi0_config
    import openpi.shared.normalize as nz
    import openpi.training.checkpoints as ck
    import openpi.training.optimizer as opt
    import openpi.training.sharding as sh
    import openpi.training.utils as tu

    cfg = pi0_config.Pi0Config(paligemma_variant="dummy", action_expert_variant="dummy", pi05=True)
    model = cfg.create(jax.random.key(0))
    params = nnx.state(model)
    tx = opt.create_optimizer(opt.AdamW(), opt.CosineDecaySchedule())
    state = tu.TrainState(step=0, params=params, model_def=nnx.graphdef(model), tx=tx,
                          opt_state=tx.init(params.filter(nnx.Param)), ema_decay=0.99, ema_params=params)
    state = jax.device_put(state, jax.sharding.NamedSharding(sh.make_mesh(1), jax.sharding.PartitionSpec()))
    mngr, _ = ck.initialize_checkpoint_dir(out, keep_period=None, overwrite=True, resume=False)
    stats = {"state": nz.NormStats(mean=np.zeros(8), std=np.ones(8), q01=-np.ones(8), q99=np.ones(8)),
             "actions": nz.NormStats(mean=np.zeros(7), std=np.ones(7), q01=None, q99=None)}
    loader = types.SimpleNamespace(data_config=lambda: types.SimpleNamespace(asset_id="physical-intelligence/libero",
                                                                             norm_stats=stats))
    ck.save_state(mngr, state, loader, 1000)
    mngr.wait_until_finished()
    return out / "1000"


def validate_openpi_written(work: Path, python: str) -> None:
    from openpi.models import model as openpi_model

    from pibridge.convert.reader import open_checkpoint

    step = openpi_saved_checkpoint(work / "openpi_run")
    ours = open_checkpoint(step)
    params = flat(openpi_model.restore_params(step / "params", restore_type=np.ndarray))
    check(ours.layout == "training" and set(params) == set(ours.leaves), "reader: OpenPI save_state leaf set, training")
    check(all(same_bits(params[p], ours.read(p)) for p in params), "reader arrays == restore_params on OpenPI's save")
    check(ours.asset_ids == ["physical-intelligence/libero"] and ours.norm_stats()["actions"].q01 is None,
          "reader: nested asset id and null quantiles of OpenPI's norm_stats.json")
    synth = work / "synth_training"
    synth_with(python, synth, "tiny-pi05", "float32", "training")
    for name in ("_METADATA", "_sharding", "array_metadatas/process_0"):
        check((step / "params" / name).read_text() == (synth / "params" / name).read_text(),
              f"params/{name} of synth training == OpenPI save_state's, byte for byte")
    rel = lambda root: {p.relative_to(root).as_posix() for p in root.rglob("*") if "/d/" not in f"/{p.relative_to(root)}"}
    check(rel(step / "params") == rel(synth / "params"), "params/ file set (outside d/) == OpenPI save_state's")
    ck_meta = json.loads((step / "_CHECKPOINT_METADATA").read_text())
    ours_meta = json.loads((synth / "_CHECKPOINT_METADATA").read_text())
    check(ck_meta["item_handlers"] == ours_meta["item_handlers"] and set(ck_meta) == set(ours_meta),
          "step _CHECKPOINT_METADATA item handlers == OpenPI's")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--pibridge-python", default=str(REPO / ".venv/bin/python"),
                    help="interpreter of the project venv that writes the synth checkpoints")
    args = ap.parse_args()
    from importlib.metadata import version

    print(", ".join(f"{d} {version(d)}" for d in ("jax", "flax", "orbax-checkpoint", "tensorstore", "numpy", "ml-dtypes")))
    print("full-size trees (abstract):", flush=True)
    validate_full_size_plans()
    force_tiny_siglip()
    with tempfile.TemporaryDirectory(prefix="pibridge-validate-") as tmp:
        work = Path(tmp)
        for variant in ("tiny-pi05", "tiny-pi0"):
            for dtype in ("float32", "bfloat16"):
                for layout in ("released", "training"):
                    print(f"{variant} {dtype} {layout}:", flush=True)
                    ck_dir = work / f"{variant}-{dtype}-{layout}"
                    synth_with(args.pibridge_python, ck_dir, variant, dtype, layout)
                    validate_one(ck_dir, variant, dtype, layout, run_forward=(dtype, layout) == ("float32", "released"))
        print("OpenPI save_state checkpoint:", flush=True)
        validate_openpi_written(work, args.pibridge_python)
    print(f"{len(FAILURES)} failures" if FAILURES else "all checks passed")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
