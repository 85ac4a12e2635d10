"""Ships lerobot_policy_pibridge_startup.pth at the top of site-packages (the interpreter-start hook, see
lerobot_policy_pibridge/_startup.py): a .pth outside any package needs a build step; metadata stays in
pyproject.toml. The same text `python -m lerobot_policy_pibridge --install-hook` writes."""

from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "lerobot_policy_pibridge_startup.pth"


class BuildPyWithHook(build_py):
    def run(self):
        super().run()
        Path(self.build_lib, PTH).write_text("import lerobot_policy_pibridge._startup\n")

    def get_outputs(self, include_bytecode=True):  # listed, so editable and regular wheels both carry it
        return super().get_outputs(include_bytecode) + [str(Path(self.build_lib, PTH))]


setup(cmdclass={"build_py": BuildPyWithHook})
