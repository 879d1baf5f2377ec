"""The fused kernels' gate functions compile for sm_90 on the CPU (Triton's ahead-of-time
path, no GPU) in every precision the kernels run: float32 through single PTX instructions,
float64 through the exact functions (libdevice's fast intrinsics have no float64 form; a
float64 kernel that reached them failed to compile on the GPU machine only)."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
from triton_subprocess import compiling_env

COMPILE = textwrap.dedent('''
    import json, os, sys
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    import triton
    import triton.language as tl
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from pararnn.kernels._fused_common import FAST_MATH, sigmoid, tanh

    @triton.jit
    def gates(x_ptr, out_ptr):
        x = tl.load(x_ptr + tl.arange(0, 128))
        tl.store(out_ptr + tl.arange(0, 128), sigmoid(x) * tanh(x))

    opcodes = {}
    for dtype in ("fp32", "fp64"):
        src = ASTSource(fn=gates, signature={"x_ptr": "*" + dtype, "out_ptr": "*" + dtype},
                        constexprs={})
        ptx = triton.compile(src, target=GPUTarget("cuda", 90, 32)).asm["ptx"]
        opcodes[dtype] = sorted({line.split()[0] for line in ptx.splitlines()
                                 if line.strip() and line.split()[0][0].isalpha()})
    print(json.dumps({"fast_math": bool(FAST_MATH), "opcodes": opcodes}))
''')


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """Compiled in a process of its own: the kernel tests may have set TRITON_INTERPRET,
    under which FAST_MATH is off and nothing compiles."""
    script = tmp_path_factory.mktemp("fast_math") / "compile_gates.py"
    script.write_text(COMPILE)
    try:
        done = subprocess.run([sys.executable, str(script)], env=compiling_env(), check=True,
                              capture_output=True, text=True, timeout=300)
    except subprocess.CalledProcessError as error:
        if "GPUTarget" in error.stderr and "ImportError" in error.stderr:
            pytest.skip("this Triton has no ahead-of-time GPUTarget")
        raise AssertionError(error.stderr[-3000:]) from error
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_fast_math_is_on_when_compiling(compiled):
    assert compiled["fast_math"] is True


def test_float32_gates_use_the_fast_intrinsics(compiled):
    ops = compiled["opcodes"]["fp32"]
    for op in ("ex2.approx.ftz.f32", "rcp.approx.ftz.f32", "copysign.f32"):
        assert op in ops, ops
    assert not any(op.startswith("div.") for op in ops), ops


def test_float64_gates_compile_exactly(compiled):
    ops = compiled["opcodes"]["fp64"]
    assert "div.rn.f64" in ops, ops
    assert not any(op.endswith(".f32") and "approx" in op for op in ops), ops
