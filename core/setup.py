"""The core's build: everything is declared in pyproject.toml except one file that setuptools
cannot place from there -- ``mlx_zoo_blas.pth``, the start-up hook that serves MLX's Linux CPU
wheel the fast BLAS whatever the import order (src/_mlx_zoo_blas_hook.py says what it does).
A ``.pth`` file works only at the top of site-packages, outside every package, so this
``build_py`` copies it to the wheel's root, and lists it as a source so that the sdist carries
it. Editable installs (``pip install -e``) do not get it."""

import os

from setuptools import setup
from setuptools.command.build_py import build_py

PTH = "mlx_zoo_blas.pth"
SOURCE = os.path.join("src", PTH)


class build_py_with_pth(build_py):  # lower case, as setuptools' own commands
    """build_py, plus the start-up hook's ``.pth`` at the root of the wheel."""

    def run(self):
        super().run()
        self.copy_file(SOURCE, os.path.join(self.build_lib, PTH), preserve_mode=False)

    def get_outputs(self, include_bytecode=True):
        return [*super().get_outputs(include_bytecode), os.path.join(self.build_lib, PTH)]

    def get_source_files(self):
        return [*super().get_source_files(), SOURCE]


setup(cmdclass={"build_py": build_py_with_pth})
