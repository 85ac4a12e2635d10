"""LeRobot's host-side preprocessing of pi0 / pi05 (v0.6.1), driven by a converted OUT directory; numpy, plus
torch for the resize only (imported lazily); never jax.

Upstream (huggingface/lerobot v0.6.1, the wheel under /work/wheels/lr0.6.1):
- images: float [0, 1] (B, H, W, 3); `PI05Policy._preprocess_images` (policies/pi05/modeling_pi05.py:952-1012,
  same in pi0) resizes with `resize_with_pad_torch` (policies/common/vla_utils.py:142-215: ratio
  max(W/224, H/224), int() sizes, F.interpolate bilinear align_corners=False without antialias, clamp [0, 1],
  pad centred with the floor half on top/left, value 0.0), then x * 2 - 1.
- normalization: processor/normalize_processor.py:349-401 on float32 tensors: MEAN_STD (x - mean) / (std + eps),
  inverse x * std + mean; QUANTILES 2 (x - q01) / d - 1 with d = q99 - q01 (eps only where d == 0), inverse
  (x + 1) d / 2 + q01. eps 1e-8 from the processor JSON.
- prompt: pi05 `Pi05PrepareStateTokenizerProcessorStep` (policies/pi05/processor_pi05.py:52-80): discretise the
  normalized, unpadded state into 256 bins, "Task: {clean}, State: {bins};\\nAction: "; pi0
  `Pi0NewLineProcessor` (policies/pi0/processor_pi0.py:59-78): the raw task plus "\\n" unless it ends with one.
- tokens: `TokenizerProcessorStep` (processor/tokenizer_processor.py:260-270): BOS, right padding with 0 to
  max_length, truncation. A SentencePiece model stands in for the HF PaliGemma tokenizer.

Axis legend: B batch, C cameras (OpenPI slot order), H/W image height/width, L tokens, S state dim.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pibridge.errors import PibridgeError
from pibridge.parity.inputs import IMAGE_SIZE, ModelInputs
from pibridge.parity.observation import Observation
from pibridge.provenance import load_provenance
from pibridge.tokenizer import PAD_ID, SentencePieceTokenizer
from pibridge.vocab import MODEL_ACTION_DIM, OPENPI_SLOTS

LEROBOT_EPS = 1e-8  # NormalizerProcessorStep.eps default (processor/normalize_processor.py)
STATE_BINS = 256  # processor_pi05.py:68
STATE_KEY, ACTION_KEY = "observation.state", "action"


@dataclass(frozen=True)
class Normalizer:
    """One normalizer step of a processor JSON: stats per feature ({stat: float32 array}), modes per feature type."""

    stats: dict[str, dict[str, np.ndarray]]
    norm_map: dict[str, str]  # feature type (STATE, ACTION, VISUAL) -> mode
    feature_types: dict[str, str]  # feature key -> type
    eps: float

    def mode(self, key: str) -> str:
        return self.norm_map.get(self.feature_types.get(key, ""), "IDENTITY")

    def normalize(self, key: str, x: np.ndarray) -> np.ndarray:
        return self._apply(key, np.asarray(x, np.float32), inverse=False)

    def unnormalize(self, key: str, x: np.ndarray) -> np.ndarray:
        return self._apply(key, np.asarray(x, np.float32), inverse=True)

    def _apply(self, key: str, x: np.ndarray, inverse: bool) -> np.ndarray:
        mode, st = self.mode(key), self.stats.get(key)
        if mode == "IDENTITY" or st is None:  # normalize_processor.py:330-331
            return x
        f32 = np.float32
        if mode == "MEAN_STD":  # :357-362
            mean, std = st["mean"], st["std"]
            return x * std + mean if inverse else (x - mean) / (std + f32(self.eps))
        if mode == "QUANTILES":  # :394-401
            q01, q99 = st["q01"], st["q99"]
            d = q99 - q01
            d = np.where(d == 0, f32(self.eps), d)
            return (x + f32(1.0)) * d / f32(2.0) + q01 if inverse else f32(2.0) * (x - q01) / d - f32(1.0)
        raise PibridgeError(f"normalization mode {mode} for {key}", "IDENTITY, MEAN_STD or QUANTILES (pi0 / pi05)",
                            "convert the policy with pibridge (it writes QUANTILES or MEAN_STD)")


PLUGIN_STEPS = "lerobot_policy_pibridge.steps."
KNOWN_PRE = {"rename_observations_processor", "to_batch_processor", "relative_actions_processor",
             "delta_actions_processor", "normalizer_processor", "pi05_prepare_state_tokenizer_processor_step",
             "pi0_new_line_processor", "tokenizer_processor", "device_processor",
             "DefaultPromptStep", "PromptCleanStep", "AdaptToPiInputsStep", "OpenPIResizeStep",
             "RuntimeFixesRequiredStep"}  # the last: a marker (identity) for LeRobot without the plugin
KNOWN_POST = {"unnormalizer_processor", "absolute_actions_processor", "device_processor", "AdaptToPiOutputsStep"}
_REGISTRY = {"pibridge_default_prompt": "DefaultPromptStep", "pibridge_prompt_clean": "PromptCleanStep",
             "pibridge_adapt_to_pi_inputs": "AdaptToPiInputsStep", "pibridge_adapt_to_pi_outputs": "AdaptToPiOutputsStep",
             "pibridge_openpi_resize": "OpenPIResizeStep", "pibridge_runtime_fixes_required": "RuntimeFixesRequiredStep"}


def _step_name(step: dict) -> str:
    """A processor JSON entry's name: its registry name, or the class name of a pibridge plugin class path."""
    name = step.get("registry_name") or step.get("class", "")
    return _REGISTRY.get(name, name[len(PLUGIN_STEPS):] if name.startswith(PLUGIN_STEPS) else name)


