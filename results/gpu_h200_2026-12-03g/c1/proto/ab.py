"""A/B on the GPU: the shipped GRU kernels (register prefetch one block ahead) against the
pipelined prototypes at several stage counts and tiles; CUDA-graph medians, bf16/fp32."""
import json, sys, os
sys.path.insert(0, "benchmarks"); sys.path.insert(0, "runs/proto")
import torch
from cuda_timing import graph_median_ms
from pararnn.kernels import paragru
import gru_bwd_pipe, gru_fwd_pipe

ORIG = {"bwd": paragru._gru_bwd_kernel, "fwd": paragru._gru_fwd_kernel}
PROTO = {"bwd": gru_bwd_pipe._gru_bwd_kernel, "fwd": gru_fwd_pipe._gru_fwd_kernel}


class Staged:
    def __init__(self, kernel, stages):
        self.kernel, self.stages = kernel, stages

    def __getitem__(self, grid):
        launch = self.kernel[grid]
        return lambda *a, **k: launch(*a, STAGES=self.stages, **k)


def use(direction, stages):
    name = f"_gru_{direction}_kernel"
    setattr(paragru, name, ORIG[direction] if stages is None else Staged(PROTO[direction], stages))


def main(out):
    rows = []
    shapes = [(32, 512, 1024, "bf16"), (16, 512, 512, "bf16"), (4, 4096, 1024, "bf16"),
              (16, 1024, 512, "fp32"), (8, 4096, 1024, "fp32"), (1, 65536, 256, "fp32"),
              (64, 2048, 2048, "fp32")]
    tiles = [None, (64, 1, 8), (32, 1, 4), (128, 1, 8)]
    g = torch.Generator(device="cuda").manual_seed(0)
    for B, T, N, dt in shapes:
        dtype = torch.bfloat16 if dt == "bf16" else torch.float32
        pre = (torch.randn(B, T, 3 * N, device="cuda", generator=g) * 0.5).to(dtype)
        a = torch.rand(3, N, device="cuda", generator=g) - 0.5
        bias = torch.randn(3, N, device="cuda", generator=g) * 0.1
        H, _ = paragru.forward(pre, a, bias=bias)
        gH = torch.randn(B, T, N, device="cuda", generator=g)
        ref_fwd = H.clone()
        ref_bwd = paragru._backward_parts(pre, a, None, None, H, gH, bias=bias)
        floor_f = B * T * N * (3 * pre.element_size() + 4) / 4.8e12 * 1e3
        floor_b = B * T * N * (6 * pre.element_size() + 8) / 4.8e12 * 1e3
        for tile in tiles:
            opts = {} if tile is None else dict(block_n=tile[0], num_warps=tile[1], steps_per_block=tile[2])
            for stages in (None, 2, 3, 4):
                res = {"shape": [B, T, N], "dtype": dt, "tile": tile, "stages": stages}
                try:
                    use("fwd", stages); use("bwd", stages)
                    f = lambda: paragru.forward(pre, a, bias=bias, **opts)
                    bw = lambda: paragru._backward_parts(pre, a, None, None, H, gH, bias=bias, **opts)
                    out_f = f()[0]; out_b = bw()
                    res["fwd_err"] = (out_f - ref_fwd).abs().max().item()
                    res["bwd_err"] = max((x.float() - y.float()).abs().max().item() / (y.float().abs().max().item() + 1e-30) for x, y in zip(out_b, ref_bwd))
                    res["fwd_ms"] = graph_median_ms(f)
                    res["bwd_ms"] = graph_median_ms(bw)
                    res["fwd_floor"] = floor_f; res["bwd_floor"] = floor_b
                except Exception as e:  # noqa
                    res["error"] = repr(e)[:300]
                finally:
                    use("fwd", None); use("bwd", None)
                rows.append(res)
                print(json.dumps(res), flush=True)
                json.dump(rows, open(out, "w"), indent=0)


if __name__ == "__main__":
    main(sys.argv[1])
