"""pibridge's own torch pi0 / pi05 as a parity stack: model.py (LeRobot-structured modules on the installed
transformers, OUT's weights memory-mapped), forward.py (LeRobot's forward, recording every stage), capture.py
(`parity capture --stack torch`: pibridge.parity.lerobot_preprocess, the model with the runtime fixes, LeRobot's
unnormalization). Never imports jax; importing this package imports no torch."""
