"""The key table, unstacking, detection, planning, streaming and the inverse map.

Full-size pi0 / pi05 are checked from shapes only (nothing allocated) against LeRobot's own state-dict
listings (tests/data/lerobot_*_state_dict.tsv, dumped from a meta-device LeRobot policy at transformers
5.4.0 with config.dtype=bfloat16). Data checks use tiny variants.
"""

from __future__ import annotations

import ast
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

from pibridge.configs import load_variant
from pibridge.convert import transforms as T
from pibridge.convert.detect import detect, unstack, unstack_shapes
from pibridge.convert.mapping import ROWS, lerobot_dtype, vision_prefix
from pibridge.convert.plan import convert_tree, inverse_convert, iter_tensors, plan_conversion
from pibridge.convert.tree import openpi_tree_shapes
from pibridge.errors import PibridgeError

DATA = Path(__file__).parent / "data"


def lerobot_listing(model: str) -> dict[str, tuple[tuple[int, ...], str]]:
    out = {}
    for line in (DATA / f"lerobot_{model}_state_dict.tsv").read_text().splitlines():
        if line.startswith("#"):
            continue
        key, shape, dtype = line.split("\t")
        out[key] = (ast.literal_eval(shape), dtype)
    return out


def random_tree(variant_name: str, seed: int = 0) -> dict[tuple[str, ...], np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = openpi_tree_shapes(load_variant(variant_name))
    return {p: rng.standard_normal(s, dtype=np.float32) for p, s in shapes.items()}


@pytest.fixture(scope="module")
def tiny_trees():
    return {name: random_tree(name, seed) for seed, name in enumerate(("tiny-pi05", "tiny-pi0"))}


# --- full size, shapes only ---------------------------------------------------------------------------

@pytest.mark.parametrize("model,count", [("pi05", 813), ("pi0", 778)])
def test_full_size_plan_equals_lerobot_listing_bf16(model, count):
    ref = lerobot_listing(model)
    plan = plan_conversion(openpi_tree_shapes(load_variant(model)), weights_dtype="bfloat16",
                           transformers_version="5.4.0")
    got = {t.key: (t.shape, t.dtype) for t in plan.tensors}
    assert len(ref) == count and len(plan.tensors) == count
    assert got == ref  # keys, shapes and LeRobot's mixed bf16 / fp32 runtime dtypes
    assert plan.accounting.complete
    assert plan.accounting.synthesized == ("model.paligemma_with_expert.gemma_expert.lm_head.weight",)


@pytest.mark.parametrize("model", ["pi05", "pi0"])
def test_full_size_float32_target_is_all_float32(model):
    plan = plan_conversion(openpi_tree_shapes(load_variant(model)), weights_dtype="float32")
    assert {t.dtype for t in plan.tensors} == {"float32"}
    assert {t.key: t.shape for t in plan.tensors} == {k: s for k, (s, _) in lerobot_listing(model).items()}


def test_transformers_56_drops_vision_model_prefix():
    shapes = openpi_tree_shapes(load_variant("pi05"))
    old = plan_conversion(shapes, transformers_version="5.5.4").keys
    new = plan_conversion(shapes, transformers_version="5.6.0").keys
    assert sum("vision_tower.vision_model." in k for k in old) == 437
    assert not any("vision_model" in k for k in new)
    assert sorted(k.replace("vision_tower.vision_model.", "vision_tower.") for k in old) == sorted(new)
    assert vision_prefix("5.3.0") == "vision_model." and vision_prefix("5.24.0") == ""
    with pytest.raises(PibridgeError):
        vision_prefix("4.51.3")


def test_plan_orders_float32_first_and_groups_sources():
    plan = plan_conversion(openpi_tree_shapes(load_variant("pi05")), weights_dtype="bfloat16")
    dtypes = [t.dtype for t in plan.tensors]
    assert dtypes == sorted(dtypes, key=lambda d: d != "float32")
    runs = [t.source for i, t in enumerate(plan.tensors) if i == 0 or t.source != plan.tensors[i - 1].source]
    assert len(runs) == len(set(runs))  # each source leaf appears in one contiguous run: read once


def test_dtype_rule_matches_lerobot_selectors():
    pg = "model.paligemma_with_expert.paligemma."
    assert lerobot_dtype(pg + "model.language_model.norm.weight", "bfloat16") == "float32"
    assert lerobot_dtype("model.paligemma_with_expert.gemma_expert.model.norm.dense.weight", "bfloat16") == "float32"
    assert lerobot_dtype("model.paligemma_with_expert.paligemma.lm_head.weight", "bfloat16") == "bfloat16"
    assert lerobot_dtype("model.time_mlp_in.weight", "bfloat16") == "float32"
    with pytest.raises(PibridgeError):
        lerobot_dtype("x", "float16")


def test_table_roles_unique_and_sources_shared_only_adjacently():
    assert len({r.role for r in ROWS}) == len(ROWS)
    seen, prev = set(), None
    for r in ROWS:
        if r.source != prev:
            assert r.source is None or r.source not in seen
            seen.add(r.source)
        prev = r.source


# --- unstack and detect ---------------------------------------------------------------------------------

def test_unstack_shapes_and_views():
    v = load_variant("tiny-pi05")
    shapes = openpi_tree_shapes(v)
    flat = unstack_shapes(shapes)
    q = ("PaliGemma", "llm", "layers", "attn", "q_einsum", "w")
    assert [flat[(q, i)] for i in range(4)] == [(8, 64, 16)] * 4 and (q, None) not in flat
    ln = ("PaliGemma", "img", "Transformer", "encoderblock", "LayerNorm_0", "scale")
    assert flat[(ln, 0)] == (32,) and (ln, 1) not in flat
    assert flat[(("action_in_proj", "kernel"), None)] == (32, 64)
    arr = np.arange(4 * 8 * 64 * 16, dtype=np.float32).reshape(4, 8, 64, 16)
    views = unstack({q: arr})
    assert np.shares_memory(views[(q, 2)], arr) and np.array_equal(views[(q, 2)], arr[2])


@pytest.mark.parametrize("name", ["pi0", "pi05", "tiny-pi0", "tiny-pi05"])
def test_detect_known_variants(name):
    det = detect(openpi_tree_shapes(load_variant(name)))
    assert det.variant == load_variant(name)
    assert det.model == ("pi05" if load_variant(name).pi05 else "pi0")
    assert det.evidence


def test_detect_custom_sizes():
    v = load_variant("tiny-pi05")
    from dataclasses import replace
    custom = replace(v, action_expert=replace(v.action_expert, width=48, mlp_dim=96, variant="x"), action_dim=14)
    det = detect(openpi_tree_shapes(custom))
    assert det.model == "pi05" and det.variant.name == "custom-pi05"
    assert det.variant.action_expert.width == 48 and det.variant.action_dim == 14
    assert det.variant.paligemma == v.paligemma  # named back to "dummy"


def _shapes(name):
    return dict(openpi_tree_shapes(load_variant(name)))


def test_detect_refuses_mixed_roles():
    shapes = _shapes("tiny-pi05")
    shapes[("state_proj", "kernel")] = (32, 64)
    with pytest.raises(PibridgeError, match="mixes pi0 roles"):
        detect(shapes)


def test_detect_refuses_pi0_fast():
    shapes = {p: s for p, s in _shapes("tiny-pi0").items()
              if not (any(x.endswith("_1") for x in p) or p[0] in {"action_in_proj", "action_out_proj", "state_proj",
                                                                    "action_time_mlp_in", "action_time_mlp_out"})}
    with pytest.raises(PibridgeError, match="pi0-FAST"):
        detect(shapes)


def test_detect_refuses_lora_and_bad_shapes():
    shapes = _shapes("tiny-pi0")
    shapes[("PaliGemma", "llm", "layers", "attn", "q_einsum", "lora_a")] = (4, 8, 64, 2)
    with pytest.raises(PibridgeError, match="LoRA"):
        detect(shapes)
    shapes = _shapes("tiny-pi0")
    shapes[("PaliGemma", "llm", "layers", "mlp", "linear")] = (4, 100, 64)
    with pytest.raises(PibridgeError, match="inconsistent"):
        detect(shapes)


# --- accounting ---------------------------------------------------------------------------------------

def test_accounting_reports_both_directions():
    shapes = _shapes("tiny-pi05")
    del shapes[("PaliGemma", "llm", "layers", "mlp_1", "linear")]
    shapes[("PaliGemma", "llm", "extra_leaf")] = (3,)
    plan = plan_conversion(shapes)
    acc = plan.accounting
    assert acc.unconsumed_sources == ("PaliGemma/llm/extra_leaf",)
    assert acc.unfilled_destinations == tuple(
        f"model.paligemma_with_expert.gemma_expert.model.layers.{i}.mlp.down_proj.weight" for i in range(4))
    assert not acc.complete
    with pytest.raises(PibridgeError, match="unfilled destination"):
        acc.require_complete("tiny-pi05")


# --- transforms -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,shape", [("copy", (5,)), ("transpose", (3, 5)), ("conv_hwio_to_oihw", (2, 3, 4, 5)),
                                        ("drop_lead_axis", (1, 6, 5)), ("ndh_to_rows", (3, 5, 4)),
                                        ("dnh_to_rows", (5, 3, 4)), ("nh_flatten", (3, 4)), ("nhd_to_cols", (3, 4, 5))])
