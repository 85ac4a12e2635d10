"""The `transformers` parity stack: a converted OUT loaded by transformers' OWN pi0 / pi05 models
(PI0ForConditionalGeneration, transformers >= 5.5; PI05ForConditionalGeneration, >= 5.25) through transformers'
conversion mapping (conversion_mapping.py "pi0" rules: 5.24.0 L1265-1290, 5.25.0 L1341-1365; "pi05" -> "pi0"
5.25.0 L121), run by their own `sample_actions`, recorded under the shared stage names with forward hooks (never
pibridge's forward). Runs in the interpreter that has that release (capture.py: this one, or .venvs/tf-<version>:
torch + that release, never jax), through `pibridge parity capture --stack transformers`.

Loading: `from_pretrained(OUT, config=<built from OUT's variant>, use_kernels=False)` (5.25 enables hub kernels by
default and fails without `kernels` 0.19: modeling_utils.py L4224, L4415-4423), then pibridge's own check that
every tensor of OUT/model.safetensors landed, by name (RENAMES below, an independent reading of the mapping) and
value; anything missing, unexpected, unequal or unused (but the expert lm_head, see UNUSED_BY_DESIGN) exits 2.

Inputs: the ModelInputs of `--shared-inputs` (OpenPI's preprocessing, so the comparison isolates the model), else
pibridge's model of LeRobot's preprocessing on the observation (transformers' own PI0Processor / PI05Processor are
not run: their differences from OpenPI are measured separately, bench/results/transformers_native.md).
The prefix handed to transformers is OpenPI's: every camera slot gets its 256 image tokens, a masked camera is
masked in `attention_mask` (cameras="mask", default). cameras="drop" feeds what transformers' processor feeds
(absent cameras dropped by `pixel_attention_mask`, modeling_pi05.py L443-461): the prefix layout then differs,
so prefix/* and llm/* are not recorded (meta["not_comparable"]).
Attention: transformers' default (sdpa) unless attn="eager". float32 only.
Axis legend: B batch, C cameras, L tokens, T prefix tokens, S suffix tokens, K kv heads, H head_dim, A horizon.
"""

from __future__ import annotations

import importlib.metadata as md
import json
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pibridge.errors import PibridgeError
from pibridge.parity import stages as st
from pibridge.parity.stacks.common import cache_kv as _cache_kv
from pibridge.parity.stacks.common import first as _first
from pibridge.parity.stacks.common import to_numpy as _np
from pibridge.parity.stages import StageRecorder

MIN_VERSION = {"pi0": (5, 5), "pi05": (5, 25)}  # first release here with models/pi0 resp. models/pi05
CLASSES = {"pi0": "PI0ForConditionalGeneration", "pi05": "PI05ForConditionalGeneration"}
CONFIGS = {"pi0": "PI0Config", "pi05": "PI05Config"}
# OUT (LeRobot) key -> transformers' native key, applied in order (conversion_mapping.py "pi0", 5.25.0 L1341-1365:
# PrefixChange(prefix_to_remove="model") then the WeightRenaming rows).
RENAMES = (
    (r"^model\.", ""),
    (r"^paligemma_with_expert\.paligemma\.model\.", "model.vlm."),
    (r"^paligemma_with_expert\.gemma_expert\.model\.", "model.dit."),
    (r"^paligemma_with_expert\.paligemma\.lm_head\.", "model.vlm.language_model.embed_tokens."),
    (r"^paligemma_with_expert\.gemma_expert\.lm_head\.", "model.dit.embed_tokens."),
    (r"^(state_proj|action_in_proj|action_time_mlp_in|action_time_mlp_out|time_mlp_in|time_mlp_out)\.",
     r"embed_action_time.\1."),
)
# pibridge writes zeros here (convert/mapping.py "expert.lm_head": OpenPI has no such tensor; LeRobot never reads it);
# transformers drops it (pi05: _keys_to_ignore_on_load_unexpected, modeling_pi05.py L316) or loads it into
# model.dit.embed_tokens, which its forward never reads (pi0: the expert is fed inputs_embeds).
UNUSED_BY_DESIGN = ("model.paligemma_with_expert.gemma_expert.lm_head.weight",)
CAMERA_MODES = ("mask", "drop")
ATTN_MODES = ("sdpa", "eager")


def native_key(key: str) -> str:
    for pattern, repl in RENAMES:
        key = re.sub(pattern, repl, key)
    return key


