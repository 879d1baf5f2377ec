"""The decode-step kernels compile for sm_90 on the CPU (Triton's ahead-of-time path, no
GPU) with ``clip`` as fp64, as ``torch.compile``'s generated launcher passes a Python
float, and their math stays float32: a float argument used as it came carried the whole
gate computation into fp64 (the fused solve's kernels: benchmarks/kernel_resources.py and
its test)."""

import json
import subprocess
import sys
import textwrap

import pytest
from triton_subprocess import compiling_env

COMPILE = textwrap.dedent('''
    import json, re
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource
    from pararnn.kernels import decode_step as d

    state = {"AW": "*fp32", "BIAS": "*fp32", "PEEP": "*fp32", "H": "*fp32", "C": "*fp32",
             "N": "i32", "clip": "fp64"}
    projected = {"U": "*bf16", "W": "*bf16", "PBIAS": "*bf16", "batch": "i32",
                 "head_out": "i32", "head_in": "i32"}
    kernels = {
        "gru_step": (d._gru_step_kernel, {"PRE": "*bf16"}, {"BN": 128}),
        "lstm_step": (d._lstm_step_kernel, {"PRE": "*bf16"}, {"BN": 128}),
        "gru_projected": (d._gru_projected_kernel, projected,
                          {"HAS_PBIAS": True, "BN": 32, "BK": 32, "BB": 2}),
        "lstm_projected": (d._lstm_projected_kernel, projected,
                           {"HAS_PBIAS": True, "BN": 32, "BK": 32, "BB": 2}),
    }
    fp64_ops = {}
    for name, (fn, types, consts) in kernels.items():
        types = {**state, **types}
        consts = {**consts, "HAS_BIAS": True, "HAS_CLIP": True}
        signature = {arg: types.get(arg, "constexpr") for arg in fn.arg_names}
        ptx = triton.compile(ASTSource(fn, signature, consts),
                             target=GPUTarget("cuda", 90, 32)).asm["ptx"]
        # double-precision instructions other than the one conversion of clip to fp32
        opcodes = {line.split()[0] for line in ptx.splitlines() if line.strip()}
        fp64_ops[name] = sorted(op for op in opcodes
                                if re.search(r"\\.f64\\b", op) and not op.startswith("cvt."))
    print(json.dumps(fp64_ops))
''')


def test_decode_kernels_keep_fp32_math_with_an_fp64_clip(tmp_path):
    script = tmp_path / "compile_decode.py"
    script.write_text(COMPILE)
    done = subprocess.run([sys.executable, str(script)], env=compiling_env(),
                          capture_output=True, text=True, timeout=600)
    if done.returncode != 0 and "GPUTarget" in done.stderr and "ImportError" in done.stderr:
        pytest.skip("this Triton has no ahead-of-time GPUTarget")
    assert done.returncode == 0, done.stderr[-3000:]
    fp64_ops = json.loads(done.stdout.strip().splitlines()[-1])
    assert set(fp64_ops) == {"gru_step", "lstm_step", "gru_projected", "lstm_projected"}
    assert fp64_ops == {name: [] for name in fp64_ops}, fp64_ops