def test_transform_roundtrip_and_shape(name, shape):
    x = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
    t = T.get_transform(name)
    y = t.forward(x)
    assert y.shape == t.shape(shape)
    back = t.inverse(np.ascontiguousarray(y), shape)
    assert back.shape == shape and np.array_equal(back, x)


def test_transforms_compute_what_the_einsums_compute():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((7, 12))  # (tokens, D)
    w = rng.standard_normal((3, 12, 4))  # q_einsum (N, D, H): "BTD,NDH->BTNH"
    q = np.einsum("td,ndh->tnh", x, w).reshape(7, 12)  # (T, N, H) -> (T, N*H), head-major like torch .view
    assert np.allclose(x @ T.get_transform("ndh_to_rows").forward(w).T, q)
    enc = rng.standard_normal((7, 3, 4))  # attention output (T, N, H); attn_vec (N, H, D): "BTNH,NHD->BTD"
    wo = rng.standard_normal((3, 4, 12))
    o = T.get_transform("nhd_to_cols").forward(wo)
    assert np.allclose(enc.reshape(7, 12) @ o.T, np.einsum("tnh,nhd->td", enc, wo))
    wk = rng.standard_normal((12, 3, 4))  # SigLIP DenseGeneral (D, N, H)
    assert np.allclose(x @ T.get_transform("dnh_to_rows").forward(wk).T, np.einsum("td,dnh->tnh", x, wk).reshape(7, 12))


