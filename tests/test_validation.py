"""Bad input gets a clear error naming the argument, before any work starts."""

import pytest
import torch

import pararnn


@pytest.fixture
def gru():
    return pararnn.ParaGRU(4, 8)


@pytest.fixture
def rnn():
    return pararnn.RNN(pararnn.ParaGRUCell(8))


def test_wrong_rank(rnn, gru):
    with pytest.raises(ValueError, match=r"x must have shape \(batch, time, features\) or "
                                         r"\(time, features\) .* got \(2, 3, 4, 24\)"):
        rnn(torch.randn(2, 3, 4, 24))
    with pytest.raises(ValueError, match=r"input_size \(4\), got \(5,\)"):
        gru(torch.randn(5))


def test_wrong_feature_size(rnn, gru):
    with pytest.raises(ValueError, match=r"input_size \(24\), got \(2, 3, 23\)"):
        rnn(torch.randn(2, 3, 23))
    with pytest.raises(ValueError, match=r"input_size \(4\), got \(2, 3, 5\)"):
        gru(torch.randn(2, 3, 5))


def test_empty_sequence(rnn):
    with pytest.raises(ValueError, match="time >= 1"):
        rnn(torch.randn(2, 0, 24))


def test_not_a_tensor(rnn):
    with pytest.raises(TypeError, match="x must be a torch.Tensor"):
        rnn([[1.0]])


def test_h0_shape_dtype(rnn):
    x = torch.randn(2, 3, 24)
    with pytest.raises(ValueError, match=r"h0 must have shape \(2, 8\) .* got \(3, 8\)"):
        rnn(x, torch.zeros(3, 8))
    with pytest.raises(ValueError, match=r"h0 must have shape"):
        rnn(x, torch.zeros(1, 2, 8))
    with pytest.raises(TypeError, match="h0 has dtype torch.float64"):
        rnn(x, torch.zeros(2, 8, dtype=torch.float64))
    with pytest.raises(TypeError, match="h0 must be a torch.Tensor"):
        rnn(x, 0.0)


def test_dtype_mismatch_between_input_and_cell(rnn):
    with pytest.raises(TypeError, match="cell's parameters are torch.float32"):
        rnn(torch.randn(2, 3, 24, dtype=torch.float64))
    with pytest.raises(TypeError, match="x must be float32, float64"):
        rnn(torch.ones(2, 3, 24, dtype=torch.int64))
    with pytest.raises(TypeError, match="float32 or float64"):
        pararnn.RNN(pararnn.ParaGRUCell(8, dtype=torch.bfloat16))(torch.randn(1, 2, 24).bfloat16())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA for a device mismatch")
def test_device_mismatch(rnn):
    with pytest.raises(ValueError, match="cell's parameters are on cpu"):
        rnn(torch.randn(2, 3, 24, device="cuda"))


def test_device_mismatch_with_meta_tensors(rnn):
    """Runs without CUDA: a tensor on the meta device is on another device."""
    with pytest.raises(ValueError, match="x is on meta but the cell's parameters are on cpu"):
        rnn(torch.randn(2, 3, 24, device="meta"))
    with pytest.raises(ValueError, match="h0 is on meta but x is on cpu"):
        rnn(torch.randn(2, 3, 24), torch.zeros(2, 8, device="meta"))


def test_unknown_options():
    cell = pararnn.ParaGRUCell(8)
    with pytest.raises(ValueError, match="mode must be one of"):
        pararnn.RNN(cell, mode="fast")
    with pytest.raises(ValueError, match="backend must be one of"):
        pararnn.RNN(cell, backend="cuda")
    with pytest.raises(TypeError, match="newton must be a pararnn.NewtonConfig"):
        pararnn.RNN(cell, newton={"max_iters": 3})
    rnn = pararnn.RNN(cell)
    with pytest.raises(ValueError, match="mode must be one of"):
        rnn.mode = "Parallel"
    assert rnn.mode == "auto"


@pytest.mark.parametrize("kwargs, match", [
    (dict(max_iters=0), "max_iters must be an int >= 1"),
    (dict(max_iters=2.5), "max_iters must be an int >= 1"),
    (dict(tol=-1.0), "tol must be 'auto', a positive number or None"),
    (dict(on_failure="ignore"), "on_failure must be one of"),
    (dict(jacobian="block", tol=1e-6), "jacobian must be None or 'diagonal'"),
    (dict(jacobian="diagonal", tol=None), "needs a tol"),
])
def test_newton_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        pararnn.NewtonConfig(**kwargs)


