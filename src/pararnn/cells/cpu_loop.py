"""The ParaGRU and ParaLSTM step loops and their adjoint backwards in C, for CPU training
through the loop (:class:`pararnn.solver.newton.LoopSolve`).

Why: in PyTorch each step of the loop is ~8 small ops of ~2-4 µs each over a few thousand
entries, and its backward ~25 whole-chunk passes; at the ``tiny`` LM's shapes that
overhead, not arithmetic, was the cell's cost (BENCHMARKS.md, "CPU training path"). Here
one C function walks the whole sequence per batch row (the state stays in L1, the inner
loop over channels is vectorised, ``exp``/``tanh`` from the C library's vector math), and
the backward walks the adjoint recurrence ``λ_t = g_t + J_{t+1}^T λ_{t+1}`` in the same pass
that forms the gate gradients, reading the gates the forward wrote on its tape. The math
is the cells' own (``taping_stepper`` and ``linearize``); the tests compare both paths
with autograd through the loop in float64. Built at first use (:mod:`pararnn._cbuild`);
without a C compiler the cells run the PyTorch loop.
"""

from __future__ import annotations

import torch

from .. import _cbuild

# Layouts (all contiguous): pre the pre-activations u, (H, B, T, 3, N/H) for `heads` H (1:
# the gate-major (B, T, 3, N); more: the head-major layout a multi-head projection writes,
# read in place), grad_pre the same; tape (B, T, G, N)
# the gates the forward writes (GRU z, r, ĥ; LSTM f, c̃, o, tanh c'), states (B, T, S)
# with S = N (GRU) or 2N interleaved (c, h) per channel (LSTM), a (3, N) and p (2, N) the
# clipped weights. The LSTM's hidden (B, T, N) is h once more, contiguous (NULL: not
# written), and its backward adds the gradients of states and hidden (either may be NULL).
# Rows run on `threads` OpenMP threads; per thread, the backward adds into its own
# grad_w / grad_b (zeroed by the caller, who sums them) and walks its own carry, and the
# LSTM forward keeps its previous (h, c) planar in its own scratch row hcs.
_SOURCE = _cbuild.PRELUDE + r"""
/* One step over m channels of one row (a head's): a function of its own, so that the
   compiler sees restrict pointers with affine accesses and vectorises the loop. Gate k of
   u is at u + k us; of the weights, the bias and the tape at + k n. */
static void gru_step(idx m, idx us, idx n, C u, C a, C bias, C h, R gate, R out) {
    #pragma omp simd
    for (idx i = 0; i < m; i++) {
        real hp = h[i];
        real z = sigmoid(u[i] + bias[i] + a[i] * hp);
        real r = sigmoid(u[us + i] + bias[n + i] + a[n + i] * hp);
        real cand = TANH(u[2 * us + i] + bias[2 * n + i] + r * (a[2 * n + i] * hp));
        gate[i] = z; gate[n + i] = r; gate[2 * n + i] = cand;
        out[i] = hp + z * (cand - hp);
    }
}

void gru_forward(idx threads, idx rows, idx steps, idx n, idx heads, C pre, C a, C bias, C h0,
                 R tape, R states) {
    idx m = n / heads, head_stride = rows * steps * 3 * m;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (idx b = 0; b < rows; b++)
        for (idx t = 0; t < steps; t++) {
            idx at = b * steps + t;
            C h = t ? states + (at - 1) * n : h0 + b * n;
            for (idx k = 0; k < heads; k++) {
                idx o = k * m;
                gru_step(m, m, n, pre + k * head_stride + at * 3 * m, a + o, bias + o, h + o,
                         tape + at * 3 * n + o, states + at * n + o);
            }
        }
}

/* gp's gate k at gp + k gs; the rest's at + k n (as gru_step) */
static void gru_adjoint_step(idx m, idx gs, idx n, C a, C h, C gate, C g, R gp, R grad_w,
                             R grad_b, R carry) {
    #pragma omp simd
    for (idx i = 0; i < m; i++) {
        real hp = h[i], z = gate[i], r = gate[n + i], cand = gate[2 * n + i];
        real lam = g[i] + carry[i];  /* total dL/dh_t */
        real g_z = lam * z * (1 - z) * (cand - hp);       /* dL/d pre_z */
        real g_h = lam * z * (1 - cand * cand);           /* dL/d pre_h */
        real g_r = g_h * a[2 * n + i] * hp * r * (1 - r); /* through r * h */
        gp[i] = g_z; gp[gs + i] = g_r; gp[2 * gs + i] = g_h;
        grad_w[i] += g_z * hp; grad_w[n + i] += g_r * hp; grad_w[2 * n + i] += g_h * (r * hp);
        grad_b[i] += g_z; grad_b[n + i] += g_r; grad_b[2 * n + i] += g_h;
        carry[i] = lam * (1 - z) + g_z * a[i] + g_r * a[n + i] + g_h * r * a[2 * n + i];
    }
}

void gru_backward(idx threads, idx rows, idx steps, idx n, idx heads, C a, C h0, C tape,
                  C states, C grad_states, R grad_pre, R grad_h0, R grad_ws, R grad_bs,
                  R carries) {
    idx m = n / heads, head_stride = rows * steps * 3 * m;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (idx b = 0; b < rows; b++) {
        real *grad_w = grad_ws + THREAD * 3 * n, *grad_b = grad_bs + THREAD * 3 * n;
        real *carry = carries + THREAD * n;
        for (idx i = 0; i < n; i++) carry[i] = 0;
        for (idx t = steps - 1; t >= 0; t--) {
            idx at = b * steps + t;
            C h = t ? states + (at - 1) * n : h0 + b * n;
            for (idx k = 0; k < heads; k++) {
                idx o = k * m;
                gru_adjoint_step(m, m, n, a + o, h + o, tape + at * 3 * n + o,
                                 grad_states + at * n + o,
                                 grad_pre + k * head_stride + at * 3 * m, grad_w + o,
                                 grad_b + o, carry + o);
            }
        }
        for (idx i = 0; i < n; i++) grad_h0[b * n + i] = carry[i];
    }
}

/* hc: the previous state, planar (h then c, n apart), updated in place; strides as
   gru_step's */
static void lstm_step(idx m, idx us, idx n, C u, C a, C p, C bias, R hc, R gate, R out,
                      R hidden) {
    #pragma omp simd
    for (idx i = 0; i < m; i++) {
        real h = hc[i], c = hc[n + i];
        real f = sigmoid(u[i] + bias[i] + a[i] * h + p[i] * c);
        real cand = TANH(u[us + i] + bias[n + i] + a[n + i] * h);
        real c_next = cand + f * (c - cand);
        real o = sigmoid(u[2 * us + i] + bias[2 * n + i] + a[2 * n + i] * h + p[n + i] * c_next);
        real tanh_c = TANH(c_next), h_next = o * tanh_c;
        gate[i] = f; gate[n + i] = cand; gate[2 * n + i] = o; gate[3 * n + i] = tanh_c;
        out[2 * i] = c_next; out[2 * i + 1] = h_next;
        if (hidden) hidden[i] = h_next;
        hc[i] = h_next; hc[n + i] = c_next;
    }
}

void lstm_forward(idx threads, idx rows, idx steps, idx n, idx heads, C pre, C a, C p, C bias,
                  C h0, R tape, R states, R hidden, R hcs) {
    idx m = n / heads, head_stride = rows * steps * 3 * m;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (idx b = 0; b < rows; b++) {
        real *hc = hcs + THREAD * 2 * n;
        for (idx i = 0; i < n; i++) {
            hc[n + i] = h0[b * 2 * n + 2 * i];
            hc[i] = h0[b * 2 * n + 2 * i + 1];
        }
        for (idx t = 0; t < steps; t++) {
            idx at = b * steps + t;
            for (idx k = 0; k < heads; k++) {
                idx o = k * m;
                lstm_step(m, m, n, pre + k * head_stride + at * 3 * m, a + o, p + o, bias + o,
                          hc + o, tape + at * 4 * n + o, states + at * 2 * n + 2 * o,
                          hidden ? hidden + at * n + o : 0);
            }
        }
    }
}

/* carry (planar (c, h)) += the gradients of a step's outputs: g interleaved (c, h) and
   g_hidden (h), either NULL. Loops of their own: a test inside the adjoint step's loop
   stops the compiler from vectorising it. */
static void add_output_gradients(idx n, C g, C g_hidden, R carry) {
    if (g) {
        #pragma omp simd
        for (idx i = 0; i < n; i++) { carry[i] += g[2 * i]; carry[n + i] += g[2 * i + 1]; }
    }
    if (g_hidden) {
        #pragma omp simd
        for (idx i = 0; i < n; i++) carry[n + i] += g_hidden[i];
    }
}

/* grad_w: (a_f, a_c, a_o, p_f, p_o); carry: planar (c, h), the outputs' gradients added;
   strides as gru_adjoint_step's */
static void lstm_adjoint_step(idx m, idx gs, idx n, C a, C p, C prev, C gate, R gp, R grad_w,
                              R grad_b, R carry) {
    #pragma omp simd
    for (idx i = 0; i < m; i++) {
        real c = prev[2 * i], h = prev[2 * i + 1];
        real f = gate[i], cand = gate[n + i], o = gate[2 * n + i], tanh_c = gate[3 * n + i];
        real c_next = cand + f * (c - cand);
        real lam_c = carry[i], lam_h = carry[n + i];
        real d_f = f * (1 - f) * (c - cand);     /* dc'/d pre_f */
        real d_c = (1 - f) * (1 - cand * cand);  /* dc'/d pre_c */
        real d_o = o * (1 - o) * tanh_c;         /* dh'/d pre_o */
        real grad_c_next = lam_c + lam_h * (o * (1 - tanh_c * tanh_c) + d_o * p[n + i]);
        real g_f = grad_c_next * d_f, g_c = grad_c_next * d_c, g_o = lam_h * d_o;
        gp[i] = g_f; gp[gs + i] = g_c; gp[2 * gs + i] = g_o;
        grad_w[i] += g_f * h; grad_w[n + i] += g_c * h; grad_w[2 * n + i] += g_o * h;
        grad_w[3 * n + i] += g_f * c; grad_w[4 * n + i] += g_o * c_next;
        grad_b[i] += g_f; grad_b[n + i] += g_c; grad_b[2 * n + i] += g_o;
        carry[i] = grad_c_next * f + g_f * p[i];
        carry[n + i] = g_f * a[i] + g_c * a[n + i] + g_o * a[2 * n + i];
    }
}

void lstm_backward(idx threads, idx rows, idx steps, idx n, idx heads, C a, C p, C h0, C tape,
                   C states, C grad_states, C grad_hidden, R grad_pre, R grad_h0, R grad_ws,
                   R grad_bs, R carries) {
    idx m = n / heads, head_stride = rows * steps * 3 * m;
    #pragma omp parallel for num_threads(threads) schedule(static)
    for (idx b = 0; b < rows; b++) {
        real *grad_w = grad_ws + THREAD * 5 * n, *grad_b = grad_bs + THREAD * 3 * n;
        real *carry = carries + THREAD * 2 * n;
        for (idx i = 0; i < 2 * n; i++) carry[i] = 0;
        for (idx t = steps - 1; t >= 0; t--) {
            idx at = b * steps + t;
            add_output_gradients(n, grad_states ? grad_states + at * 2 * n : 0,
                                 grad_hidden ? grad_hidden + at * n : 0, carry);
            C prev = t ? states + (at - 1) * 2 * n : h0 + b * 2 * n;
            for (idx k = 0; k < heads; k++) {
                idx o = k * m;
                lstm_adjoint_step(m, m, n, a + o, p + o, prev + 2 * o, tape + at * 4 * n + o,
                                  grad_pre + k * head_stride + at * 3 * m, grad_w + o,
                                  grad_b + o, carry + o);
            }
        }
        for (idx i = 0; i < n; i++) {
            grad_h0[b * 2 * n + 2 * i] = carry[i];
            grad_h0[b * 2 * n + 2 * i + 1] = carry[n + i];
        }
    }
}
"""

