"""The stage vocabulary and StageRecorder (numpy only)."""

from __future__ import annotations

import numpy as np
import pytest

from pibridge.errors import PibridgeError
from pibridge.parity import stages as st
from pibridge.parity.stages import StageRecorder


def test_builders_zero_pad_and_belong_to_vocabulary():
    assert st.img_block(3) == "img/block03"
    assert st.llm_kv(17, "v") == "llm/kv17/v"
    assert st.expert_block(9, 0) == "expert/step09/block00"
    assert st.velocity(0) == "velocity/step00"
    for name in (st.img_block(0), st.llm_block(12), st.llm_kv(1, "k"), st.expert_block(3, 4), st.velocity(9),
                 *st.INPUT_STAGES, st.ACTIONS, st.ACTIONS_UNNORMALIZED, st.SUFFIX_TIME):
        assert st.is_stage_name(name), name


@pytest.mark.parametrize("name", ["img/block3", "llm/kv01/q", "expert/step1/block01", "actions/raw", "foo", ""])
def test_unknown_names_are_rejected(name):
    assert not st.is_stage_name(name)
    with pytest.raises(PibridgeError, match="unknown stage name"):
        StageRecorder().record(name, np.zeros(2))


def test_bad_indices_raise():
    with pytest.raises(PibridgeError):
        st.img_block(100)
    with pytest.raises(PibridgeError):
        st.llm_kv(0, "q")


def test_stage_order_layout():
    names = st.stage_order(vit_depth=1, llm_depth=2, num_steps=2)
    assert names[:5] == list(st.INPUT_STAGES)
    assert names[5:11] == ["img/embed", "img/block00", "img/out", "img/tokens", "prefix/embeds", "prefix/mask"]
    assert names[11:17] == ["llm/kv00/k", "llm/kv00/v", "llm/block00", "llm/kv01/k", "llm/kv01/v", "llm/block01"]
    assert names[17] == "suffix/time"
    assert names[18:21] == ["expert/step00/block00", "expert/step00/block01", "velocity/step00"]
    assert names[-1] == "actions" and len(names) == len(set(names)) == 25
    assert st.stage_order(1, 2, 2, unnormalized=True)[-2:] == ["actions/unnormalized", "actions/robot"]


def test_recorder_keeps_order_values_masks_and_times():
    rec = StageRecorder()
    src = np.arange(6, dtype=np.float64).reshape(2, 3)
    rec.record("img/embed", src, valid=np.array([True, False])[:, None], seconds=0.25)
    rec.record("actions", np.ones((1, 2, 3), np.int32))
    src[0, 0] = 99.0  # the recorder holds a copy
    assert rec.names == ["img/embed", "actions"] and len(rec) == 2 and "actions" in rec
    stage = rec["img/embed"]
    assert stage.value.dtype == np.float32 and stage.value[0, 0] == 0.0
    assert stage.seconds == 0.25
    np.testing.assert_array_equal(stage.valid_full(), [[True] * 3, [False] * 3])
    assert rec["actions"].valid is None and rec["actions"].valid_full().all()
    assert set(rec.masks()) == {"img/embed"}
    assert rec.timings() == {"img/embed": 0.25, "actions": 0.0}
    assert [s.name for s in rec] == rec.names
    assert rec.arrays()["actions"].dtype == np.float32


def test_recorder_rejects_duplicates_and_unbroadcastable_masks():
    rec = StageRecorder()
    rec.record("actions", np.zeros((2, 3)))
    with pytest.raises(PibridgeError, match="recorded twice"):
        rec.record("actions", np.zeros((2, 3)))
    with pytest.raises(PibridgeError, match="broadcastable"):
        rec.record("img/out", np.zeros((2, 3)), valid=np.ones((3, 1), bool))
    with pytest.raises(PibridgeError, match="broadcastable"):  # a mask may not enlarge the value
        rec.record("img/tokens", np.zeros((3,)), valid=np.ones((2, 3), bool))


def test_stages_module_is_numpy_only():
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(st))
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {n.module.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module}
    assert imported <= {"__future__", "re", "collections", "dataclasses", "numpy", "pibridge"}