def test_resets_validation(rnn):
    x = torch.randn(2, 5, 24)
    with pytest.raises(TypeError, match="resets must be a bool tensor"):
        rnn(x, resets=torch.zeros(2, 5))
    with pytest.raises(ValueError, match=r"resets must have shape \(2, 5\) \(batch, time\)"):
        rnn(x, resets=torch.zeros(2, 4, dtype=torch.bool))
    with pytest.raises(ValueError, match="either resets or cu_seqlens"):
        rnn(x[:1], resets=torch.zeros(1, 5, dtype=torch.bool), cu_seqlens=torch.tensor([0, 5]))


def test_resets_follow_the_layout_of_x():
    """resets have x's shape without the features: (B, T), (T, B) time-first, (T,)
    unbatched; the errors quote the shapes the user passed."""
    torch.manual_seed(0)
    layer = pararnn.ParaGRU(4, 8, dtype=torch.float64)
    time_first = pararnn.ParaGRU(4, 8, batch_first=False, dtype=torch.float64)
    time_first.load_state_dict(layer.state_dict())
    x, resets = torch.randn(3, 6, 4, dtype=torch.float64), torch.rand(3, 6) < 0.3
    want, want_h = layer(x, resets=resets)
    got, got_h = time_first(x.transpose(0, 1), resets=resets.T)
    torch.testing.assert_close(got.transpose(0, 1), want, rtol=0, atol=0)
    torch.testing.assert_close(got_h, want_h, rtol=0, atol=0)
    one, one_h = layer(x[1], resets=resets[1])
    torch.testing.assert_close(one, want[1], rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"resets must have shape \(6, 3\) \(time, batch\).*got \(3, 6\)"):
        time_first(x.transpose(0, 1), resets=resets)
    with pytest.raises(ValueError, match=r"resets must have shape \(6,\) \(time,\).*got \(1, 6\)"):
        layer(x[1], resets=resets[:1])
    with pytest.raises(TypeError, match="resets must be a bool tensor"):
        layer(x, resets=[[False] * 6] * 3)


def test_per_sequence_initial_state_with_cu_seqlens():
    """With cu_seqlens the initial state is one row per sequence, also for unbatched x and
    ParaLSTM's (h0, c0), whose wrong shapes are quoted as passed."""
    torch.manual_seed(0)
    lstm = pararnn.ParaLSTM(4, 8, dtype=torch.float64)
    x, cu = torch.randn(1, 7, 4, dtype=torch.float64), torch.tensor([0, 3, 7])
    h0, c0 = torch.randn(2, 8, dtype=torch.float64), torch.randn(2, 8, dtype=torch.float64)
    out, (h_n, c_n) = lstm(x, (h0, c0), cu_seqlens=cu)
    first, (h_1, _) = lstm(x[:, :3], (h0[:1], c0[:1]))
    torch.testing.assert_close(out[:, :3], first)
    assert h_n.shape == c_n.shape == (2, 8)
    torch.testing.assert_close(h_n[:1], h_1)
    flat, (flat_h, flat_c) = lstm(x[0], (h0, c0), cu_seqlens=cu)  # unbatched
    torch.testing.assert_close(flat, out[0], rtol=0, atol=0)
    torch.testing.assert_close(flat_h, h_n, rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"state c0 must have shape \(2, 8\) \(one row per "
                                         r"sequence of cu_seqlens\), got \(3, 8\)"):
        lstm(x, (h0, torch.zeros(3, 8, dtype=torch.float64)), cu_seqlens=cu)


@pytest.mark.parametrize("cu, match", [
    (torch.tensor([0.0, 5.0]), "int32/int64"),
    (torch.tensor([5]), "at least 2 entries"),
    (torch.tensor([0, 3, 3, 5]), "rise strictly from 0 to the sequence length 5"),
    (torch.tensor([0, 4]), "rise strictly"),
    (torch.tensor([1, 5]), "rise strictly"),
])
def test_cu_seqlens_validation(rnn, cu, match):
    with pytest.raises((TypeError, ValueError), match=match):
        rnn(torch.randn(1, 5, 24), cu_seqlens=cu)