@dataclass(frozen=True)
class Chain:
    """OpenPI's host transforms as OUT's processor JSONs order them (the math: pibridge.hostx)."""

    default_prompt: str | None = None  # pibridge_default_prompt's prompt (samples without one); None: no such step
    prompt_clean: bool = False
    adapt_inputs: bool = False
    relative_mask: tuple[bool, ...] | None = None  # None: no enabled absolute step; else LeRobot's name mask
    adapt_outputs: bool = False
    openpi_resize: bool = False  # pibridge_openpi_resize: OpenPI's host resize before LeRobot's own

    def robot_actions(self, unnormalized: np.ndarray, raw_state: np.ndarray) -> np.ndarray:
        """OUT's postprocessor after the unnormalizer: absolute actions (the state cached by the relative step, in
        pi space when adapt_to_pi runs before it), then the adapt_to_pi output step."""
        from pibridge import hostx

        a = np.asarray(unnormalized, np.float64)
        if self.relative_mask is not None:
            state = hostx.aloha_state_to_pi(raw_state) if self.adapt_inputs else raw_state
            a = hostx.absolute_actions(a, np.asarray(state, np.float32), self.relative_mask)
        return (hostx.aloha_actions_from_pi(a) if self.adapt_outputs else a).astype(np.float32)


def read_chain(out: Path, pre_json: dict, post_json: dict, config: dict) -> Chain:
    """The host part of OUT's processors; a step pibridge does not know exits 2 (it could change the action)."""
    from pibridge import hostx

    for which, js, known in (("policy_preprocessor", pre_json, KNOWN_PRE), ("policy_postprocessor", post_json, KNOWN_POST)):
        unknown = [_step_name(s) for s in js["steps"] if _step_name(s) not in known]
        if unknown:
            raise PibridgeError(f"{out}/{which}.json has step(s) {unknown} the torch stack cannot run",
                                f"steps pibridge convert writes: {', '.join(sorted(known))}",
                                "compare with --torch-stack lerobot (the real LeRobot runs any step), or convert again")
    pre = {_step_name(s): s.get("config", {}) for s in pre_json["steps"]}
    post = {_step_name(s): s.get("config", {}) for s in post_json["steps"]}
    rel = pre.get("relative_actions_processor", pre.get("delta_actions_processor"))
    mask = None
    if post.get("absolute_actions_processor", {}).get("enabled") and rel is not None:
        dim = int(config["output_features"][ACTION_KEY]["shape"][0])
        mask = tuple(hostx.lerobot_relative_mask(rel.get("action_names"), rel.get("exclude_joints"), dim))
    return Chain(default_prompt=(pre.get("DefaultPromptStep") or {}).get("prompt"), prompt_clean="PromptCleanStep" in pre,
                 adapt_inputs="AdaptToPiInputsStep" in pre, relative_mask=mask,
                 adapt_outputs="AdaptToPiOutputsStep" in post, openpi_resize="OpenPIResizeStep" in pre)


