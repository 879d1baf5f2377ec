"""Assemble a RESTORE pack for benchmarks/gpu_lm_quality.sh from committed results (hybrid default)."""
import json, shutil, tarfile
from pathlib import Path
R = Path("/work/main/results")
c = R / "gpu_h200_2026-12-02c/lm_quality/code-byte"
d = R / "gpu_h200_2026-12-02d/hybrid_100m"
plan = {}  # dest (stage/name) -> source folder
for m in ("transformer", "mamba2"):
    for f in (c / "lr").glob(f"{m}-lr*"):
        plan[f"lr/{f.name}"] = f
for f in (d / "lr").glob("paragru+attn8-lr*"):
    name = f.name.replace("paragru+attn8", "paragru")
    if "lr0.0005" not in name:
        plan[f"lr/{name}"] = f
plan["seeds/transformer-lr0.001-s0"] = c / "seeds/transformer-lr0.001-s0"
plan["seeds/transformer-lr0.001-s1"] = d / "seeds/transformer-lr0.001-s1"
plan["seeds/mamba2-lr0.002-s0"] = c / "seeds/mamba2-lr0.002-s0"
for s in (0, 1):
    plan[f"seeds/paragru-lr0.004-s{s}"] = d / f"seeds/paragru+attn8-lr0.004-s{s}"
stage = Path("/tmp/pack/code-byte")
shutil.rmtree("/tmp/pack", ignore_errors=True)
for dest, src in sorted(plan.items()):
    out = stage / dest
    shutil.copytree(src, out)
    r = json.loads((out / "result.json").read_text()); r["run"] = out.name
    (out / "result.json").write_text(json.dumps(r, indent=1))
    print(dest, "<-", src.relative_to(R), r["val_loss"])
with tarfile.open("/work/main/runs/state/lm_quality_hybrid.tar.gz", "w:gz") as t:
    t.add("/tmp/pack/code-byte", arcname="./code-byte")
