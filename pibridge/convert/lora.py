"""OpenPI's LoRA leaves: where they live, their shapes, what a tree may hold, and the scaling they get.

Axis legend: L Gemma layers, N heads, K kv heads, D width, H head_dim, F mlp dim, r LoRA rank.
OpenPI (src/openpi/models/lora.py and gemma.py at commit 15a9616):
- attention einsums are `lora.Einsum` (gemma.py:177-243) with `lora_configs["attn"]`: leaves `lora_a`, `lora_b` next
  to `w`; with axes (-2, -1) lora_a replaces the last axis by r, lora_b the second last (lora.py:44-51). Pi0 trees
  use q_einsum + kv_einsum (num_kv_heads != num_heads), never qkv_einsum, and attn_vec_einsum.
- the MLP is `lora.FeedForward` with `lora_configs["ffn"]`: `gating_einsum_lora_a/_b` (2, D, r) / (2, r, F) and
  `linear_lora_a/_b` (F, r) / (r, D) (lora.py:107-118); applied WITHOUT scaling (lora.py:144-148).
- scaling (attention only) = alpha / r, or alpha / sqrt(r) with rsLoRA (lora.py:27-29). alpha and rsLoRA live in
  the training config, not in the checkpoint; OpenPI's variants: gemma_2b_lora r 16 alpha 16, gemma_300m_lora
  r 32 alpha 32 (gemma.py:88-107), so scaling 1.
- freeze filter (pi0_config.py:88-117): the `llm` leaves of the adapted experts, LoRA excluded, are frozen and
  stored bfloat16 by training (scripts/train.py:103-104); LoRA factors and the rest stay float32.
Everything here is metadata: the merge itself is pibridge.convert.lora_merge (the JAX stack never imports it).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

from pibridge.errors import PibridgeError

Path = tuple[str, ...]
Shape = tuple[int, ...]

EXPERTS = ("paligemma", "action_expert")  # expert 0 (no suffix), expert 1 ("_1" suffix, gemma.py:443-450)
KINDS = {"attn": ("q_einsum", "kv_einsum", "attn_vec_einsum"), "ffn": ("gating_einsum", "linear")}
ROLE_KIND = {role: kind for kind, roles in KINDS.items() for role in roles}
LLM_LAYERS = ("PaliGemma", "llm", "layers")
# OpenPI's LoRA variants by rank (gemma.py:88-107): rank -> (variant, alpha)
OPENPI_VARIANTS = {16: ("gemma_2b_lora", 16.0), 32: ("gemma_300m_lora", 32.0)}
DEFAULT_RANKS = {"paligemma": 16, "action_expert": 32}  # gemma_2b_lora, gemma_300m_lora


def _suffix(expert: int) -> str:
    return "" if expert == 0 else f"_{expert}"


def base_path(role: str, expert: int) -> Path:
    s = _suffix(expert)
    if ROLE_KIND[role] == "attn":
        return LLM_LAYERS + ("attn", f"{role}{s}", "w")
    return LLM_LAYERS + (f"mlp{s}", role)


def factor_paths(role: str, expert: int) -> tuple[Path, Path]:
    s = _suffix(expert)
    if ROLE_KIND[role] == "attn":
        return tuple(LLM_LAYERS + ("attn", f"{role}{s}", f"lora_{x}") for x in "ab")  # type: ignore[return-value]
    return tuple(LLM_LAYERS + (f"mlp{s}", f"{role}_lora_{x}") for x in "ab")  # type: ignore[return-value]


def factor_shapes(base: Shape, rank: int) -> tuple[Shape, Shape]:
    """(lora_a, lora_b) shapes for a base weight (..., X, Y): (..., X, r) and (..., r, Y) (lora.py:47-51)."""
    return base[:-1] + (rank,), base[:-2] + (rank, base[-1])


@dataclass(frozen=True)
class Adapter:
    """One adapted weight: its base leaf and its two factors (all stacked with the leading L axis)."""

    role: str
    expert: int
    base: Path
    a: Path
    b: Path
    rank: int

    @property
    def kind(self) -> str:
        return ROLE_KIND[self.role]


@dataclass(frozen=True)
class LoraTree:
    adapters: tuple[Adapter, ...]

    def ranks(self) -> dict[tuple[int, str], int]:
        """{(expert, kind): rank}."""
        return {(a.expert, a.kind): a.rank for a in self.adapters}

    @property
    def experts(self) -> tuple[str, ...]:
        return tuple(EXPERTS[e] for e in sorted({a.expert for a in self.adapters}))

    def factor_leaves(self) -> set[Path]:
        return {p for a in self.adapters for p in (a.a, a.b)}

    def by_base(self) -> dict[Path, Adapter]:
        return {a.base: a for a in self.adapters}


def lora_tree_shapes(base_shapes: Mapping[Path, Shape], ranks: Mapping[tuple[int, str], int]) -> dict[Path, Shape]:
    """The factor leaves OpenPI creates for {(expert, kind): rank} on a base tree's shapes."""
    out: dict[Path, Shape] = {}
    for (expert, kind), rank in ranks.items():
        for role in KINDS[kind]:
            pa, pb = factor_paths(role, expert)
            out[pa], out[pb] = factor_shapes(tuple(base_shapes[base_path(role, expert)]), rank)
    return out