@dataclass(frozen=True)
class LeRobotFiles:
    """What the torch side reads from OUT: config.json, pibridge.json, the processor JSONs and their stats."""

    out: Path
    config: dict
    provenance: dict
    pre: Normalizer
    post: Normalizer
    prompt_step: str  # "pi05_state" or "pi0_newline"
    max_length: int
    chain: Chain = Chain()  # host steps of OUT's processors (pibridge plugin steps, relative / absolute actions)

    @property
    def slot_cameras(self) -> dict[str, str | None]:
        """OpenPI slot -> LeRobot camera name (None for an empty slot), in OpenPI slot order."""
        prof, names = self.provenance["profile"], iter(self.provenance.get("camera_names", []))
        empty = set(self.provenance.get("empty_slots", []))
        return {c["slot"]: None if c["slot"] in empty else next(names, None) for c in prof["cameras"]}


def _read_json(path: Path) -> dict:
    if not path.is_file():
        raise PibridgeError(f"{path} not found", "a LeRobot policy directory written by `pibridge convert`",
                            "convert the checkpoint first: pibridge convert CKPT OUT")
    return json.loads(path.read_text())


def _normalizer(out: Path, processor: dict, registry: str) -> Normalizer:
    from safetensors.numpy import load_file

    step = next((s for s in processor["steps"] if s.get("registry_name") == registry), None)
    if step is None or "state_file" not in step:
        raise PibridgeError(f"{out}: processor {processor.get('name')} has no {registry} step with a state file",
                            f"a {registry} step naming its safetensors stats", "convert the checkpoint again")
    stats: dict[str, dict[str, np.ndarray]] = {}
    for key, value in load_file(str(out / step["state_file"])).items():
        feature, stat = key.rsplit(".", 1)  # "<feature>.<stat>", split on the last '.' (lerobot.md 1.3)
        stats.setdefault(feature, {})[stat] = value.astype(np.float32)
    cfg = step["config"]
    types = {k: v["type"] for k, v in cfg.get("features", {}).items()}
    return Normalizer(stats, dict(cfg.get("norm_map", {})), types, float(cfg.get("eps", LEROBOT_EPS)))


def load_lerobot_files(out: Path) -> LeRobotFiles:
    out = Path(out)
    pre_json, post_json = _read_json(out / "policy_preprocessor.json"), _read_json(out / "policy_postprocessor.json")
    names = [s.get("registry_name") or s.get("class") for s in pre_json["steps"]]
    prompt_step = "pi05_state" if "pi05_prepare_state_tokenizer_processor_step" in names else \
        "pi0_newline" if "pi0_new_line_processor" in names else None
    tok = next((s for s in pre_json["steps"] if s.get("registry_name") == "tokenizer_processor"), None)
    if prompt_step is None or tok is None:
        raise PibridgeError(f"{out}/policy_preprocessor.json steps {names}",
                            "a pi05 state-prompt or pi0 newline step and a tokenizer_processor step",
                            "convert the checkpoint with pibridge convert")
    config = _read_json(out / "config.json")
    return LeRobotFiles(out, config, load_provenance(out),
                        _normalizer(out, pre_json, "normalizer_processor"),
                        _normalizer(out, post_json, "unnormalizer_processor"), prompt_step,
                        int(tok["config"]["max_length"]), read_chain(out, pre_json, post_json, config))


# --------------------------------------------------------------------------------------------- images
def to_float01(img: np.ndarray) -> np.ndarray:
    """uint8 -> float32 [0, 1] as LeRobot's datasets and robot processors give images (x / 255 in float32)."""
    return np.asarray(img).astype(np.float32) / np.float32(255.0)


