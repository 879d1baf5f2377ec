"""The LM-step profile of benchmarks/gpu_lm_speed.py (``--profile``), on the CPU: the
kernel-kind breakdown and the tables from a recorded trace with the kernel names an H200
run shows, and the parser on a real ``torch.profiler`` export (CPU activities only)."""

import json

import pytest
import torch

from benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("gpu_lm_speed")


@pytest.mark.parametrize("name, kind", [
    ("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NTN", "gemm"),
    ("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64_warpgroupsize1x1x1", "gemm"),
    ("void cutlass::Kernel2<cutlass_80_wmma_tensorop_bf16_s161616gemm_bf16_16x16_128x2_tn_align8>", "gemm"),
    ("triton_tem_fused_mm_3", "gemm"),
    ("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64, 128, 128, 4>, true>", "attention"),
    ("fmha_cutlassB_bf16_aligned_64x64_k64_sm80", "attention"),
    ("_gru_fwd_kernel", "pararnn"), ("_lstm_bwd_kernel", "pararnn"), ("_boundary_2x2_kernel", "pararnn"),
    ("_chunk_scan_fwd_kernel", "mamba"), ("_state_passing_bwd_kernel", "mamba"),
    ("void at::native::conv_depthwise2d_forward_kernel<1, c10::BFloat16, int>", "conv"),
    ("sm90_xmma_fprop_implicit_gemm_bf16bf16_bf16f32_f32_nhwckrsc_nhwc", "conv"),
    ("_conv1d_fwd_kernel", "conv"), ("_conv1d_bwd_kernel", "conv"),  # kernels/causal_conv.py
    ("_gated_norm_fwd_kernel", "norm"), ("_gated_norm_bwd_kernel", "norm"),  # kernels/gated_norm.py
    ("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<FusedOptimizerTensorListMetadata<4>, "
     "FusedAdamMathFunctor<float, 4, ADAM_MODE::ADAMW, false>>", "optimizer"),
    ("void at::native::lpnorm_cleanup<float, NormType::L2, float, float>", "optimizer"),
    ("triton_poi_fused_convert_element_type_mul_silu_4", "other"),
    ("triton_red_fused__to_copy_add_mean_mul_pow_rsqrt_2", "other"),
    ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<float>>", "other"),
])
def test_kernel_kinds(bench, name, kind):
    assert bench.kernel_kind(name) == kind


def kernel(name, ts, dur, cat="kernel"):
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur, "pid": 0, "tid": 7}


def test_breakdown_and_tables_of_a_recorded_step(bench):
    """Two streams overlap (busy time is their union); copies count apart from kernels;
    syncs count inside the step's range only."""
    events = [
        {"ph": "X", "cat": "user_annotation", "name": bench.STEP_RANGE, "ts": 0.0, "dur": 900.0},
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaStreamSynchronize", "ts": 500.0, "dur": 3.0},
        {"ph": "X", "cat": "cuda_runtime", "name": "cudaDeviceSynchronize", "ts": 950.0, "dur": 99.0},
        {"ph": "X", "cat": "cpu_op", "name": "aten::mm", "ts": 10.0, "dur": 5.0},
        {"ph": "i", "cat": "kernel", "name": "not a duration event", "ts": 1.0},
        kernel("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NTN", 100.0, 300.0),
        kernel("_gru_bwd_kernel", 200.0, 400.0),  # overlaps the GEMM: busy 100..600
        kernel("triton_poi_fused_add_silu_0", 700.0, 50.0),
        kernel("Memcpy HtoD (Pinned -> Device)", 20.0, 30.0, cat="gpu_memcpy"),
    ]
    p = bench.profile_breakdown(events)
    assert p["kernels"] == 3 and p["syncs"] == 1
    assert p["by_kind_ms"]["gemm"] == pytest.approx(0.3) and p["by_kind_ms"]["pararnn"] == pytest.approx(0.4)
    assert p["by_kind_ms"]["other"] == pytest.approx(0.05)
    assert p["by_kind_ms"]["memcpy/memset"] == pytest.approx(0.03)
    assert p["kernel_ms"] == pytest.approx(0.78)
    assert p["busy_ms"] == pytest.approx(0.03 + 0.5 + 0.05)
    assert set(p["by_kind_ms"]) == set(bench.KINDS)
    assert p["other_kernels"] == [{"name": "triton_poi_fused_add_silu_0", "ms": pytest.approx(0.05),
                                   "count": 1}]
    assert p["ours_kernels"] == [{"name": "_gru_bwd_kernel", "ms": pytest.approx(0.4), "count": 1}]

    row = {"model": "paragru", "seq_len": 512, "compiled": True, "step_ms": 1.0, "host_ms": 0.9, "profile": p}
    line = bench.format_profile(row)
    assert "3 kernels" in line and "GPU busy 0.58 ms (58% of the step)" in line and "host 0.90 ms (90%)" in line
    table = bench.profile_table([row, {"model": "mamba2", "seq_len": 512, "compiled": False, "error": "x"}])
    lines = table.splitlines()
    assert len(lines) == 3  # the header, its rule, the one profiled row
    header = [c.strip() for c in lines[0].strip("|").split("|")]
    cells = dict(zip(header, (c.strip() for c in lines[2].strip("|").split("|"))))
    assert cells["model"] == "paragru" and cells["mode"] == "compiled"
    assert cells["gemm"] == "0.30" and cells["pararnn"] == "0.40" and cells["kernels"] == "3"
    assert cells["GPU busy"] == "0.58" and cells["step"] == "1.00"