def test_conv_transform_matches_patch_embedding():
    rng = np.random.default_rng(3)
    P, C, D = 4, 3, 5
    k = rng.standard_normal((P, P, C, D))  # HWIO
    img = rng.standard_normal((2 * P, 2 * P, C))  # HWC, 2x2 patches
    patches = img.reshape(2, P, 2, P, C).transpose(0, 2, 1, 3, 4)  # (gh, gw, P, P, C)
    flax = np.einsum("abhwc,hwcd->abd", patches, k)  # VALID conv with stride P (siglip.py:216-223)
    w = T.get_transform("conv_hwio_to_oihw").forward(k)  # (D, C, P, P) as torch Conv2d
    torch_like = np.einsum("abhwc,dchw->abd", patches, w)
    assert np.allclose(flax, torch_like)


# --- data: tiny variants --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", ["tiny-pi05", "tiny-pi0"])
def test_roundtrip_bit_exact_float32(tiny_trees, name):
    tree = tiny_trees[name]
    plan, state = convert_tree(tree)
    assert plan.accounting.complete and set(state) == set(plan.keys)
    back, acc = inverse_convert(state, load_variant(name))
    assert acc.complete and acc.ignored_sources == ("model.paligemma_with_expert.gemma_expert.lm_head.weight",)
    assert set(back) == set(tree)
    for p, a in tree.items():
        assert back[p].dtype == np.float32 and np.array_equal(back[p].view(np.uint32), a.view(np.uint32)), p