def resize_with_pad_lerobot(images: np.ndarray, height: int = IMAGE_SIZE, width: int = IMAGE_SIZE) -> np.ndarray:
    """(B, H, W, 3) float32 in [0, 1] -> (B, height, width, 3), vla_utils.py:142-215 on torch CPU."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(np.ascontiguousarray(images, np.float32)).permute(0, 3, 1, 2)  # (B,H,W,3) -> (B,3,H,W)
    cur_h, cur_w = x.shape[-2:]
    ratio = max(cur_w / width, cur_h / height)  # vla_utils.py:177
    new_h, new_w = int(cur_h / ratio), int(cur_w / ratio)
    y = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False).clamp(0.0, 1.0)  # :182-193
    top, rem_h = divmod(height - new_h, 2)  # :198-201: the floor half on top / left
    left, rem_w = divmod(width - new_w, 2)
    y = F.pad(y, (left, left + rem_w, top, top + rem_h), mode="constant", value=0.0)
    return y.permute(0, 2, 3, 1).contiguous().numpy()  # (B,3,h,w) -> (B,h,w,3)


def preprocess_image(img_uint8: np.ndarray, resize: str, openpi_step: bool = False) -> np.ndarray:
    """(B, H, W, 3) uint8 -> (B, 224, 224, 3) float32 in [-1, 1]. resize "lerobot": LeRobot's torch resize on
    float [0, 1]; "openpi": OpenPI's client-side PIL resize on uint8 first (what an OpenPI client sends).
    openpi_step: OUT's pibridge_openpi_resize runs first on the frame (u / 255), leaving either resize a no-op."""
    if openpi_step:
        from pibridge.hostx import image_to_uint8, openpi_resize_float01

        img_uint8 = image_to_uint8(openpi_resize_float01(to_float01(img_uint8)))  # exact: u / 255 * 255 -> u
    if resize == "openpi":
        from pibridge.hostx import resize_with_pad

        img01 = to_float01(resize_with_pad(img_uint8))
    elif resize == "lerobot":
        img01 = to_float01(img_uint8)
        if img01.shape[1:3] != (IMAGE_SIZE, IMAGE_SIZE):  # modeling_pi05.py:993
            img01 = resize_with_pad_lerobot(img01)
    else:
        raise PibridgeError(f"resize {resize!r}", "openpi or lerobot", "pass --resize openpi|lerobot")
    return img01 * np.float32(2.0) - np.float32(1.0)  # modeling_pi05.py:997


# --------------------------------------------------------------------------------------------- prompt
def discretize_state(state: np.ndarray) -> np.ndarray:
    """processor_pi05.py:68: digitize(state, linspace(-1, 1, 257)[:-1]) - 1 (no clipping: < -1 gives -1)."""
    return np.digitize(state, bins=np.linspace(-1, 1, STATE_BINS + 1)[:-1]) - 1


def pi05_prompt(task: str, normalized_state: np.ndarray) -> str:
    cleaned = task.strip().replace("_", " ").replace("\n", " ")  # processor_pi05.py:72
    bins = " ".join(map(str, discretize_state(normalized_state)))
    return f"Task: {cleaned}, State: {bins};\nAction: "  # :74


def pi0_prompt(task: str) -> str:
    return task if task.endswith("\n") else f"{task}\n"  # processor_pi0.py:69-75 (no cleaning)