def _version_tuple(v: str) -> tuple[int, int]:
    return tuple(int(x) for x in re.findall(r"\d+", v)[:2])  # type: ignore[return-value]


def require_model_class(model: str):
    """transformers' own class for pi0 / pi05, or PibridgeError naming the release that has it."""
    import transformers

    v = transformers.__version__
    if _version_tuple(v) < MIN_VERSION[model]:
        need = ".".join(map(str, MIN_VERSION[model]))
        raise PibridgeError(f"transformers {v} has no native {model} model ({CLASSES[model]})",
                            f"transformers >= {need}",
                            f"convert OUT for such a release (pibridge convert --transformers-version VERSION ...: the "
                            f"capture then runs in .venvs/tf-VERSION, built by python tools/tfvenv.py VERSION)")
    return getattr(transformers, CLASSES[model]), getattr(transformers, CONFIGS[model])


def build_config(config_cls, variant, chunk_size: int, steps: int):
    """The native config for OUT's variant (sizes as pibridge's torch stack builds them, stacks/common.py);
    periods 4e-3 / 4.0 = openpi pi0.py:161 (PI0Config defaults too)."""
    from pibridge.parity.stacks.common import gemma_config, paligemma_config

    vlm = paligemma_config(variant).to_dict()
    vlm["image_token_id"] = variant.vocab_size
    dit = gemma_config(variant.action_expert, variant.vocab_size).to_dict()
    return config_cls(vlm_config=vlm, dit_config=dit, chunk_size=chunk_size, max_action_dim=variant.action_dim,
                      num_inference_steps=steps, min_period=4e-3, max_period=4.0,
                      **({} if variant.pi05 else {"max_state_dim": variant.action_dim}))


# --- loading, verified --------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class NativeLoadCheck:
    keys: int
    missing: tuple[str, ...]  # native keys no file tensor filled (random init)
    unexpected: tuple[str, ...]  # file keys whose native key the model does not have
    wrong_shape: tuple[str, ...]
    wrong_value: tuple[str, ...]
    unused: tuple[str, ...]  # file keys by design not used (UNUSED_BY_DESIGN)
    reported: dict  # transformers' own loading info

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.wrong_shape or self.wrong_value)


def verify_native_load(model, weights: Path, info: dict) -> NativeLoadCheck:
    """File vs loaded state dict by the expected rename (one file tensor at a time)."""
    import torch
    from safetensors import safe_open

    sd = model.state_dict()
    covered, unexpected, unused, wrong_shape, wrong_value = set(), [], [], [], []
    with safe_open(str(weights), "pt") as f:
        keys = sorted(f.keys())
        for k in keys:
            nk = native_key(k)
            if k in UNUSED_BY_DESIGN:
                unused.append(k)
            if nk not in sd:
                if k not in UNUSED_BY_DESIGN:
                    unexpected.append(k)
                continue
            covered.add(nk)
            t = f.get_tensor(k)
            if tuple(t.shape) != tuple(sd[nk].shape):
                wrong_shape.append(k)
            elif not torch.equal(t.to(sd[nk].dtype), sd[nk].cpu()):
                wrong_value.append(k)
    reported = {n: sorted(map(str, info.get(n) or [])) for n in ("missing_keys", "unexpected_keys", "mismatched_keys")}
    return NativeLoadCheck(len(keys), tuple(sorted(sd.keys() - covered)), tuple(unexpected), tuple(wrong_shape),
                           tuple(wrong_value), tuple(unused), reported)


