import numpy as np
import pytest

from pibridge.errors import PibridgeError
from pibridge.parity.compare import Rule, compare, stage_metrics
from pibridge.parity.stages import Stage
from pibridge.parity.trace import Trace, read_trace, write_trace

RULES = [Rule("input/*", "*", 1e-6, 0.999999, "preprocessing"), Rule("llm/block*", "float32", 1e-4, 0.99999),
         Rule("actions", "*", 1e-4, 0.99999)]


def _trace(**stages) -> Trace:
    return Trace({k.replace("__", "/"): v if isinstance(v, Stage) else Stage(k.replace("__", "/"), v, None, 0.0)
                  for k, v in stages.items()}, {"precision": "float32"})


def test_cosine_conventions():
    z = np.zeros((2, 3), np.float32)
    one = np.ones((2, 3), np.float32)
    assert stage_metrics(Stage("s", z, None, 0.0), Stage("s", z, None, 0.0)).cosine == 1.0
    assert stage_metrics(Stage("s", z, None, 0.0), Stage("s", one, None, 0.0)).cosine == 0.0
    assert stage_metrics(Stage("s", one, None, 0.0), Stage("s", 2 * one, None, 0.0)).cosine == pytest.approx(1.0)


def test_mask_hides_garbage_rows_and_worst_index():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    b = a.copy()
    b[2] = np.nan  # padded row: garbage / NaN on one stack
    b[1, 3] += 0.5
    valid = np.array([[True], [True], [False]])
    m = stage_metrics(Stage("s", a, valid, 0.0), Stage("s", b, None, 0.0))
    assert m.max_abs == pytest.approx(0.5)
    assert m.worst_index == (1, 3)
    assert (m.worst_a, m.worst_b) == (7.0, 7.5)
    assert m.n_valid == 8
    unmasked = stage_metrics(Stage("s", a, None, 0.0), Stage("s", b, None, 0.0))
    assert isinstance(unmasked, str) and "non-finite" in unmasked


def test_first_diverging_stage_and_statuses():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 8)).astype(np.float32)
    a = _trace(input__state=x[:, 0], llm__block00=x, llm__block01=x, actions=x, extra=x)
    b = _trace(input__state=x[:, 0], llm__block00=x + 1e-6, llm__block01=x + 1e-2, actions=x + 1e-2)
    c = compare(a, b, RULES)
    status = {r.name: r.status for r in c.results}
    assert status == {"input/state": "pass", "llm/block00": "pass", "llm/block01": "fail", "actions": "fail"}
    assert c.first_diverging.name == "llm/block01"
    assert not c.passed and c.only_in_a == ["extra"] and c.only_in_b == []


def test_unknown_stage_is_reported_not_passed_silently():
    x = np.ones((2, 2), np.float32)
    c = compare(_trace(weird=x), _trace(weird=x), RULES)
    assert c.results[0].status == "no-rule"
    assert set(c.unused_rules) == {"input/*", "llm/block*", "actions"}


def test_shape_mismatch_fails():
    c = compare(_trace(actions=np.ones((2, 3), np.float32)), _trace(actions=np.ones((3, 2), np.float32)), RULES)
    assert c.results[0].status == "shape-mismatch" and not c.passed


def test_trace_roundtrip(tmp_path):
    x = np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 3, 4)
    valid = np.array([[[True], [False], [True]]] * 2)
    write_trace(tmp_path / "t.safetensors", [Stage("llm/block00", x, valid, 0.5), Stage("actions", x[0], None, 0.0)],
                {"stack": "jax", "precision": "bf16"})
    t = read_trace(tmp_path / "t.safetensors")
    assert t.order == ["llm/block00", "actions"]
    np.testing.assert_array_equal(t.stages["llm/block00"].value, x)
    np.testing.assert_array_equal(t.stages["llm/block00"].valid, valid)
    assert t.stages["llm/block00"].seconds == 0.5 and t.stages["actions"].valid is None
    assert t.meta["stack"] == "jax" and t.meta["precision"] == "bf16"


def test_corrupted_trace_is_a_clear_error(tmp_path):
    p = tmp_path / "t.safetensors"
    write_trace(p, [Stage("actions", np.ones((2, 2), np.float32), None, 0.0)], {})
    p.write_bytes(p.read_bytes()[:20])
    with pytest.raises(PibridgeError, match="unreadable or corrupted"):
        read_trace(p)
