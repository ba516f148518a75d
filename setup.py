"""Build script: the package plus the Cython CPU kernels in kernels/cpu/.

Every ``kernels/cpu/<name>.pyx`` becomes the extension ``tinygrad_meta._cpu_<name>``.
"""
import glob
import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


def cython_extensions():
    sources = sorted(glob.glob(os.path.join("kernels", "cpu", "*.pyx")))
    if not sources:
        return []
    import numpy
    from Cython.Build import cythonize
    from setuptools import Extension

    extensions = []
    for source in sources:
        name = os.path.splitext(os.path.basename(source))[0]
        extensions.append(Extension(
            f"tinygrad_meta._cpu_{name}",
            [source],
            include_dirs=[numpy.get_include()],
            extra_compile_args=["-O3"],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION")],
        ))
    return cythonize(extensions, language_level=3, quiet=True)


class BuildPyWithCudaSources(build_py):
    """Also copy kernels/cuda/*.cu into the built package (tinygrad_meta/cuda_kernels/):
    an installed, non-editable package must find the CUDA sources that its cuda backend
    compiles at run time (an editable install reads them from <repo>/kernels/cuda)."""

    def run(self):
        super().run()
        target = os.path.join(self.build_lib, "tinygrad_meta", "cuda_kernels")
        self.mkpath(target)
        for source in sorted(glob.glob(os.path.join(HERE, "kernels", "cuda", "*.cu"))):
            self.copy_file(source, target)


setup(
    name="tinygrad-meta",
    version="0.1.0",
    description="A small, exact reverse-mode autograd engine with gradients of any order, "
                "and gradient-based meta-learning on top of it.",
    long_description=open(os.path.join(HERE, "README.md"), encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["tinygrad_meta", "tinygrad_meta.*"]),
    package_data={"tinygrad_meta": ["cuda_kernels/*.cu"]},
    cmdclass={"build_py": BuildPyWithCudaSources},
    install_requires=["numpy>=1.23", "tqdm>=4.60"],
    extras_require={
        "test": ["pytest>=7", "hypothesis>=6.50"],
        "gpu": ["cupy>=12"],
        "plot": ["matplotlib>=3.5"],
    },
    ext_modules=cython_extensions(),
    zip_safe=False,
)