def load_native(out_dir: Path, prov: dict, *, steps: int, attn: str | None):
    """transformers' own from_pretrained (kernels off), then the load check; -> (model, NativeLoadCheck)."""
    import torch

    from pibridge.configs import load_variant

    from transformers.utils import logging as tf_logging

    os.environ["USE_HUB_KERNELS"] = "0"  # 5.25: from_pretrained turns hub kernels on unless told not to
    tf_logging.disable_progress_bar()
    model_cls, config_cls = require_model_class(prov["model"])
    config_json = json.loads((Path(out_dir) / "config.json").read_text())
    cfg = build_config(config_cls, load_variant(prov["variant"]), int(config_json["chunk_size"]), steps)
    kw = {"attn_implementation": attn} if attn else {}
    model, info = model_cls.from_pretrained(str(out_dir), config=cfg, use_kernels=False, dtype=torch.float32,
                                            output_loading_info=True, **kw)
    model.eval()
    check = verify_native_load(model, Path(out_dir) / "model.safetensors", info)
    if not check.ok:
        first = (check.missing + check.unexpected + check.wrong_shape + check.wrong_value)[:4]
        tf, rep = md.version("transformers"), check.reported
        own = (f"transformers itself reported {len(rep['missing_keys'])} missing / {len(rep['unexpected_keys'])} "
               f"unexpected / {len(rep['mismatched_keys'])} mismatched keys (first missing: "
               f"{rep['missing_keys'][:2]})")
        target = prov.get("target", {}).get("transformers_version")
        fix = (f"convert for this transformers release: pibridge convert --transformers-version {tf} ..."
               if target != tf else
               f"OUT already has transformers {tf}'s key layout, so this release's loader does not map it (5.5.x "
               "lacks the PrefixChange for LeRobot's `model.` prefix that 5.24.0 has): use a release whose native "
               "model loads LeRobot files (5.24.0 for pi0, 5.25.0 for pi05) and convert for it")
        raise PibridgeError(
            f"transformers {tf} {CLASSES[prov['model']]} did not load {out_dir} completely: {len(check.missing)} "
            f"missing, {len(check.unexpected)} unexpected, {len(check.wrong_shape)} wrong shape, "
            f"{len(check.wrong_value)} not equal to the file (first: {first}); {own}",
            "every tensor of model.safetensors in the model's state dict under transformers' conversion mapping, "
            "equal in value, and no parameter left to random initialisation", fix)
    return model, check


# --- native inputs ------------------------------------------------------------------------------------------------

def native_inputs(inputs, image_token_id: int, tokens_per_image: int, cameras: str) -> dict:
    """ModelInputs -> sample_actions kwargs. "mask": every slot's image tokens, masked ones off in attention_mask
    (OpenPI's prefix, openpi pi0.py:118-140). "drop": per sample only its present cameras' tokens, right-padded."""
    import torch

    B, C = inputs.image_mask.shape
    pixel_values = torch.from_numpy(np.ascontiguousarray(inputs.images.transpose(0, 1, 4, 2, 3)))  # (B,C,H,W,3)->(B,C,3,H,W)
    tokens, tmask = inputs.tokens.astype(np.int64), inputs.token_mask
    if cameras == "mask":
        img_ids = np.full((B, C * tokens_per_image), image_token_id, np.int64)
        ids = np.concatenate([img_ids, tokens], axis=1)
        att = np.concatenate([np.repeat(inputs.image_mask, tokens_per_image, axis=1), tmask], axis=1)
        pix_mask = np.ones((B, C), bool)
    else:
        rows = [np.concatenate([np.full(int(m.sum()) * tokens_per_image, image_token_id, np.int64), t])
                for m, t in zip(inputs.image_mask, tokens)]
        masks = [np.concatenate([np.ones(int(m.sum()) * tokens_per_image, bool), tm])
                 for m, tm in zip(inputs.image_mask, tmask)]
        n = max(len(r) for r in rows)
        ids = np.stack([np.pad(r, (0, n - len(r))) for r in rows])
        att = np.stack([np.pad(m, (0, n - len(m))) for m in masks])
        pix_mask = inputs.image_mask
    return {"input_ids": torch.from_numpy(ids), "pixel_values": pixel_values,
            "attention_mask": torch.from_numpy(att.astype(np.int64)), "pixel_attention_mask": torch.from_numpy(pix_mask)}


# --- recording ----------------------------------------------------------------------------------------------------

