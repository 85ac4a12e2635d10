"""The JAX side of `pibridge parity capture --stack jax`: OpenPI's preprocessing (numpy), our JAX stack on the
checkpoint's parameter tree, OpenPI's action postprocessing. Never imports torch.

Pipeline (OpenPI Policy.infer at 15a9616, policies/policy_config.py:75-93): profile + norm stats + tokenizer ->
openpi_preprocess.preprocess_detailed -> stacks.jax.run_policy -> openpi_preprocess.postprocess_actions
: Unnormalize alone = stage actions/unnormalized (B, A, action_dim); after AbsoluteActions and the robot outputs
(pibridge.hostx) = stage actions/robot.
"""

from __future__ import annotations

import time
from types import SimpleNamespace

from pibridge.convert.fingerprint import Fingerprint
from pibridge.parity import stages as st
from pibridge.parity.request import (CaptureRequest, load_model_inputs, package_versions, preprocessing_record,
                                     resolve_profile, save_model_inputs)
from pibridge.parity.observation import load_observation
from pibridge.parity.stages import StageRecorder


def capture_jax(req: CaptureRequest) -> tuple[StageRecorder, dict]:
    from pibridge.convert.detect import detect
    from pibridge.convert.reader import open_checkpoint
    from pibridge.parity.stacks.jax import get_policy, prepare_params, run_policy
    from pibridge.parity.openpi_preprocess import (observation_dict, postprocess_actions, preprocess_detailed,
                                                   unnormalize_actions)
    from pibridge.tokenizer import load_tokenizer

    from pibridge.parity.progress import Progress

    prog = Progress("jax", req.steps)
    prog.phase("open checkpoint")
    t0 = time.perf_counter()
    ck = open_checkpoint(req.ckpt)
    variant = detect(ck.leaves).variant
    profile = resolve_profile(req.profile, ck.synth_record)
    stats = ck.norm_stats(profile.asset_id if profile.asset_id in ck.asset_ids else None)
    obs = load_observation(req.obs)
    t1 = time.perf_counter()
    prog.phase("preprocess")
    pre = preprocess_detailed(observation_dict(obs), profile, stats,
                              load_tokenizer(req.tokenizer) if req.tokenizer else None)  # always: recorded
    inputs = pre.inputs if req.shared_inputs is None else load_model_inputs(req.shared_inputs)
    if req.save_inputs is not None:
        save_model_inputs(req.save_inputs, inputs)
    t2 = time.perf_counter()
    synth = ck.synth_record or {}
    fp = None if synth.get("fingerprint") else Fingerprint()  # a real checkpoint: hashed while its leaves load
    source = ck if fp is None else fingerprinting(ck, fp)
    prog.phase("load weights")
    params = prepare_params(source, variant, get_policy(req.precision))  # leaf by leaf; bf16 stays bf16 under f32
    t3 = time.perf_counter()
    rec = StageRecorder(on_record=prog.on_record)
    actions = run_policy(params, variant, inputs, obs.noise, precision=req.precision, num_steps=req.steps, record=rec)
    t4 = time.perf_counter()
    rec.record(st.ACTIONS_UNNORMALIZED, unnormalize_actions(actions, profile, stats), seconds=time.perf_counter() - t4)
    t5 = time.perf_counter()
    rec.record(st.ACTIONS_ROBOT, postprocess_actions(actions, inputs.state, profile, stats),
               seconds=time.perf_counter() - t5)
    del params
    prog.done()
    meta = {
        "packages": package_versions("jax", "jaxlib", "flax", "orbax-checkpoint", "tensorstore"),
        "checkpoint": {"path": str(req.ckpt), "fingerprint": synth.get("fingerprint") or fp.hexdigest(),
                       "synth": ck.synth_record, "variant": variant.name},
        "observation": {"path": str(req.obs), "fingerprint": obs.fingerprint(), "batch": obs.batch},
        "profile": profile.name, "fixes_applied": {}, "not_comparable": {},
        "preprocessing": {"kind": "openpi", **preprocessing_record(pre.prompt_texts, pre.inputs)},
        "timings": {"open_s": round(t1 - t0, 4), "preprocess_s": round(t2 - t1, 4), "load_s": round(t3 - t2, 4),
                    "sample_s": round(t4 - t3, 4)},
    }
    return rec, meta


def fingerprinting(ck, fp: Fingerprint) -> SimpleNamespace:
    """`ck` as prepare_params reads it (.leaves, .read), adding every leaf it reads to `fp`: the checkpoint's
    fingerprint (order-independent, convert/fingerprint.py) without a second pass over the stored data."""
    def read(path):
        arr = ck.read(path)
        fp.add(path, arr)
        return arr

    return SimpleNamespace(leaves=ck.leaves, read=read)


def golden_stages(params, variant, inputs, noise, precision: str, spec=None):
    """The JAX stack on a golden case, every stage recorded; -> (actions, the stages the golden keeps: all but
    goldens.DROPPED_STAGES, or spec.keeps(name) when a GoldenSpec is given)."""
    from pibridge.parity.goldens import DROPPED_STAGES, NUM_STEPS
    from pibridge.parity.stacks.jax import run_policy

    rec = StageRecorder()
    actions = run_policy(params, variant, inputs, noise, precision=precision, num_steps=NUM_STEPS, record=rec)
    keep = spec.keeps if spec is not None else (lambda n: n not in DROPPED_STAGES)
    return actions, [s for s in rec if keep(s.name)]
