"""Fix siglip-flat-keys (layout): from transformers 5.6 SigLIP keys lose `vision_model.`; a file with the
<= 5.5 layout does not load strictly without the key adaptation, and does with it. On <= 5.5 releases the
same file loads as is (no defect there)."""

import pytest

from _matrix_helpers import RELEASES, RELEASES_GE_56, releases, results

pytestmark = pytest.mark.torch


@pytest.mark.parametrize("version", releases(RELEASES_GE_56))
def test_flat_siglip_keys_defect_and_fix(version):
    layout = results(version)["layout"]["layout"]
    assert layout["False"] is not None and "missing" in layout["False"] and "vision_tower.embeddings" in layout["False"]
    assert layout["True"] is None


@pytest.mark.parametrize("version", releases([v for v in RELEASES if v not in RELEASES_GE_56]))
def test_nested_siglip_keys_load_as_is(version):
    assert results(version)["layout"]["layout"] == {"False": None, "True": None}