_LIBRARY = _cbuild.CLibrary("step_loops", _SOURCE,
                            "ParaGRU/ParaLSTM train through the PyTorch loop instead (slower)")


def compiled_loop(kind: str, x: torch.Tensor, recurrent_weights):
    """A :class:`CompiledLoop` of ``kind`` for ``x`` (a float32/float64 CPU tensor) if the C
    code builds, else None."""
    library = _LIBRARY.get(x)
    return None if library is None else CompiledLoop(library, kind, recurrent_weights)


class CompiledLoop:
    """What :class:`~pararnn.solver.newton.LoopSolve` runs for a ParaGRU (``kind="gru"``)
    or ParaLSTM (``"lstm"``) cell: :meth:`forward` the loop, :meth:`backward` its adjoint.
    ``recurrent_weights(parameters)`` maps the cell's parameters by name to its clipped
    recurrent weights (``(a,)`` or ``(a, peephole)``): the backward differentiates it to
    carry the clipped weights' gradients to the parameters."""

    def __init__(self, library, kind: str, recurrent_weights) -> None:
        self.library, self.lstm = library, kind == "lstm"
        self.recurrent_weights = recurrent_weights

    def forward(self, parameters: dict, x: torch.Tensor, h0: torch.Tensor, hidden: bool = False,
                heads: int = 1):
        """``(states, tape, h)`` over ``x`` from ``h0`` ``(B, S)``: ``x`` the gate-major
        pre-activations ``(B, T, 3N)``, or with ``heads`` > 1 the head-major ones ``(H, B,
        T, 3N/H)`` (:class:`pararnn.layout.HeadMajor`'s data, read in place). The tape holds
        the gates (GRU ``(B, T, 3, N)``, LSTM ``(B, T, 4, N)``) for :meth:`backward`; ``h``
        is the LSTM's hidden part of the states ``(B, T, N)`` as a tensor of its own when
        ``hidden`` (what a layer outputs: no strided copy of the interleaved states), else
        None (and always None for the GRU, whose states are its hidden states)."""
        with torch.no_grad():
            weights = [w.contiguous() for w in self.recurrent_weights(parameters)]
            bias = parameters.get("bias")
        batch, steps, n = _pre_shape(x, heads)
        x, h0 = x.contiguous(), h0.contiguous()
        bias = x.new_zeros(3, n) if bias is None else bias.detach().contiguous()
        tape = x.new_empty(batch, steps, 4 if self.lstm else 3, n)
        states = x.new_empty(batch, steps, 2 * n if self.lstm else n)
        threads = _cbuild.threads(batch)
        h = x.new_empty(batch, steps, n) if hidden and self.lstm else None
        if self.lstm:
            _cbuild.call(self.library.lstm_forward, threads, batch, steps, n, heads, x, *weights,
                         bias, h0, tape, states, h, x.new_empty(threads, 2 * n))
        else:
            _cbuild.call(self.library.gru_forward, threads, batch, steps, n, heads, x, *weights,
                         bias, h0, tape, states)
        return states, tape, h

    def backward(self, parameters: dict, tape, states, h0, grad_states, grad_hidden=None,
                 heads: int = 1):
        """``(grad_x, grad_h0, grads)`` of the loop :meth:`forward` ran (with these
        ``heads``: ``grad_x`` in the layout of its ``x``), from the gradients of its states
        and (LSTM) of its ``h``, either None where zero (the GRU's ``grad_states`` always
        given): ``grads`` by parameter name, for the parameters that require grad."""
        batch, steps, _, n = tape.shape
        with torch.no_grad():
            weights = [w.contiguous() for w in self.recurrent_weights(parameters)]
        h0 = h0.contiguous()
        grad_states, grad_hidden = (None if g is None else g.contiguous()
                                    for g in (grad_states, grad_hidden))
        grad_x = (tape.new_empty(batch, steps, 3 * n) if heads == 1
                  else tape.new_empty(heads, batch, steps, 3 * n // heads))
        grad_h0 = torch.empty_like(h0)
        threads = _cbuild.threads(batch)
        # per thread: the gradients of the clipped weights stacked (a, then the peepholes) and
        # of the bias, and the carry
        grad_w = tape.new_zeros(threads, 5 if self.lstm else 3, n)
        grad_b = tape.new_zeros(threads, 3, n)
        carry = tape.new_empty(threads, 2 * n if self.lstm else n)
        gradients = (grad_states, grad_hidden) if self.lstm else (grad_states,)
        _cbuild.call(self.library.lstm_backward if self.lstm else self.library.gru_backward,
                     threads, batch, steps, n, heads, *weights, h0, tape, states, *gradients,
                     grad_x, grad_h0, grad_w, grad_b, carry)
        grad_w, grad_b = grad_w.sum(0), grad_b.sum(0)
        grads = {}
        bias = parameters.get("bias")
        if bias is not None and bias.requires_grad:
            grads["bias"] = grad_b
        wanted = [(name, p) for name, p in parameters.items() if name != "bias" and p.requires_grad]
        if wanted:  # through the clipping: autograd of recurrent_weights
            with torch.enable_grad():
                clipped = self.recurrent_weights(parameters)
            rows = [w.shape[0] for w in clipped]
            # a frozen vector (ParaLSTM's a or peephole) gives an output autograd cannot use
            trained = [(w, g) for w, g in zip(clipped, grad_w.split(rows)) if w.requires_grad]
            found = torch.autograd.grad([w for w, _ in trained], [p for _, p in wanted],
                                        [g for _, g in trained], allow_unused=True)
            grads.update((name, g) for (name, _), g in zip(wanted, found))
        return grad_x, grad_h0, grads


def _pre_shape(x: torch.Tensor, heads: int) -> tuple[int, int, int]:
    """``(B, T, N)`` of pre-activations ``x``: gate-major ``(B, T, 3N)`` for one head,
    head-major ``(H, B, T, 3N/H)`` for ``heads`` H > 1."""
    if heads == 1:
        batch, steps, width = x.shape
        return batch, steps, width // 3
    if x.dim() != 4 or x.shape[0] != heads or x.shape[3] % 3:
        raise ValueError(f"head-major pre-activations of {heads} heads must be (H, B, T, 3N/H), "
                         f"got shape {tuple(x.shape)}")
    _, batch, steps, width = x.shape
    return batch, steps, heads * width // 3
