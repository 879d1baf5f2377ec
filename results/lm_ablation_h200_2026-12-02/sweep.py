import json, os, subprocess, sys, time
from concurrent.futures import ThreadPoolExecutor
OUT = os.environ["OUT"]; jobs = json.load(open(sys.argv[1])); par = int(sys.argv[2])
steps = int(sys.argv[3])
def run(j):
    name = j["name"]; d = f"/tmp/runs/{name}"
    env = dict(os.environ, SCOUT_OVERRIDES=json.dumps(j.get("over", {})), SCOUT_CHRONO=str(j.get("chrono", 0)))
    args = dict(model=j["model"], size=j.get("size", "small"), block=j.get("block", "paper"), out=d, max_steps=steps,
                seq_len=j.get("seq", 512), batch_size=j.get("bs", 32), lr=j["lr"], eval_every=steps // 4, eval_tokens=262144,
                ckpt_every=10**6, log_every=50, seed=0, progress=False, data=j.get("data"))
    t = time.time()
    p = subprocess.run([sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "one.py"), json.dumps(args)], env=env, capture_output=True, text=True)
    rows = [json.loads(l) for l in open(f"{d}/metrics.jsonl")] if os.path.exists(f"{d}/metrics.jsonl") else []
    val = [r for r in rows if "val_loss" in r]
    tr = [r for r in rows if "tokens_per_s" in r or "tok_s" in r]
    res = dict(j, wall=time.time() - t, rc=p.returncode, val=val[-1] if val else None,
               curve=[(r.get("step"), r.get("val_bpb")) for r in val], last_train=rows[-1] if rows else None,
               err=p.stderr[-1500:] if p.returncode else "")
    with open(f"{OUT}/scout.jsonl", "a") as f: f.write(json.dumps(res) + "\n")
    print(json.dumps({k: res[k] for k in ("name", "lr", "wall", "rc")}), res["val"] and res["val"].get("val_bpb"), flush=True)
    return res
with ThreadPoolExecutor(par) as ex:
    results = list(ex.map(run, jobs))
json.dump(results, open(f"{OUT}/scout.json", "w"), indent=1)
for r in sorted(results, key=lambda r: (r["val"] or {}).get("val_bpb", 9)):
    print(f'{r["name"]:40s} lr={r["lr"]:.0e} bpb={(r["val"] or {}).get("val_bpb")} wall={r["wall"]:.0f}s rc={r["rc"]}')
