"""transformers' own PI0 / PI05 models as a parity stack: model.py (load OUT through transformers' conversion
mapping, verified; hooks -> stages; the capture in the interpreter that has the release), capture.py (`parity
capture --stack transformers`: runs model.py here, or the same command line in .venvs/tf-<version>). Never jax."""
