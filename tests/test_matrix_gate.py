"""Gate subset of the version matrix (configs/transformers_support.json "gate": one 4.x, 5.3.0, 5.5.x, the
newest): the torch stack in each release's own venv against JAX-stack traces of tiny-pi05.
Non-gate matrix releases run the same tests under the slow marker (make test-all); `make matrix` runs
everything (both tiny variants, both LeRobot semantics, exact rows)."""

import json

import pytest

from _matrix_helpers import RELEASES, RELEASES_LE_53, releases, results, tfvenv

pytestmark = pytest.mark.torch


@pytest.mark.parametrize("version", releases(RELEASES))
def test_venv_imports_its_own_transformers_and_the_project_torch(version):
    tfvenv.ensure_venv(version)
    stamp = json.loads((tfvenv.venv_dir(version) / tfvenv.STAMP).read_text())
    assert stamp["transformers"] == version
    assert stamp["transformers_file"].startswith(str(tfvenv.venv_dir(version)))
    assert stamp["torch_file"].startswith(str(tfvenv.project_site_packages()))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("version", releases(RELEASES))
def test_fixes_on_matches_jax(version, dtype):
    r = results(version)[f"gate/{dtype}/on"]
    assert r["transformers"] == version
    assert r["pass"], (r["rule"], r["first_failing"], r["worst_stage"], r["worst_cosine"], r["actions_max_abs"])
    assert r["pass_strict"], r["first_failing_strict"]


@pytest.mark.parametrize("version", releases(RELEASES))
def test_bf16_fixes_off_diverges(version):
    """bf16 inv_freq (every release) and, on <= 5.3, the image / text scales: the row fails without fixes
    (strict verdict: the stage where the defect enters)."""
    r = results(version)["gate/bfloat16/off"]
    assert not r["pass_strict"]
    expected = "img/tokens" if version in RELEASES_LE_53 else "llm/kv00/k"
    assert r["first_failing_strict"] == expected, r["first_failing_strict"]