def tokenize(texts: list[str], tokenizer: SentencePieceTokenizer, max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """BOS + ids, right-padded with 0 / truncated to max_length -> tokens (B, L) int32, mask (B, L) bool."""
    tokens = np.full((len(texts), max_length), PAD_ID, np.int32)
    mask = np.zeros((len(texts), max_length), bool)
    for i, text in enumerate(texts):
        ids = tokenizer.encode(text, add_bos=True)[:max_length]
        tokens[i, : len(ids)], mask[i, : len(ids)] = ids, True
    return tokens, mask


def pad_vector(x: np.ndarray, dim: int = MODEL_ACTION_DIM) -> np.ndarray:  # PI05Config / PI0Config max_state_dim
    """LeRobot's pad_vector: zero-pad the last axis to dim."""
    return np.pad(x, [(0, 0)] * (x.ndim - 1) + [(0, max(0, dim - x.shape[-1]))])


# ------------------------------------------------------------------------------------ whole observation
@dataclass(frozen=True, eq=False)
class LeRobotPreprocessed:
    inputs: ModelInputs
    prompt_texts: tuple[str, ...]
    state_normalized: np.ndarray  # (B, S) float32, before padding


def preprocess(obs: Observation, files: LeRobotFiles, tokenizer: SentencePieceTokenizer | None,
               resize: str = "lerobot") -> LeRobotPreprocessed:
    """An observation file -> ModelInputs as LeRobot's preprocessor and _preprocess_images build them, cameras in
    OpenPI slot order. Per-sample image masks of the observation are kept (LeRobot itself can only drop a camera
    for the whole batch); empty slots are -1 images with mask False, as LeRobot's missing cameras."""
    b = obs.batch
    images, mask = [], []
    for c, (slot, camera) in enumerate(files.slot_cameras.items()):
        present = camera is not None and slot in obs.images
        images.append(preprocess_image(obs.images[slot], resize, files.chain.openpi_resize) if present
                      else np.full((b, IMAGE_SIZE, IMAGE_SIZE, 3), -1.0, np.float32))  # modeling_pi05.py:1011
        col = obs.image_mask[:, obs.slots.index(slot)] if present else np.zeros(b, bool)
        mask.append(col)
    state = obs.state
    if files.chain.adapt_inputs:  # pibridge_adapt_to_pi_inputs, before the normalizer
        from pibridge.hostx import aloha_state_to_pi

        state = aloha_state_to_pi(state).astype(np.float32)
    state = files.pre.normalize(STATE_KEY, state)
    tokens, token_mask, texts = _tokens(obs, files, state, tokenizer)
    inputs = ModelInputs(np.stack(images, axis=1), np.stack(mask, axis=1),  # C x (B, 224, 224, 3) -> (B, C, ...)
                         pad_vector(state), tokens, token_mask)
    return LeRobotPreprocessed(inputs, texts, state)


def _tokens(obs: Observation, files: LeRobotFiles, state: np.ndarray, tokenizer: SentencePieceTokenizer | None):
    if obs.tokens is not None:  # token ids given: right-pad / truncate them like the tokenizer step
        rows = [row[m] for row, m in zip(obs.tokens, obs.token_mask)]
        tokens = np.zeros((obs.batch, files.max_length), np.int32)
        mask = np.zeros_like(tokens, bool)
        for i, r in enumerate(rows):
            r = r[: files.max_length]
            tokens[i, : len(r)], mask[i, : len(r)] = r, True
        return tokens, mask, ()
    if tokenizer is None:
        raise PibridgeError("no tokenizer for the prompt", "a SentencePiece model (OUT/tokenizer/tokenizer.model)",
                            "pass --tokenizer PATH (PaliGemma's paligemma_tokenizer.model)")
    from pibridge.hostx import clean_prompt

    prompts = [files.chain.default_prompt if p is None else p for p in obs.prompts]  # pibridge_default_prompt
    missing = [i for i, p in enumerate(prompts) if p is None]
    if missing:  # LeRobot's tokenizer step raises on a None task too (processor/tokenizer_processor.py)
        raise PibridgeError(f"observation sample(s) {missing} have no prompt and {files.out}/policy_preprocessor.json "
                            "has no pibridge_default_prompt step", "a prompt per sample, or OUT with a default prompt",
                            "add the prompt to the observation, or convert with --default-prompt TEXT")
    if files.chain.prompt_clean:  # pibridge_prompt_clean, before the newline step
        prompts = [clean_prompt(p) for p in prompts]
    if files.prompt_step == "pi05_state":
        texts = [pi05_prompt(p, s) for p, s in zip(prompts, state)]
    else:
        texts = [pi0_prompt(p) for p in prompts]
    tokens, mask = tokenize(texts, tokenizer, files.max_length)
    return tokens, mask, tuple(texts)


def unnormalize_actions(actions: np.ndarray, files: LeRobotFiles) -> np.ndarray:
    """(B, A, 32) model actions -> (B, A, action_dim): LeRobot slices to the native dim
    (modeling_pi05.py predict_action_chunk) and the postprocessor unnormalizes."""
    dim = int(files.config["output_features"][ACTION_KEY]["shape"][0])
    return files.post.unnormalize(ACTION_KEY, np.asarray(actions, np.float32)[..., :dim])


def robot_actions(unnormalized: np.ndarray, obs: Observation, files: LeRobotFiles) -> np.ndarray:
    """OUT's whole postprocessor: the unnormalized actions through the absolute and adapt_to_pi steps."""
    return files.chain.robot_actions(unnormalized, np.asarray(obs.state, np.float32))


def default_tokenizer_path(out: Path) -> Path | None:
    p = Path(out) / "tokenizer" / "tokenizer.model"
    return p if p.is_file() else None


__all__ = ["LeRobotFiles", "LeRobotPreprocessed", "Normalizer", "default_tokenizer_path",
           "discretize_state", "load_lerobot_files", "pi05_prompt", "pi0_prompt", "preprocess", "preprocess_image",
           "resize_with_pad_lerobot", "robot_actions", "tokenize", "unnormalize_actions"]
