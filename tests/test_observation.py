import numpy as np
import pytest

from pibridge.errors import PibridgeError
from pibridge.parity.observation import load_observation, save_observation, synthetic_observation


def test_synthetic_observation_is_deterministic_natural_and_roundtrips(tmp_path):
    obs = synthetic_observation(batch=2, horizon=10, state_dim=8, seed=3, masked={1: ["right_wrist_0_rgb"]})
    again = synthetic_observation(batch=2, horizon=10, state_dim=8, seed=3, masked={1: ["right_wrist_0_rgb"]})
    assert obs.fingerprint() == again.fingerprint()
    assert synthetic_observation(batch=2, horizon=10, state_dim=8, seed=4).fingerprint() != obs.fingerprint()
    base = obs.images["base_0_rgb"]
    assert base.shape == (2, 480, 640, 3) and base.dtype == np.uint8
    assert base.std() > 20 and len(np.unique(base[0, ::16, ::16].reshape(-1, 3), axis=0)) > 50  # not constant
    assert obs.image_mask.tolist() == [[True, True, True], [True, True, False]]
    assert not obs.images["right_wrist_0_rgb"][1].any()
    assert obs.noise.shape == (2, 10, 32)
    save_observation(tmp_path / "o.safetensors", obs)
    back = load_observation(tmp_path / "o.safetensors")
    assert back.fingerprint() == obs.fingerprint() and back.prompts == obs.prompts


def test_corrupted_observation(tmp_path):
    p = tmp_path / "o.safetensors"
    save_observation(p, synthetic_observation(batch=1, horizon=4, state_dim=2))
    p.write_bytes(b"garbage")
    with pytest.raises(PibridgeError, match="unreadable or corrupted"):
        load_observation(p)