def is_lora_path(path: Path) -> bool:
    return any("lora" in part for part in path)


def split_lora(shapes: Mapping[Path, Shape]) -> tuple[dict[Path, Shape], LoraTree | None]:
    """(base shapes, the LoRA adapters) of a tree; PibridgeError for a LoRA tree OpenPI's code would not make."""
    lora = {p: tuple(s) for p, s in shapes.items() if is_lora_path(p)}
    base = {p: tuple(s) for p, s in shapes.items() if not is_lora_path(p)}
    if not lora:
        return base, None
    known = {}
    for role in ROLE_KIND:
        for expert in (0, 1):
            pa, pb = factor_paths(role, expert)
            known[pa], known[pb] = (role, expert, "a"), (role, expert, "b")
    odd = sorted("/".join(p) for p in lora if p not in known)
    if odd:
        raise PibridgeError(f"{len(odd)} LoRA leaves on roles OpenPI never adapts, e.g. {odd[0]}",
                            "lora_a / lora_b only on the Gemma q_einsum, kv_einsum, attn_vec_einsum and the MLP "
                            "gating_einsum / linear of either expert (openpi lora.py, gemma.py:177-323)",
                            "this tree was not written by OpenPI's LoRA code; merge it with the tool that made it")
    adapters, problems = [], []
    for role in ROLE_KIND:
        for expert in (0, 1):
            pa, pb = factor_paths(role, expert)
            have = [p for p in (pa, pb) if p in lora]
            if not have:
                continue
            if len(have) == 1:
                problems.append(f"{'/'.join(have[0])} without its partner {'/'.join(pb if have[0] == pa else pa)}")
                continue
            bp = base_path(role, expert)
            if bp not in base:
                problems.append(f"{'/'.join(pa)} without its base weight {'/'.join(bp)}")
                continue
            rank = lora[pa][-1]
            want = factor_shapes(base[bp], rank)
            if (lora[pa], lora[pb]) != want:
                problems.append(f"{'/'.join(pa[:-1])} factors {lora[pa]} / {lora[pb]} do not fit base {base[bp]} "
                                f"(expected {want[0]} / {want[1]})")
                continue
            adapters.append(Adapter(role, expert, bp, pa, pb, rank))
    for expert in (0, 1):
        for kind, roles in KINDS.items():
            got = {a.role: a.rank for a in adapters if a.expert == expert and a.kind == kind}
            if got and len(got) != len(roles):
                problems.append(f"{EXPERTS[expert]} {kind} LoRA on {', '.join(sorted(got))} only "
                                f"(one lora_configs[{kind!r}] adapts {', '.join(roles)})")
            elif len(set(got.values())) > 1:
                problems.append(f"{EXPERTS[expert]} {kind} LoRA ranks differ: {got} (one LoRAConfig, one rank)")
    if problems:
        raise PibridgeError(f"LoRA leaves OpenPI's code would not produce: {'; '.join(problems[:3])}",
                            "lora_a and lora_b together, shapes (..., X, r) and (..., r, Y) of their base (..., X, Y), "
                            "one rank per expert and kind (openpi lora.py:44-51, :107-118)",
                            "the checkpoint is damaged or not an OpenPI LoRA fine-tune")
    return base, LoraTree(tuple(adapters))


# --- alpha / rsLoRA / scaling --------------------------------------------------------------------------

@dataclass(frozen=True)
class LoraSetting:
    rank: int
    alpha: float
    rslora: bool
    source: str  # where alpha / rslora came from

    @property
    def scaling(self) -> float:
        """lora.py:27-29 (LoRAConfig.scaling_value), in Python float (OpenPI multiplies by a Python float)."""
        return self.alpha / math.sqrt(self.rank) if self.rslora else self.alpha / self.rank

    def to_dict(self) -> dict:
        return {"rank": self.rank, "alpha": self.alpha, "rslora": self.rslora, "scaling": self.scaling,
                "source": self.source}


PerExpert = dict[int, "float | bool | int"]


