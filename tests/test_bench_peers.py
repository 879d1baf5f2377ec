"""The peer comparison's table (benchmarks/gpu_peers.py) on the CPU: each peer is matched
with our run at its own head count, rows a peer failed or did not run say so, and a peer
measured at a head count we have no run of is named instead of compared."""

import json

import pytest

from benchmark_scripts import load_benchmark


@pytest.fixture(scope="module")
def peers():
    return load_benchmark("gpu_peers")


def write(tmp_path, impl, heads, rows):
    path = tmp_path / f"{impl}_{heads}.json"
    meta = {"impl": impl, "version": "v", "heads": heads, "device": "H200", "date": "2026-12-02"}
    path.write_text(json.dumps({"meta": meta, "rows": rows}))
    return str(path)


def row(cell, fwd, fwd_bwd, **extra):
    return {"cell": cell, "B": 8, "T": 4096, "N": 1024, "precision": "fp32", "fwd_ms": fwd,
            "fwd_bwd_ms": fwd_bwd, **extra}


def test_table_pairs_runs_by_head_count(peers, tmp_path, capsys):
    paths = [write(tmp_path, "ours", 1, [row("gru", 1.0, 3.0), row("lstm", 1.0, 3.0)]),
             write(tmp_path, "ours", 8, [row("gru", 0.5, 2.0), row("lstm", 0.5, 2.0)]),
             write(tmp_path, "apple", 8, [row("gru", 1.0, 10.0)]),
             write(tmp_path, "pararnn-torch", 1, [row("gru", 2.0, 6.0), {**row("lstm", 0, 0), "error": "boom"}]),
             write(tmp_path, "apple", 4, [row("gru", 1.0, 1.0)])]
    peers.table(paths)
    out = capsys.readouterr().out
    apple = out.split("ours vs apple")[1].split("ours vs")[0]
    assert "8 head(s)" in apple
    assert "| 0.500 / 1.000 | 2.00× | 2.000 / 10.000 | 5.00× |" in apple  # against ours at 8 heads
    assert "| lstm | 8×4096×1024 | fp32 | not measured |" in apple
    torch_peer = out.split("ours vs pararnn-torch")[1]
    assert "| 1.000 / 2.000 | 2.00× | 3.000 / 6.000 | 2.00× |" in torch_peer  # ours at 1 head
    assert "| lstm | 8×4096×1024 | fp32 | boom |" in torch_peer
    assert "apple: no JSON of ours at 4 head(s)" in out