def test_cu_seqlens_is_read_once_until_it_changes(rnn, monkeypatch):
    """Checking cu_seqlens reads it on the host (a wait for the GPU where it lives): every
    layer of a model gets the same tensor, so an unchanged one is checked once; written
    in place, it is checked again."""
    x, cu = torch.randn(1, 7, 24), torch.tensor([0, 3, 7])
    want, h_n = rnn(x, cu_seqlens=cu)
    reads = []
    real_tolist = torch.Tensor.tolist
    monkeypatch.setattr(torch.Tensor, "tolist", lambda t: reads.append(t) or real_tolist(t))
    got, got_h_n = rnn(x, cu_seqlens=cu)
    assert reads == [] and torch.equal(got, want) and torch.equal(got_h_n, h_n)
    rnn(x, cu_seqlens=torch.tensor([0, 3, 7]))  # another tensor with the same values
    assert len(reads) == 1
    cu[1] = 7
    with pytest.raises(ValueError, match="rise strictly"):
        rnn(x, cu_seqlens=cu)
    cu[1] = 5
    moved, _ = rnn(x, cu_seqlens=cu)
    assert len(reads) == 3
    # the sequence split at 5 rather than 3: its own first sequence is longer
    torch.testing.assert_close(moved[:, :5], rnn(x[:, :5])[0])
    with torch.inference_mode():  # inference tensors have no version counter: read each call
        for _ in range(2):
            assert torch.equal(rnn(x, cu_seqlens=torch.tensor([0, 3, 7]))[0], want)
    assert len(reads) == 5



def test_cu_seqlens_reused_with_another_sequence_length_is_checked_again(rnn):
    """The bookkeeping kept for an unchanged cu_seqlens tensor belongs to its sequence
    length: the same tensor with a longer x is checked against that length (it must end
    there) instead of solving the longer x with the shorter layout."""
    cu = torch.tensor([0, 3, 7])
    rnn(torch.randn(1, 7, 24), cu_seqlens=cu)
    with pytest.raises(ValueError, match="rise strictly from 0 to the sequence length 9"):
        rnn(torch.randn(1, 9, 24), cu_seqlens=cu)


def test_cu_seqlens_needs_batch_one(rnn):
    with pytest.raises(ValueError, match="batch 1"):
        rnn(torch.randn(2, 5, 24), cu_seqlens=torch.tensor([0, 5]))
    with pytest.raises(ValueError, match=r"h0 must have shape \(2, 8\) \(one row per sequence"):
        rnn(torch.randn(1, 5, 24), torch.zeros(1, 8), cu_seqlens=torch.tensor([0, 2, 5]))
    with pytest.raises(ValueError, match="number of sequences in cu_seqlens"):  # the solver's own
        pararnn.solve(rnn.cell, torch.randn(1, 5, 24), torch.zeros(1, 8),
                      cu_seqlens=torch.tensor([0, 2, 5]))


def test_lstm_state_validation():
    lstm = pararnn.ParaLSTM(4, 8)
    x = torch.randn(2, 3, 4)
    with pytest.raises(TypeError, match=r"tuple \(h0, c0\)"):
        lstm(x, torch.zeros(2, 8))
    with pytest.raises(ValueError, match=r"state c0 must have shape \(2, 8\)"):
        lstm(x, (torch.zeros(2, 8), torch.zeros(1, 8)))
    for state, missing in (((torch.zeros(2, 8), None), "c0"), ((None, torch.zeros(2, 8)), "h0")):
        with pytest.raises(TypeError, match=f"state {missing} is None"):
            lstm(x, state)
    with pytest.raises(ValueError, match="state h0 and c0 must be on x's device cpu, got cpu and meta"):
        lstm(x, (torch.zeros(2, 8), torch.zeros(2, 8, device="meta")))  # meta: another device


def test_h0_dtype_error_names_the_dtypes_allowed():
    """A bf16 x takes an h0 of its own dtype or float32 (the solve's): the error says both."""
    rnn = pararnn.RNN(pararnn.ParaGRUCell(8))
    x = torch.randn(2, 3, 24, dtype=torch.bfloat16)
    with pytest.raises(TypeError, match=r"h0 has dtype torch.float16, expected torch.bfloat16 "
                       r"\(the dtype of x\) or torch.float32 \(the solve's\)"):
        rnn(x, torch.zeros(2, 8, dtype=torch.float16))
    with pytest.raises(TypeError, match=r"h0 has dtype torch.float64, expected torch.float32$"):
        rnn(x.float(), torch.zeros(2, 8, dtype=torch.float64))


def test_layer_size_validation():
    with pytest.raises(ValueError, match="hidden_size must be a positive int"):
        pararnn.ParaGRU(4, 0)