def test_converted_values_by_role(tiny_trees):
    tree = tiny_trees["tiny-pi05"]
    _, s = convert_tree(tree)
    llm, ex = "model.paligemma_with_expert.paligemma.model.language_model.", "model.paligemma_with_expert.gemma_expert."
    emb = tree[("PaliGemma", "llm", "embedder", "input_embedding")]
    assert np.array_equal(s[llm + "embed_tokens.weight"], emb)
    assert np.array_equal(s["model.paligemma_with_expert.paligemma.lm_head.weight"], emb)
    assert not s[ex + "lm_head.weight"].any() and s[ex + "lm_head.weight"].shape == (257152, 64)
    kv = tree[("PaliGemma", "llm", "layers", "attn", "kv_einsum_1", "w")]  # (L, 2, K, D, H)
    assert np.array_equal(s[ex + "model.layers.2.self_attn.k_proj.weight"], kv[2, 0, 0].T)
    assert np.array_equal(s[ex + "model.layers.2.self_attn.v_proj.weight"], kv[2, 1, 0].T)
    g = tree[("PaliGemma", "llm", "layers", "mlp", "gating_einsum")]  # (L, 2, D, F)
    assert np.array_equal(s[llm + "layers.3.mlp.gate_proj.weight"], g[3, 0].T)
    assert np.array_equal(s[llm + "layers.3.mlp.up_proj.weight"], g[3, 1].T)
    ada = tree[("PaliGemma", "llm", "layers", "pre_ffw_norm_1", "Dense_0", "kernel")]  # (L, D, 3D)
    assert np.array_equal(s[ex + "model.layers.1.post_attention_layernorm.dense.weight"], ada[1].T)
    sc = tree[("PaliGemma", "llm", "layers", "pre_attention_norm", "scale")]
    assert np.array_equal(s[llm + "layers.0.input_layernorm.weight"], sc[0])  # raw: both sides use (1 + w)
    assert np.array_equal(s["model.time_mlp_in.weight"], tree[("time_mlp_in", "kernel")].T)


def test_bf16_target_rounds_like_torch(tiny_trees):
    tree = tiny_trees["tiny-pi0"]
    plan, s = convert_tree(tree, weights_dtype="bfloat16")
    q = s["model.paligemma_with_expert.paligemma.model.language_model.layers.0.self_attn.q_proj.weight"]
    assert q.dtype == ml_dtypes.bfloat16
    ref = T.get_transform("ndh_to_rows").forward(tree[("PaliGemma", "llm", "layers", "attn", "q_einsum", "w")][0])
    assert np.array_equal(q, ref.astype(ml_dtypes.bfloat16))
    assert s["model.paligemma_with_expert.gemma_expert.model.norm.weight"].dtype == np.float32
    torch = pytest.importorskip("torch")
    assert np.array_equal(q.view(np.uint16), torch.from_numpy(np.ascontiguousarray(ref)).to(torch.bfloat16)
                          .view(torch.int16).numpy().view(np.uint16))
    back, acc = inverse_convert(s, load_variant("tiny-pi0"))
    assert acc.complete


def test_inverse_reports_tie_mismatch_and_unknown_keys(tiny_trees):
    _, s = convert_tree(tiny_trees["tiny-pi05"])
    s = dict(s)
    head = "model.paligemma_with_expert.paligemma.lm_head.weight"
    s[head] = s[head].copy()
    s[head][0, 0] += 1
    s["model.extra"] = np.zeros(1, np.float32)
    del s["model.action_out_proj.bias"]
    _, acc = inverse_convert(s, load_variant("tiny-pi05"))
    assert acc.tie_mismatches and acc.unconsumed_sources == ("model.extra",)
    assert acc.unfilled_destinations == ("model.action_out_proj.bias",)


def test_iter_tensors_reads_each_leaf_once(tiny_trees):
    tree = tiny_trees["tiny-pi05"]
    plan = plan_conversion({p: a.shape for p, a in tree.items()})
    reads = []
    for _ in iter_tensors(plan, lambda p: reads.append(p) or tree[p]):
        pass
    assert sorted(reads) == sorted(tree)  # every leaf read exactly once
