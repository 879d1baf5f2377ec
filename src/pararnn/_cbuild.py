"""Small C sources built at first use with the system compiler and called through ``ctypes``:
the CPU training path's fused loops (:mod:`pararnn.cells.cpu_loop`,
:mod:`pararnn.models.cpu_chunked`).

Why: on the CPU, a chain of small PyTorch ops pays ~2-4 µs of dispatch per op and one
pass over memory per op; a C loop pays neither. ``torch.compile`` (inductor's C++ backend)
was measured as the alternative and lost at these shapes (BENCHMARKS.md, "CPU training
path, round 4"). Each source is compiled once per process and dtype used (``real`` is
``float``, or ``double`` under ``-DREAL_DOUBLE``) into a temporary directory, ~0.2-0.3 s
each. No compiler, or a failed build, means one warning and the PyTorch ops instead;
``PARARNN_CPU_KERNELS=0`` switches the C code off.

Loops over independent rows run on torch's OpenMP threads where torch uses GNU OpenMP
(Linux wheels): built with ``-fopenmp``, the library shares the ``libgomp`` torch loaded.
Elsewhere they run on the calling thread. (Python threads instead, with ``ctypes``
releasing the GIL, were measured at 2 torch threads and gained nothing: the other core is
still busy with the spin-wait of torch's OpenMP workers after each op.)
"""

from __future__ import annotations

import ctypes
import os
import shutil
import subprocess
import tempfile
import threading
import warnings

import torch

# -ffast-math lets the compiler call the C library's vector exp/tanh (glibc's libmvec
# declares them only under fast math). Fast math assumes no Inf or NaN, and the vector
# exp is not exact outside its range: float32 sigmoid(-89) was NaN, and sigmoid(5e4) not
# exactly 1 (SiLU's gradient 0.5% off), so the prelude's sigmoid clamps exp's argument to
# where it is exact. No comparison in the sources depends on Inf or NaN inputs, which flow
# through the arithmetic as the hardware computes it.
_FLAGS = ["-O3", "-ffast-math", "-fopenmp-simd", "-shared", "-fPIC"]
# tried in order: not every compiler or CPU knows these (512-bit vectors: 1.5x faster than
# gcc's default 256-bit ones for the step loops on this project's AVX-512 CPU)
_TUNING = (["-march=native", "-mprefer-vector-width=512"], ["-march=native"], [])
_DTYPES = {torch.float32: "float", torch.float64: "double"}

_lock = threading.Lock()


def enabled() -> bool:
    return os.environ.get("PARARNN_CPU_KERNELS", "1") != "0"


class CLibrary:
    """The C ``source`` (named ``name`` in messages), built for a dtype at the first
    :meth:`get` of that dtype; ``what`` says what runs instead when it cannot be built."""

    def __init__(self, name: str, source: str, what: str) -> None:
        self.name, self.source, self.what = name, source, what
        self._built: dict = {}
        self._failed = False

    def get(self, tensor: torch.Tensor) -> ctypes.CDLL | None:
        """The library for ``tensor``'s dtype if it is a float32/float64 CPU tensor, the C
        code is switched on and the source builds, else None."""
        if tensor.device.type != "cpu" or tensor.dtype not in _DTYPES or not enabled():
            return None
        library = self._built.get(tensor.dtype)
        if library is None and not self._failed:
            with _lock:
                if tensor.dtype not in self._built and not self._failed:
                    self._built[tensor.dtype] = self._build(_DTYPES[tensor.dtype])
                library = self._built.get(tensor.dtype)
        return library

    def _build(self, real: str) -> ctypes.CDLL | None:
        compiler = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
        try:
            if compiler is None:
                raise RuntimeError("no C compiler (cc) on PATH")
            with tempfile.TemporaryDirectory(prefix=f"pararnn_{self.name}_") as directory:
                source = os.path.join(directory, f"{self.name}.c")
                with open(source, "w") as f:
                    f.write(self.source)
                # a loaded library stays mapped after its file is deleted
                return self._compile(compiler, source, real)
        except (OSError, RuntimeError, subprocess.SubprocessError) as error:
            self._failed = True  # warn once, and do not try again
            warnings.warn(f"pararnn: could not build the C code for {self.name} ({error}); "
                          f"{self.what}", RuntimeWarning, stacklevel=4)
            return None

    @staticmethod
    def _compile(compiler: str, source: str, real: str) -> ctypes.CDLL:
        target = source[:-2] + f"_{real}.so"
        defines = ["-DREAL_DOUBLE"] if real == "double" else []
        errors = ""
        openmp = [["-fopenmp"]] if _torch_libgomp() else []
        for extra in [[*omp, *tuning] for omp in openmp for tuning in _TUNING] + list(_TUNING):
            command = [compiler, *_FLAGS, *extra, *defines, source, "-o", target, "-lm"]
            done = subprocess.run(command, capture_output=True, text=True)
            if done.returncode != 0:
                errors = done.stderr
                continue
            try:  # e.g. torch's libgomp older than the symbols the compiler's OpenMP needs
                return ctypes.CDLL(target)
            except OSError as error:
                errors = str(error)
        raise RuntimeError(errors.strip()[-2000:])


def _torch_libgomp() -> bool:
    """Whether this process runs GNU OpenMP (torch's own libgomp.so.1 on Linux wheels): a
    library built with -fopenmp then shares it, so its parallel loops run on the same
    threads as torch's ops (a second OpenMP runtime would fight them for the cores)."""
    try:
        with open("/proc/self/maps") as maps:
            return any("libgomp" in line for line in maps)
    except OSError:
        return False


# The header every source starts with: ``real``, its exp/tanh, restrict shorthands, the
# index type, the OpenMP thread number.
PRELUDE = r"""
#include <math.h>
#include <stdint.h>
#ifdef REAL_DOUBLE
typedef double real;
#define EXP exp
#define TANH tanh
#define EXP_ARG_MAX 700.0  /* exp(709.8) overflows */
#else
typedef float real;
#define EXP expf
#define TANH tanhf
#define EXP_ARG_MAX 80.0f  /* expf(88.7) overflows */
#endif
#define R real *restrict
#define C const real *restrict
typedef int64_t idx;  /* sizes, strides and indices (ctypes passes int64) */

#ifdef _OPENMP
#include <omp.h>
#define THREAD omp_get_thread_num()
#else
#define THREAD 0
#endif

/* exp's argument kept within +-EXP_ARG_MAX, where the vector exp is exact: beyond, the
   sigmoid is within 1e-30 (float) or 1e-304 (double) of 0 or 1 and taken as its value at
   the bound */
static inline real sigmoid(real x) {
    real arg = x < -EXP_ARG_MAX ? EXP_ARG_MAX : (x > EXP_ARG_MAX ? -EXP_ARG_MAX : -x);
    return 1 / (1 + EXP(arg));
}
"""


def call(function, *args) -> None:
    """``function(*args)`` with ints passed as int64_t, floats as doubles and tensors (or
    None) as pointers to their first element."""
    function(*(ctypes.c_int64(a) if isinstance(a, int) else
               ctypes.c_double(a) if isinstance(a, float) else
               None if a is None else ctypes.c_void_p(a.data_ptr()) for a in args))


def threads(rows: int) -> int:
    """How many threads a C loop over ``rows`` independent rows runs on: torch's (its
    OpenMP threads, when the C code is built with OpenMP), at most one per row."""
    return max(1, min(rows, torch.get_num_threads()))
