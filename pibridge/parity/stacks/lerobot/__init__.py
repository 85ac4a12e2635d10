"""The real LeRobot as a parity stack: capture.py (the run and `parity capture --stack lerobot`), loader.py
(from_pretrained, verified; OUT's processors), batches.py (what LeRobot is fed), recorder.py (hooks -> stages),
tiny.py (LeRobot config values for pibridge's tiny variants). Runs in a LeRobot environment."""
