"""cProfile of compiled LM training steps (host time by Python function)."""
import cProfile, io, pstats, sys, time
sys.path.insert(0, "benchmarks")
import torch
from pararnn.models import build_model, preset
from pararnn.train.loop import compiled as training_forward

for spec in sys.argv[1].split(","):
    name, T, comp = spec.split(":")
    T = int(T); comp = comp == "c"
    torch.manual_seed(0)
    dev = torch.device("cuda")
    model = build_model(preset(name, "small", vocab_size=320, block="auto")).to(dev)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    fwd = training_forward(model, comp)
    ac = torch.autocast("cuda", dtype=torch.bfloat16)
    tokens = torch.randint(0, 320, (16384 // T, T + 1), device=dev)
    def step():
        with ac:
            loss = fwd(tokens[:, :-1], tokens[:, 1:])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step(); opt.zero_grad(set_to_none=True)
    for _ in range(4):
        step()
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(5):
        step()
    host = (time.perf_counter() - t) / 5
    torch.cuda.synchronize()
    wall = (time.perf_counter() - t) / 5
    pr = cProfile.Profile(); pr.enable()
    for _ in range(5):
        step()
    pr.disable(); torch.cuda.synchronize()
    s = io.StringIO()
    st = pstats.Stats(pr, stream=s)
    st.sort_stats("tottime").print_stats(35)
    st.sort_stats("cumtime").print_stats(35)
    print(f"==== {spec}: host {host*1e3:.2f} ms/step, wall {wall*1e3:.2f} ms/step (unprofiled, 5 steps)", flush=True)
    print(s.getvalue())
