"""The synthetic suite on CUDA (fused kernels for the ParaRNN mixers); skipped without a GPU."""

import copy

import pytest
import torch

from pararnn.synthetic.models import build_synthetic_model
from pararnn.synthetic.runner import RunConfig, evaluate, rnn_layer, run
from pararnn.synthetic.tasks import get_task

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("model", ["paragru", "paralstm"])
@pytest.mark.parametrize("task", ["parity", "khop"])
def test_cuda_solves_match_the_cpu_recurrence(task, model, monkeypatch):
    # cuDNN runs float32 convolutions (the paper block's conv) in TF32 by default: ~1e-3 off
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    torch.manual_seed(0)
    spec = get_task(task)
    cpu = build_synthetic_model(spec, model).eval()
    gpu = copy.deepcopy(cpu).cuda()
    inputs, labels = spec.generate(64, 100, torch.Generator().manual_seed(0))
    rnn_layer(cpu).mode = "sequential"
    with torch.no_grad():
        reference = cpu(inputs)
    for mode in ("sequential", "parallel"):
        rnn_layer(gpu).mode = mode
        with torch.no_grad():
            torch.testing.assert_close(gpu(inputs.cuda()).cpu(), reference, rtol=1e-4, atol=1e-4)
    result = evaluate(gpu, inputs, labels, batch_size=32, device="cuda")
    assert result["solves"]["newton3"]["max_state_gap"] < 1e-3
    assert result["acc"] == pytest.approx(
        float(((reference.argmax(-1) == labels) & (labels >= 0)).sum() / (labels >= 0).sum()), abs=0.01)


@pytest.mark.parametrize("model", ["paragru", "paralstm", "transformer", "mamba2"])
def test_tiny_run_on_cuda(model):
    result = run(RunConfig(task="mqar", model=model, steps=20, eval_every=10, n_train=256, n_val=64,
                           n_test=128, n_test_long=64, batch_size=32, device="cuda"), log=lambda line: None)
    assert result["steps"] == 20 and set(result["test"]) == {"100", "200", "400"}
    assert all(0 <= at["acc"] <= 1 for at in result["test"].values())
