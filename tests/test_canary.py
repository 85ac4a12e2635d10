"""The canary's reading of pip (tools/canary.py) and tfvenv's plan for a release pip cannot install with its
dependencies (tools/tfvenv.py), on pip output recorded here (tests/data/canary/, pip 26.3, Python 3.11; the
machine's 'WARNING: Location ... is ignored' lines left out). No network."""

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import canary  # noqa: E402
import tfvenv  # noqa: E402

DATA = ROOT / "tests" / "data" / "canary"


def test_transformers_5_25_is_named_not_installable_with_pips_reason():
    err = (DATA / "pip_transformers_5.25.0.stderr").read_text()
    assert canary.unresolvable_reason(err) == \
        "transformers requires kernels<0.20,>=0.19.1; the registry's newest kernels is 0.17.2"


def test_a_top_level_requirement_and_a_conflict_keep_pips_words():
    err = "ERROR: Could not find a version that satisfies the requirement jax==0.12.0.1 (from versions: 0.4.1, 0.10.2)"
    assert canary.unresolvable_reason(err) == \
        "jax==0.12.0.1 is not served for this Python / platform; the registry's newest jax is 0.10.2"
    conflict = ("ERROR: Cannot install a==1 and b==2 because these package versions have conflicting dependencies.\n\n"
                "The conflict is caused by:\n    a 1 depends on c<2\n    b 2 depends on c>=2\n\n"
                "To fix this you could try to:\n")
    assert canary.unresolvable_reason(conflict) == "conflict: a 1 depends on c<2; b 2 depends on c>=2"


def test_releases_for_a_newer_python_are_found_and_grouped():
    err = (DATA / "pip_jax_newer_py311.stderr").read_text()
    others = canary.other_python_releases(err, "0.10.2")
    assert [v for v, _ in others] == ["0.11.0", "0.11.1", "0.11.2", "0.12.0", "0.12.0.1"]
    assert {why for _, why in others} == {"Requires-Python >=3.12"}
    s = canary.summarize("jax", "0.10.2", others, None, None)
    assert s["newest_released"] == "0.12.0.1" and s["newest_for_this_python"] == "0.10.2" and s["installable"]
    assert s["not_installable"] == [{"version": "0.11.0 ... 0.12.0.1 (5 releases)",
                                     "reason": "Requires-Python >=3.12 (this Python is older)"}]
    assert canary.other_python_releases(err, "0.12.0.1") == []  # nothing newer than the newest


def test_torch_capped_by_the_machine_constraint_is_reported_with_the_line_and_the_cuda_build(tmp_path):
    cons = tmp_path / "constraints.txt"
    cons.write_text("# These releases lie on this machine's disk.\ntorch<=2.14.1\ntorchvision<=0.29.1\n")
    lines = canary.constraint_lines([str(cons)], "torch")
    assert lines == [f"{cons}: torch<=2.14.1"]
    assert canary.constraint_lines([str(cons)], "jax") == []
    report = json.loads((DATA / "torch_2.15.0_nodeps_report.json").read_text())
    cuda = canary.cuda_requirements(report["requires_dist"])
    assert report["version"] == "2.15.0" and len(cuda) == 7 and cuda[0].startswith("cuda-toolkit[")
    assert canary.cuda_requirements(["filelock", "sympy>=1.13.3", "optree>=0.13.0; extra == \"optree\""]) == []
    capped = {"version": "2.15.0", "reason": "this machine's pip constraint " + lines[0]}
    s = canary.summarize("torch", "2.14.1", [], capped, None, report["requires_dist"])
    assert s["newest_released"] == "2.15.0"
    assert s["not_installable"] == [capped] and "CUDA build (7 CUDA requirements" in s["cuda_build"]


def test_an_unresolvable_newest_is_not_installable_and_says_why():
    why = canary.unresolvable_reason((DATA / "pip_transformers_5.25.0.stderr").read_text())
    s = canary.summarize("transformers", "5.25.0", [], None, why)
    assert not s["installable"] and s["not_installable"] == [{"version": "5.25.0", "reason": why}]


