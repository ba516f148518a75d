"""Build script: the package plus the Cython CPU kernels in kernels/cpu/.

Every ``kernels/cpu/<name>.pyx`` becomes the extension ``tinygrad_meta._cpu_<name>``.
"""
import glob
import os

from setuptools import find_packages, setup
from setuptools.command.build_py import build_py

HERE = os.path.dirname(os.path.abspath(__file__))


def _compiler_accepts(flags, source="int main(void) { return 0; }\n"):
    """Whether the C compiler that builds extensions compiles and links ``source``
    with ``flags`` (a test build in a temporary directory)."""
    import shlex
    import subprocess
    import sysconfig
    import tempfile

    cc = shlex.split(os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc")
    with tempfile.TemporaryDirectory() as tmp:
        src = os.path.join(tmp, "probe.c")
        with open(src, "w") as f:
            f.write(source)
        cmd = cc + list(flags) + [src, "-o", os.path.join(tmp, "probe")]
        try:
            result = subprocess.run(cmd, capture_output=True, timeout=60)
        except (OSError, subprocess.SubprocessError):
            return False
        return result.returncode == 0


_OPENMP_PROBE = "#include <omp.h>\nint main(void) { return omp_get_max_threads() > 0 ? 0 : 1; }\n"


def kernel_flags():
    """Compile and link flags for the kernels, each one test-compiled first.

    -O3 always; -march=native unless TGM_PORTABLE=1; -mprefer-vector-width=512 when
    the compiler takes it (so gcc's vectoriser uses 512-bit registers where the CPU
    has them); -fopenmp when OpenMP compiles and links, else a serial build.
    """
    compile_args = ["-O3"]
    if os.environ.get("TGM_PORTABLE", "0") not in ("", "0"):
        print("tinygrad_meta: TGM_PORTABLE=1, building without -march=native")
    elif _compiler_accepts(["-march=native"]):
        compile_args.append("-march=native")
    if _compiler_accepts(compile_args + ["-mprefer-vector-width=512"]):
        compile_args.append("-mprefer-vector-width=512")
    link_args = []
    if _compiler_accepts(["-fopenmp"], _OPENMP_PROBE):
        compile_args.append("-fopenmp")
        link_args.append("-fopenmp")
    else:
        print("tinygrad_meta: OpenMP not available; building the CPU kernels single-threaded")
    return compile_args, link_args


def cython_extensions():
    sources = sorted(glob.glob(os.path.join("kernels", "cpu", "*.pyx")))
    if not sources:
        return []
    import numpy
    from Cython.Build import cythonize
    from setuptools import Extension

    compile_args, link_args = kernel_flags()
    flags_string = " ".join(compile_args)
    print(f"tinygrad_meta: CPU kernel flags: {flags_string}")
    extensions = []
    for source in sources:
        name = os.path.splitext(os.path.basename(source))[0]
        extensions.append(Extension(
            f"tinygrad_meta._cpu_{name}",
            [source],
            include_dirs=[numpy.get_include()],
            extra_compile_args=compile_args,
            extra_link_args=link_args,
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_1_7_API_VERSION"),
                           # recorded in the module so kernel_info() can report it
                           ("TGM_CFLAGS", '"' + flags_string + '"')],
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
        # Pillow in "test" too, so CI exercises the Omniglot loader
        "test": ["pytest>=7", "hypothesis>=6.50", "Pillow>=9.1"],
        "gpu": ["cupy>=13"],
        "plot": ["matplotlib>=3.5"],
        "vision": ["Pillow>=9.1"],        # decodes the Omniglot PNGs (tasks/omniglot.py)
    },
    ext_modules=cython_extensions(),
    zip_safe=False,
)