def parse_per_expert(value: str | None, flag: str, kind: type) -> dict[int, object]:
    """'8' (both experts) or 'paligemma=8,action_expert=16' -> {expert index: value}; None -> {}."""
    if value is None:
        return {}

    def conv(text: str):
        t = text.strip().lower()
        try:
            if kind is bool:
                if t not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError(t)
                return t in ("true", "1", "yes")
            out = kind(t)
        except ValueError:
            raise PibridgeError(f"{flag} {value!r}", f"a {kind.__name__}, or EXPERT=VALUE pairs with EXPERT one of "
                                f"{', '.join(EXPERTS)}", f"e.g. {flag} paligemma=16,action_expert=32") from None
        if kind is not bool and out <= 0:
            raise PibridgeError(f"{flag} {value!r}", "a positive number", f"pass a positive {flag}")
        return out

    if "=" not in value:
        v = conv(value)
        return {0: v, 1: v}
    out: dict[int, object] = {}
    for item in value.split(","):
        name, _, v = item.partition("=")
        if name.strip() not in EXPERTS:
            raise PibridgeError(f"{flag} names {name.strip()!r}", f"an expert: {', '.join(EXPERTS)}",
                                f"e.g. {flag} paligemma=16,action_expert=32")
        out[EXPERTS.index(name.strip())] = conv(v)
    return out


def parse_rslora(value: str | None) -> dict[int, bool]:
    """--lora-rslora: which experts were trained with rsLoRA ("both", "paligemma", "action_expert"); None: none."""
    if value is None:
        return {}
    names = [v.strip() for v in value.split(",") if v.strip()]
    if names == ["both"]:
        return {0: True, 1: True}
    bad = [n for n in names if n not in EXPERTS]
    if bad or not names:
        raise PibridgeError(f"--lora-rslora {value!r}", f"both, or expert names: {', '.join(EXPERTS)}",
                            "e.g. --lora-rslora both or --lora-rslora action_expert")
    return {EXPERTS.index(n): True for n in names}


def resolve_settings(tree: LoraTree, alpha: Mapping[int, float] | None = None,
                     rslora: Mapping[int, bool] | None = None) -> dict[tuple[int, str], LoraSetting]:
    """{(expert, kind): setting}: alpha / rsLoRA from the per-expert flags, else OpenPI's variant for the rank found
    (rank 16 -> gemma_2b_lora, 32 -> gemma_300m_lora: alpha = rank, no rsLoRA); any other rank without --lora-alpha
    is refused (the scaling would be a guess)."""
    alpha, rslora = dict(alpha or {}), dict(rslora or {})
    out = {}
    for (expert, kind), rank in sorted(tree.ranks().items()):
        rs = bool(rslora.get(expert, False))
        if expert in alpha:
            a, src = float(alpha[expert]), "--lora-alpha"
        elif rank in OPENPI_VARIANTS and not rs:
            name, a = OPENPI_VARIANTS[rank]
            src = f"OpenPI variant {name} (rank {rank})"
        else:
            raise PibridgeError(
                f"{EXPERTS[expert]} LoRA rank {rank}" + (" with rsLoRA" if rs else "") + ", alpha unknown",
                "a rank of an OpenPI LoRA variant (16: gemma_2b_lora, 32: gemma_300m_lora, alpha = rank), or "
                "--lora-alpha", f"pass --lora-alpha {EXPERTS[expert]}=ALPHA (and --lora-rslora if the training config "
                "set rslora=True): the alpha of the LoRAConfig it was trained with")
        out[(expert, kind)] = LoraSetting(rank, a, rs, src + (", --lora-rslora" if rs else ""))
    return out


def attn_scalings(settings: Mapping[tuple[int, str], LoraSetting]) -> tuple[float | None, float | None]:
    """(expert 0, expert 1) attention scaling; None where the expert's attention has no LoRA."""
    return tuple(settings[(e, "attn")].scaling if (e, "attn") in settings else None for e in (0, 1))  # type: ignore


def frozen_bf16(path: Path, experts: tuple[int, ...]) -> bool:
    """Whether training stores `path` bfloat16: OpenPI's freeze filter for LoRA on `experts` (pi0_config.py:88-117,
    regexes `.*llm.*`, `.*llm.*_1.*`, `.*lora.*` on the '/'-joined path)."""
    s = "/".join(path)
    if "llm" not in s or "lora" in s:
        return False
    expert_leaf = "_1" in s[s.index("llm"):]
    return (0 in experts and (1 in experts or not expert_leaf)) or (0 not in experts and 1 in experts and expert_leaf)


def merge_rule(adapter: Adapter, settings: Mapping[tuple[int, str], LoraSetting]) -> str:
    """The audit's text for one merge (pibridge.convert.lora_merge does it)."""
    f = "/".join(adapter.a[-2:]).replace("lora_a", "lora_{a,b}") if adapter.kind == "attn" else \
        f"{adapter.a[-2]}/{adapter.role}_lora_{{a,b}}"
    s = settings[(adapter.expert, "attn")].scaling if adapter.kind == "attn" else 1.0
    prod = "A @ sum_N(B)" if adapter.role == "attn_vec_einsum" else "A @ B"
    how = f"scaling {s:g}" if adapter.kind == "attn" else "no scaling (lora.FeedForward)"
    return f"+ {s:g} * {prod} [{f}, rank {adapter.rank}, {how}]"
