"""Layer-level behaviour: errors quote the user's shapes, final states keep float32
precision under autocast, reduced-precision parameters are refused at construction."""

import re

import pytest
import torch

import pararnn


@pytest.mark.parametrize("layer_cls", [pararnn.ParaGRU, pararnn.ParaLSTM])
def test_decode_from_returned_state_matches_parallel_forward_under_autocast(layer_cls):
    """h_n (and ParaLSTM's c_n) come back in float32 under bfloat16 autocast, so stepping
    token by token from them equals the whole-sequence forward to float32 precision."""
    layer = layer_cls(16, 32, num_heads=2, recurrent_clip=0.5)
    x = torch.randn(2, 40, 16)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out, final = layer(x)
        state = None
        for t in range(x.shape[1]):
            _, state = layer(x[:, t:t + 1], state)
    finals = [final] if layer_cls is pararnn.ParaGRU else list(final)
    states = [state] if layer_cls is pararnn.ParaGRU else list(state)
    assert out.dtype == torch.bfloat16
    for got, want in zip(states, finals):
        assert got.dtype == want.dtype == torch.float32
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("layer_cls", [pararnn.ParaGRU, pararnn.ParaLSTM])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_reduced_precision_parameters_fail_at_construction(layer_cls, dtype):
    with pytest.raises(TypeError, match=re.escape(f"got dtype={dtype}") + ".*torch.autocast"):
        layer_cls(4, 8, dtype=dtype)


def test_empty_time_axis_quotes_the_user_shape():
    gru = pararnn.ParaGRU(16, 8)
    with pytest.raises(ValueError, match=re.escape("got shape (2, 0, 16)")):
        gru(torch.randn(2, 0, 16))


def test_lstm_state_errors_quote_the_user_shapes():
    lstm = pararnn.ParaLSTM(4, 16)
    x = torch.randn(2, 5, 4)
    with pytest.raises(ValueError, match=re.escape("state h0 must have shape (2, 16) "
                                                   "((batch, state_size)), got (2, 15)")):
        lstm(x, (torch.zeros(2, 15), torch.zeros(2, 15)))
    with pytest.raises(ValueError, match=re.escape("state c0 must have shape (2, 16)")):
        lstm(x, (torch.zeros(2, 16), torch.zeros(3, 16)))


@pytest.mark.parametrize("make", [lambda: pararnn.ParaGRU(4, 16),
                                  lambda: pararnn.RNN(pararnn.ParaGRUCell(16))])
def test_unbatched_h0_errors_quote_the_user_shape(make):
    layer = make()
    features = 4 if isinstance(layer, pararnn.ParaGRU) else 48
    with pytest.raises(ValueError, match=re.escape("h0 must have shape (16,) (unbatched x: "
                                                   "(state_size,)), got (1, 16)")):
        layer(torch.randn(7, features), torch.zeros(1, 16))
    out, h_n = layer(torch.randn(7, features), torch.zeros(16))  # the right shape works
    assert out.shape == (7, 16) and h_n.shape == (16,)


def test_time_first_h0_error_names_the_batch():
    rnn = pararnn.RNN(pararnn.ParaGRUCell(4), batch_first=False)
    with pytest.raises(ValueError, match=re.escape("h0 must have shape (3, 4)")):
        rnn(torch.randn(9, 3, 12), torch.zeros(9, 4))


@pytest.mark.parametrize("batch", [1, 3])
@pytest.mark.parametrize("mode", ["sequential", "parallel", "auto"])
@pytest.mark.parametrize("layer_cls", [pararnn.ParaGRU, pararnn.ParaLSTM])
def test_final_state_holds_no_reference_to_all_states(layer_cls, mode, batch):
    """h_n (and c_n) are tensors of their own, as torch.nn.GRU's: a view of the (B, T, N)
    states would keep them all alive for as long as the caller keeps the final state
    (e.g. carried to the next chunk of a long sequence)."""
    layer = layer_cls(4, 8, mode=mode)
    x = torch.randn(batch, 50, 4, requires_grad=mode == "auto")
    out, final = layer(x)
    for state in final if isinstance(final, tuple) else (final,):
        assert state.shape == (batch, 8)
        assert state.untyped_storage().nbytes() <= 2 * batch * 8 * state.element_size()
        assert state.untyped_storage().data_ptr() != out.untyped_storage().data_ptr()


@pytest.mark.parametrize("layer_cls", [pararnn.ParaGRU, pararnn.ParaLSTM])
def test_half_precision_conversion_is_refused_with_the_remedy(layer_cls):
    """layer.half() after construction: one error naming the remedy (it first advised
    passing x in float16, which the cell then refused)."""
    layer = layer_cls(4, 8).half()
    for x in (torch.randn(2, 3, 4), torch.randn(2, 3, 4).half()):
        with pytest.raises(TypeError, match=r"parameters must be float32 or float64, got torch.float16.*layer.float\(\)"):
            layer(x)


@pytest.mark.parametrize("layer_cls", [pararnn.ParaGRU, pararnn.ParaLSTM])
def test_reset_parameters_draws_the_initial_weights_again(layer_cls):
    torch.manual_seed(0)
    layer = layer_cls(4, 8, num_heads=2)
    initial = {k: v.clone() for k, v in layer.state_dict().items()}
    with torch.no_grad():
        for p in layer.parameters():
            p.add_(1.0)
    torch.manual_seed(0)  # the draws of construction, in its order
    layer.reset_parameters()
    for name, value in layer.state_dict().items():
        torch.testing.assert_close(value, initial[name], msg=name)
