"""Issue 8, bad inputs: every case of tests/reliability/cases.py through the real CLI (a subprocess each).

Per case: the exit code (2 bad input, 1 parity tolerance failure), one message naming what was found, what was
expected and what to do (a case-specific substring must occur, so a wrong message fails), no traceback unless
--debug, and nothing written or damaged (inputs byte-identical, no OUT, no atomic-write temporaries). The cases
run four at a time once per session (module fixture); each test asserts its case's outcome.
docs/reliability.md is this table's rendering (tools/reliability_table.py).
"""

from __future__ import annotations

import pytest

from reliability import build as B
from reliability.cases import CASES
from reliability.runner import run_all


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    return B.build_shared(tmp_path_factory.mktemp("shared"))


@pytest.fixture(scope="module")
def outcomes(request, shared, tmp_path_factory):
    """Runs only the cases this session selected (a deselected slow case is not run)."""
    selected = {item.callspec.params["case"].id for item in request.session.items
                if item.originalname == "test_case" and hasattr(item, "callspec")}
    before = B.tree_digest(shared.ck)
    results = run_all(tuple(c for c in CASES if c.id in selected), shared, tmp_path_factory.mktemp("cases"))
    assert B.tree_digest(shared.ck) == before, "a case changed the shared checkpoint"
    return results


def test_table_is_large_and_ids_unique():
    ids = [c.id for c in CASES]
    assert len(ids) >= 36 and len(set(ids)) == len(ids)


def _marks(case):
    marks = [pytest.mark.xfail(reason=case.xfail, strict=True)] if case.xfail else []
    return marks + ([pytest.mark.slow] if case.slow else [])


@pytest.mark.parametrize("case", [pytest.param(c, id=c.id, marks=_marks(c)) for c in CASES])
def test_case(outcomes, case):
    o = outcomes[case.id]
    assert not o.problems, f"{o.command}\n{o.problems}\n--- output ---\n{o.output[-3000:]}"


def test_runner_flags_wrong_exit_wrong_message_and_written_output(shared, tmp_path):
    """The checks can fail: a good conversion run as if it were a bad-input case breaks all three."""
    from reliability.cases import CONVERT, Case, ck
    from reliability.runner import run_case

    o = run_case(Case("good-input", "checkpoint", "a valid checkpoint", ck(), CONVERT, 2, ("no such message",)),
                 shared, tmp_path)
    assert o.exit_code == 0 and not o.untouched
    assert {"exit code 0, expected 2", "message lacks 'no such message'", "nothing written: out created"} \
        <= set(o.problems)