def test_breakdown_of_a_real_profiler_export(bench, tmp_path):
    """A CPU-only profile has the step range and no kernels; the export's format (categories,
    the range's name) is what the parser expects."""
    from torch.profiler import ProfilerActivity, profile, record_function
    x = torch.randn(64, 64)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        with record_function(bench.STEP_RANGE):
            (x @ x).sum()
    path = tmp_path / "trace.json"
    prof.export_chrome_trace(str(path))
    p = bench.profile_breakdown(json.loads(path.read_text())["traceEvents"])
    assert p["syncs"] == 0 and p["kernels"] == 0 and p["busy_ms"] == 0.0


def test_host_ops_rank_a_real_profile_by_self_time(bench):
    """The host costs of a step come from the profiler's averages, largest self time first."""
    from torch.profiler import ProfilerActivity, profile
    x = torch.randn(256, 256)
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(3):
            (x @ x).sum()
    ops = bench.host_ops(prof.key_averages(), top=4)
    assert 0 < len(ops) <= 4
    assert [op["self_cpu_us"] for op in ops] == sorted((op["self_cpu_us"] for op in ops), reverse=True)
    mm = next(op for op in ops if op["name"] == "aten::mm")
    assert mm["count"] == 3 and 0 < mm["self_cpu_us"] <= mm["cpu_total_us"]
    line = bench.format_host_ops({"profile": {"host_ops": ops}}, top=2)
    assert len(line.splitlines()) == 2 and "ms self in" in line
    others = [{"name": "triton_red_fused_rms_norm_3", "ms": 0.4, "count": 7}]
    ours = [{"name": "_gru_fwd_kernel", "ms": 0.2, "count": 7}]
    lines = bench.format_host_ops({"profile": {"host_ops": ops, "other_kernels": others,
                                               "ours_kernels": ours}}, top=2).splitlines()
    assert len(lines) == 4 and "other kernel:" in lines[2] and "rms_norm" in lines[2]
    assert "our kernel:" in lines[3] and "_gru_fwd_kernel" in lines[3]



def test_rows_name_their_mode(bench):
    """Eager, compiled and CUDA-graph rows are told apart in the printed tables."""
    assert [bench.mode_name(c) for c in (False, True, bench.GRAPHS)] == ["eager", "compiled", "graphs"]
    p = {"by_kind_ms": dict.fromkeys(bench.KINDS, 0.0), "kernels": 0, "busy_ms": 0.0}
    row = {"model": "paragru", "seq_len": 512, "compiled": bench.GRAPHS, "step_ms": 1.0, "host_ms": 0.1,
           "profile": p}
    assert "| graphs |" in bench.profile_table([row])


def test_host_profile_names_the_step_functions_per_step(bench):
    """cProfile over three steps: functions reported per step (calls, own and cumulative ms)."""
    def inner():
        return sum(i * i for i in range(2000))

    def step(i):
        inner()
        inner()

    report = bench.host_profile_steps(step, range(3), sync=lambda: None)
    assert report["steps"] == 3
    rows = {name.split("(")[-1].rstrip(")"): (calls, own, cum) for name, calls, own, cum in report["by_cumulative"]}
    assert rows["inner"][0] == pytest.approx(2.0) and rows["step"][0] == pytest.approx(1.0)
    assert rows["step"][2] >= rows["inner"][2] > 0  # the step's cumulative time holds inner's
    line = bench.format_host_profile({"host_profile": report})
    assert "inner" in line