class NativeRecorder:
    """Forward hooks (and one instance-level wrapper of embed_prefix, to read its result) on a loaded native model;
    `remove()` undoes them. Denoising stages are buffered so `suffix/time` precedes them, as in the stage order."""

    def __init__(self, model, recorder: StageRecorder, image_mask: np.ndarray, prefix: bool, tokens_per_image: int):
        self.m, self.rec, self.t = model, recorder, time.perf_counter()
        self.image_mask, self.prefix, self.n_img = image_mask, prefix, tokens_per_image
        self.step = -1  # -1: before the first denoising forward
        self.hooks, self.pending, self.times, self.steps = [], {}, [], []
        self.attention_mask = None
        self._install()

    def put(self, name, value, valid=None):
        now = time.perf_counter()
        self.rec.record(name, value, valid, seconds=now - self.t)
        self.t = time.perf_counter()

    def _hook(self, module, fn):
        self.hooks.append(module.register_forward_hook(fn))

    def _install(self):
        core = self.m.model
        vt = core.vlm.vision_tower
        sig = getattr(vt, "vision_model", vt)
        B, C = self.image_mask.shape
        vit_valid = self.image_mask.reshape(B * C)[:, None, None]  # b-major, as pixel_values.flatten(0, 1)
        self._hook(sig.embeddings, lambda m, i, o: self.put(st.IMG_EMBED, _np(o), vit_valid))
        for li, layer in enumerate(sig.encoder.layers):
            self._hook(layer, lambda m, i, o, li=li: self.put(st.img_block(li), _np(_first(o)), vit_valid))
        self._hook(sig.post_layernorm, lambda m, i, o: self.put(st.IMG_OUT, _np(o), vit_valid))
        tok_valid = np.repeat(self.image_mask, self.n_img, axis=1)[:, :, None]

        def projector(m, i, o):
            x = _np(o)
            self.put(st.IMG_TOKENS, x.reshape(B, C * x.shape[1], x.shape[2]), tok_valid)  # (B*C,256,D)->(B,C*256,D)
        self._hook(core.vlm.multi_modal_projector, projector)
        if self.prefix:
            original = core.embed_prefix

            def embed_prefix(*a, **k):
                out = original(*a, **k)
                self.put(st.PREFIX_EMBEDS, _np(out), self.attention_mask[:, :, None])
                self.put(st.PREFIX_MASK, self.attention_mask.astype(np.float32))
                return out
            core.embed_prefix = embed_prefix
            for li, layer in enumerate(core.vlm.language_model.layers):
                self._hook(layer, lambda m, i, o, li=li: self.pending.update({li: _np(_first(o))}))
            self._hook(core.vlm, self._on_vlm)
        self.hooks.append(self.m.register_forward_pre_hook(self._on_step))
        self._hook(self.m.embed_action_time.sinusoid_embeds, lambda m, i, o: self.times.append(_np(o)))
        for li, layer in enumerate(core.dit.layers):
            self._hook(layer, lambda m, i, o, li=li: self.steps.append((st.expert_block(self.step, li), _np(_first(o)))))
        self._hook(self.m.action_out_proj, lambda m, i, o: self.steps.append((st.velocity(self.step), _np(o))))

    def _on_vlm(self, module, args, output):
        valid = self.attention_mask.astype(bool)
        for i in sorted(self.pending):
            k, v = _cache_kv(output.past_key_values if getattr(output, "cache", None) is None else output.cache, i)
            self.put(st.llm_kv(i, "k"), _np(k.transpose(1, 2)), valid[:, :, None, None])  # (B,K,T,H) -> (B,T,K,H)
            self.put(st.llm_kv(i, "v"), _np(v.transpose(1, 2)), valid[:, :, None, None])
            self.put(st.llm_block(i), self.pending[i], valid[:, :, None])

    def _on_step(self, module, args, kwargs=None):
        self.step += 1

    def finish(self, actions) -> None:
        self.put(st.SUFFIX_TIME, np.stack(self.times))  # K_steps x (B, D_exp) -> (K_steps, B, D_exp)
        for name, value in self.steps:
            self.put(name, value)
        self.put(st.ACTIONS, _np(actions))

    def remove(self):
        for h in self.hooks:
            h.remove()
        self.m.model.__dict__.pop("embed_prefix", None)  # instance attribute -> the class method again