def test_the_5_25_row_installs_no_deps_with_its_runtime_requirements():
    spec = tfvenv.install_spec("5.25.0")
    plan = tfvenv.install_plan("5.25.0", spec)
    assert plan[0] == ["--no-deps", "transformers==5.25.0"]
    names = {tfvenv._requirement_name(r) for r in plan[1]}
    assert {"huggingface-hub", "tokenizers", "safetensors"} <= names and "kernels" not in names
    assert spec["missing"] == ["kernels>=0.19.1,<0.20"] and "kernels" in spec["why"]
    assert tfvenv.install_plan("5.24.0", tfvenv.install_spec("5.24.0")) == [["transformers==5.24.0"]]
    with pytest.raises(ValueError, match="'why'"):
        tfvenv.install_plan("9.0.0", {"no_deps": True, "extra": [], "missing": []})


def test_pip_check_must_report_exactly_the_declared_missing_requirement():
    # pip 26.3 `pip check` in a fresh tf-5.25.0 venv (before the project .pth), and pip's other phrasing
    assert tfvenv.unmet_requirements("transformers 5.25.0 requires kernels, which is not installed.\n") == ["kernels"]
    assert tfvenv.unmet_requirements("transformers 5.25.0 has requirement kernels<0.20,>=0.19.1, but you have "
                                     "kernels 0.17.2.\n") == ["kernels"]
    assert tfvenv.unmet_requirements("No broken requirements found.\n") == []
    assert tfvenv.unmet_requirements("tokenizers 0.23.3 requires huggingface-hub, which is not installed.\n") == []


def test_same_host_rows_name_the_first_stage_a_release_moves(tmp_path):
    import numpy as np

    from pibridge.parity.stages import StageRecorder
    from pibridge.parity.trace import write_trace

    x = np.linspace(-1, 1, 24, dtype=np.float32).reshape(2, 12)
    for d, jax_version, bump in (("pinned", "0.10.2", 0.0), ("newest", "0.12.0.1", 1e-3)):
        (tmp_path / d).mkdir()
        for precision, b in (("float32", bump), ("bf16", 0.0)):
            rec = StageRecorder()
            rec.record("input/state", x)
            rec.record("img/embed", x + b)
            rec.record("actions", x + 2 * b)
            write_trace(tmp_path / d / f"tiny-pi05-{precision}.safetensors", rec,
                        {"stack": "jax", "precision": precision, "jax": jax_version})
    rows = {r["precision"]: r for r in canary.same_host(tmp_path / "pinned", tmp_path / "newest")}
    moved, same = rows["float32"], rows["bf16"]
    assert moved["variant"] == "tiny-pi05" and moved["jax"] == ["0.10.2", "0.12.0.1"]
    assert (moved["bit_equal"], moved["stages"], moved["first_differing"]) == (1, 3, "img/embed")
    assert moved["largest"][0] == "actions" and abs(moved["actions_max_abs"] - 2e-3) < 1e-6
    assert (same["bit_equal"], same["first_differing"], same["actions_max_abs"]) == (3, None, 0.0)


def test_a_moved_jax_is_judged_by_openpis_own_model_on_that_jax():
    """The 3.12 section says whether OpenPI's Pi0 moved with the stack (bench/results/canary_openpi_jax-0.12.0.1.json,
    tools/openpi_vs_goldens.py in an OpenPI venv on jax 0.12.0.1), and says 'untested' for a jax nobody checked."""
    doc = json.loads((ROOT / "bench" / "results" / "canary_openpi_jax-0.12.0.1.json").read_text())
    stages = [st for c in doc["cases"] for st in c["stages"].values()]
    from pibridge.parity import goldens as g

    # every golden case, the LoRA one included (a new golden spec needs this evidence refreshed)
    assert {c["case"] for c in doc["cases"]} == {g.case_name(s, p) for s in g.ALL_SPECS for p in g.PRECISIONS}
    assert doc["versions"]["jax"] == "0.12.0.1" and all("actions" in c["stages"] for c in doc["cases"])
    assert all(st["openpi_vs_stack"]["bit_equal"] for st in stages)
    assert any(st["openpi_vs_golden"]["abs"] > 0 for st in stages)  # it did move, with the stack
    text = " ".join(canary.openpi_on_this_jax("0.12.0.1", moved=True))
    assert f"bit-equal to the JAX stack at all {len(stages)} compared stages" in text and "intended alarm" in text
    assert "untested" in " ".join(canary.openpi_on_this_jax("9.9.9", moved=True))
    assert canary.openpi_on_this_jax("0.12.0.1", moved=False) == []  # nothing moved: nothing to explain
    assert "Control, jax 0.10.2" in " ".join(canary.openpi_on_this_jax("0.12.0.1", moved=True, pinned="0.10.2"))
