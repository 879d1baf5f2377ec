import os, sys, re, subprocess, tempfile
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
sys.path.insert(0, "benchmarks"); sys.path.insert(0, "runs/proto")
import triton
from triton.backends.compiler import BaseBackend, GPUTarget
from triton.compiler import ASTSource
import kernel_resources as kr
import gru_bwd_pipe
fn0, sig, consts = kr.kernel_spec("gru_bwd", sys.argv[1] if len(sys.argv) > 1 else "bf16", False)
tile = (64, 1, 4)
for stages in [0, 2, 3, 4]:
    fn = fn0 if stages == 0 else gru_bwd_pipe._gru_bwd_kernel
    s = {n: sig.get(n, "constexpr") for n in fn.arg_names}
    c = {**consts, "BN": tile[0], "K": tile[2], "VEC": 2}
    if stages: c["STAGES"] = stages
    aligned = BaseBackend.parse_attr("D")
    attrs = {(i,): aligned for i, name in enumerate(fn.arg_names) if s[name] not in ("constexpr", "fp32") and name not in ("NB", "L", "W", "P")}
    comp = triton.compile(ASTSource(fn, s, c, attrs), target=GPUTarget("cuda", 90, 32), options={"num_warps": 1})
    ptx = comp.asm["ptx"]
    with tempfile.TemporaryDirectory() as tmp:
        p = os.path.join(tmp, "k.cubin"); open(p, "wb").write(comp.asm["cubin"])
        res = subprocess.run([kr.CUOBJDUMP, "-res-usage", p], capture_output=True, text=True).stdout
        sass = subprocess.run([kr.NVDISASM, "-c", p], capture_output=True, text=True).stdout
    print(stages, re.search(r"REG:(\d+) STACK:(\d+) SHARED:(\d+)", res).groups(), "cp.async:", ptx.count("cp.async"), "loop", kr.loop_instructions(sass), "smem", comp.metadata.shared)
