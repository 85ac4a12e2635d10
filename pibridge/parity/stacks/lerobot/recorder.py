"""Recording a loaded LeRobot policy under the shared stage names, by forward hooks and by wrapping methods of the
loaded instance (never by re-implementing them): _preprocess_images (inputs), SigLIP modules (img/*), embed_prefix
(img/tokens, prefix/*), the prefix forward's KV cache (llm/kv*), decoder layers of both experts (llm/block*,
expert/step*/block*), denoise_step (suffix/time, velocity/step*), sample_actions (actions, all 32 dims).
Axis legend: B batch, C cameras, L tokens, T prefix tokens, K kv heads, H head_dim, A horizon.
"""

from __future__ import annotations

import inspect
import sys
import time

import numpy as np

from pibridge.parity import stages as st
from pibridge.parity.stacks.common import cache_kv, first, to_numpy
from pibridge.parity.stages import StageRecorder
from pibridge.vocab import MODEL_ACTION_DIM



class LeRobotRecorder:
    """Installs hooks and instance-level method wrappers on a loaded LeRobot policy; `remove()` undoes them."""

    def __init__(self, policy, recorder: StageRecorder):
        self.p, self.rec, self.t = policy, recorder, time.perf_counter()
        self.phase: int | None = None  # None: prefix pass; k: Euler step k
        self.vit: dict[str, list] = {}
        self.times: list = []
        self.hooks, self.wrapped = [], []
        self.valid_cam = None
        self.pending_llm: dict[int, np.ndarray] = {}
        self._install()

    def put(self, name, value, valid=None):
        now = time.perf_counter()
        self.rec.record(name, value, valid, seconds=now - self.t)
        self.t = time.perf_counter()

    def _wrap(self, owner, attr, make):
        original = getattr(owner, attr)
        setattr(owner, attr, make(original))
        self.wrapped.append((owner, attr))

    def _install(self):
        core = self.p.model
        pwe = core.paligemma_with_expert
        vt = pwe.paligemma.model.vision_tower
        sig = getattr(vt, "vision_model", vt)
        self.hooks.append(sig.embeddings.register_forward_hook(lambda m, i, o: self.vit.setdefault("e", []).append(o)))
        for li, layer in enumerate(sig.encoder.layers):
            self.hooks.append(layer.register_forward_hook(
                lambda m, i, o, li=li: self.vit.setdefault(li, []).append(first(o))))
        self.hooks.append(sig.post_layernorm.register_forward_hook(lambda m, i, o: self.vit.setdefault("o", []).append(o)))
        for li, layer in enumerate(pwe.paligemma.model.language_model.layers):
            self.hooks.append(layer.register_forward_hook(lambda m, i, o, li=li: self._llm(li, first(o))))
        for li, layer in enumerate(pwe.gemma_expert.model.layers):
            self.hooks.append(layer.register_forward_hook(lambda m, i, o, li=li: self._expert(li, first(o))))
        self._wrap(self.p, "_preprocess_images", self._on_images)
        self._wrap(core, "embed_prefix", self._on_prefix)
        self._wrap(pwe, "forward", self._on_pwe_forward)
        self._wrap(core, "denoise_step", self._on_denoise)
        self._wrap(core, "sample_actions", self._on_sample)

    def remove(self):
        for h in self.hooks:
            h.remove()
        for owner, attr in self.wrapped:
            delattr(owner, attr)  # instance attribute -> the class method again

    def _on_images(self, original):
        def run(batch):
            import torch

            images, masks = original(batch)
            img = torch.stack(images, 1).permute(0, 1, 3, 4, 2)  # C x (B,3,H,W) -> (B,C,H,W,3)
            mask = torch.stack(masks, 1)  # C x (B,) -> (B, C)
            self.valid_cam = mask
            self.put(st.INPUT_IMAGE, to_numpy(img), to_numpy(mask)[:, :, None, None, None] > 0)
            self.put(st.INPUT_IMAGE_MASK, to_numpy(mask))
            toks, tmask = batch["observation.language.tokens"], batch["observation.language.attention_mask"].bool()
            self.put(st.INPUT_TOKENS, to_numpy(toks), to_numpy(tmask) > 0)
            self.put(st.INPUT_TOKEN_MASK, to_numpy(tmask))
            state = to_numpy(batch["observation.state"]).reshape(toks.shape[0], -1)
            self.put(st.INPUT_STATE, np.pad(state, ((0, 0), (0, MODEL_ACTION_DIM - state.shape[1]))))
            return images, masks
        return run

    def _on_prefix(self, original):
        def run(images, img_masks, tokens, masks):
            embs, pad, att = original(images, img_masks, tokens, masks)
            B, C = pad.shape[0], len(images)
            vit_valid = to_numpy(self.valid_cam).reshape(B * C)[:, None, None] > 0

            def b_major(per_cam):  # C x (B, 256, D) -> (B*C, 256, D), index b*C + c
                import torch
                return to_numpy(torch.stack(per_cam, dim=1).flatten(0, 1))

            self.put(st.IMG_EMBED, b_major(self.vit["e"]), vit_valid)
            for li in sorted(k for k in self.vit if isinstance(k, int)):
                self.put(st.img_block(li), b_major(self.vit[li]), vit_valid)
            self.put(st.IMG_OUT, b_major(self.vit["o"]), vit_valid)
            n_img = embs.shape[1] - tokens.shape[1]
            valid = to_numpy(pad)[:, :, None] > 0
            self.put(st.IMG_TOKENS, to_numpy(embs[:, :n_img]), valid[:, :n_img])
            self.put(st.PREFIX_EMBEDS, to_numpy(embs), valid)
            self.put(st.PREFIX_MASK, to_numpy(pad))
            self.pad = to_numpy(pad) > 0
            return embs, pad, att
        return run

    def _llm(self, i, hidden):
        if self.phase is None:
            self.pending_llm[i] = to_numpy(hidden)

    def _expert(self, i, hidden):
        if self.phase is not None:
            self.put(st.expert_block(self.phase, i), to_numpy(hidden))

    def _on_pwe_forward(self, original):
        def run(*args, **kwargs):
            out = original(*args, **kwargs)
            embeds = kwargs.get("inputs_embeds")
            if self.phase is None and embeds is not None and embeds[1] is None:  # the prefix pass
                cache = out[1]
                for i in sorted(self.pending_llm):
                    k, v = cache_kv(cache, i)
                    valid = self.pad[:, :, None, None]
                    self.put(st.llm_kv(i, "k"), to_numpy(k.transpose(1, 2)), valid)  # (B,K,T,H) -> (B,T,K,H)
                    self.put(st.llm_kv(i, "v"), to_numpy(v.transpose(1, 2)), valid)
                    self.put(st.llm_block(i), self.pending_llm[i], self.pad[:, :, None])
                self.phase = 0
            return out
        return run

    def _on_denoise(self, original):
        signature = inspect.signature(original)

        def run(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            self.times.append(bound.arguments["timestep"])
            v = original(*args, **kwargs)
            self.put(st.velocity(self.phase), to_numpy(v))
            self.phase += 1
            return v
        return run

    def _on_sample(self, original):
        def run(*args, **kwargs):
            actions = original(*args, **kwargs)
            self.suffix_time()
            self.put(st.ACTIONS, to_numpy(actions))
            return actions
        return run

    def suffix_time(self):
        """sine-cosine embedding of each step's time, by LeRobot's own function and config periods."""
        import torch

        mod = sys.modules[type(self.p.model).__module__]
        core, cfg = self.p.model, self.p.config
        B = self.pad.shape[0]
        emb = [mod.create_sinusoidal_pos_embedding(t.expand(B) if t.dim() <= 1 else t, core.action_in_proj.out_features,
                                                   min_period=cfg.min_period, max_period=cfg.max_period,
                                                   device=torch.device("cpu"))
               for t in self.times]
        self.put(st.SUFFIX_TIME, to_numpy(torch.stack(emb)))