def run_native(model, prov: dict, inputs, noise: np.ndarray, *, steps: int, cameras: str,
               recorder: StageRecorder) -> np.ndarray:
    """transformers' own sample_actions on ModelInputs, every stage recorded; -> actions (B, A, 32)."""
    import torch

    if cameras not in CAMERA_MODES:
        raise PibridgeError(f"cameras {cameras!r}", f"one of {CAMERA_MODES}", "pass --cameras mask|drop")
    rec_inputs(recorder, inputs)
    vision = model.config.vlm_config.vision_config
    n_img = (vision.image_size // vision.patch_size) ** 2  # SigLIP patches = image tokens per camera (256 at 224/14)
    kw = native_inputs(inputs, model.config.vlm_config.image_token_id, n_img, cameras)
    hooks = NativeRecorder(model, recorder, inputs.image_mask, prefix=cameras == "mask", tokens_per_image=n_img)
    hooks.attention_mask = kw["attention_mask"].numpy()
    if prov["model"] == "pi0":
        kw["state"] = torch.from_numpy(inputs.state)
    try:
        with torch.no_grad():
            actions = model.sample_actions(noise=torch.from_numpy(np.asarray(noise, np.float32)), num_steps=steps, **kw)
        hooks.finish(actions)
    finally:
        hooks.remove()
    return _np(actions)


def rec_inputs(recorder: StageRecorder, x) -> None:
    recorder.record(st.INPUT_IMAGE, x.images, x.image_mask[:, :, None, None, None])
    recorder.record(st.INPUT_IMAGE_MASK, x.image_mask.astype(np.float32))
    recorder.record(st.INPUT_TOKENS, x.tokens.astype(np.float32), x.token_mask)
    recorder.record(st.INPUT_TOKEN_MASK, x.token_mask.astype(np.float32))
    recorder.record(st.INPUT_STATE, x.state)


# --- capture ------------------------------------------------------------------------------------------------------

def capture_native(out_dir: Path, obs_path: Path, *, shared_inputs: Path | None = None,
                   save_inputs: Path | None = None, steps: int = 10, attn: str | None = None, cameras: str = "mask",
                   tokenizer: Path | None = None) -> tuple[StageRecorder, dict]:
    """Load OUT in the installed transformers' native model, run one observation; -> (stages, meta)."""
    import torch

    from pibridge.provenance import load_provenance
    from pibridge.parity.observation import load_observation
    from pibridge.parity.request import load_model_inputs, save_model_inputs

    if attn is not None and attn not in ATTN_MODES:
        raise PibridgeError(f"attention {attn!r}", f"one of {ATTN_MODES}", "pass --attn sdpa|eager")
    torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 (DESIGN "Parity")
    torch.backends.cudnn.allow_tf32 = False
    t0 = time.perf_counter()
    prov, obs = load_provenance(Path(out_dir)), load_observation(Path(obs_path))
    model, check = load_native(Path(out_dir), prov, steps=steps, attn=attn)
    t1 = time.perf_counter()
    if shared_inputs is not None:
        inputs, kind = load_model_inputs(Path(shared_inputs)), "shared"
    else:
        from pibridge.parity import lerobot_preprocess as lp
        from pibridge.tokenizer import load_tokenizer

        files = lp.load_lerobot_files(Path(out_dir))
        tok = tokenizer or lp.default_tokenizer_path(Path(out_dir))
        inputs, kind = lp.preprocess(obs, files, load_tokenizer(tok) if tok else None, "lerobot").inputs, "lerobot"
    if save_inputs is not None:
        save_model_inputs(Path(save_inputs), inputs)
    if obs.noise.shape[1] != model.config.chunk_size:
        raise PibridgeError(f"observation noise horizon {obs.noise.shape[1]}",
                            f"{model.config.chunk_size} (config.json chunk_size)",
                            "make the observation with `pibridge parity obs --profile OUT` for this policy")
    rec = StageRecorder()
    t2 = time.perf_counter()
    run_native(model, prov, inputs, obs.noise, steps=steps, cameras=cameras, recorder=rec)
    t3 = time.perf_counter()
    not_comparable = {} if cameras == "mask" else {
        n: "cameras='drop': the prefix holds only present cameras (transformers' processor layout), not OpenPI's "
           "slot layout" for n in ("prefix/*", "llm/*")}
    meta = {"stack": "transformers", "precision": "float32", "runtime_dtype": "float32",
            "packages": {p: md.version(p) for p in ("transformers", "torch", "safetensors")},
            "model_class": CLASSES[prov["model"]], "attn_implementation": model.config._attn_implementation,
            "cameras": cameras, "inputs": kind, "not_comparable": not_comparable, "fixes_applied": {},
            "notes": ["transformers' own model as shipped: pibridge's runtime fixes are not applied"],
            "load": {"keys": check.keys, "unused_by_design": list(check.unused), "transformers_reported": check.reported},
            "checkpoint": {"path": str(out_dir), "fingerprint": prov["source"]["fingerprint"],
                           "variant": prov["variant"], "target": prov.get("target")},
            "observation": {"path": str(obs_path), "fingerprint": obs.fingerprint(), "batch": obs.batch},
            "profile": prov["profile"]["name"],
            "timings": {"load_s": round(t1 - t0, 4), "sample_s": round(t3 - t2, 4)}}
    return rec, meta
