"""The one generation path of every model: parallel prefill, then recurrent decode steps.

    gen = Generator(model)                    # CUDA graph on a GPU, eager on a CPU
    tokens = gen.generate(prompt_ids, 100, SamplingConfig(temperature=0))  # (B, <=100)

:meth:`Generator.prefill` runs the prompt through the model in one parallel call (the
Newton solve for ParaGRU/ParaLSTM, chunked SSD for Mamba2, causal attention for the
Transformer) with dynamic caches, then copies the per-layer states into
:class:`~pararnn.models.lm.StaticCache` buffers allocated once per
``(batch, max_len)``. Each decode step (:meth:`Generator.step`) reads one token per row
from a fixed input buffer and updates those buffers in place, so on CUDA it is captured
once in a CUDA graph and replayed per token: a step costs one graph launch instead of a
few hundred kernel launches. On CUDA the step is also compiled with ``torch.compile``
(inductor fuses the norms, casts and elementwise pieces between the matrix products,
which a replayed graph otherwise runs as dozens of tiny kernels per layer) before it is
captured. The CLI (``generate``, ``bench-decode``),
:meth:`~pararnn.models.LanguageModel.generate` and the lm-eval adapter decode through
this class.
"""

from __future__ import annotations

import contextlib
import copy
import math
import time
import types
import warnings
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from torch import nn

from .layers.projection import MultiHeadProjection
from .models.lm import cache_tensors, sample


@dataclass(frozen=True)
class SamplingConfig:
    """How a token is drawn from the logits: ``temperature=0`` is greedy; ``top_k`` keeps
    the ``k`` most likely tokens, ``top_p`` the smallest set holding that probability."""

    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.temperature, (int, float)) or not 0 <= self.temperature < math.inf:
            raise ValueError(f"temperature must be a finite number >= 0, got {self.temperature!r}")
        if self.top_k is not None and (not isinstance(self.top_k, int) or self.top_k < 1):
            raise ValueError(f"top_k must be a positive integer or None, got {self.top_k!r}")
        if self.top_p is not None and not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] or None, got {self.top_p!r}")

    def draw(self, logits: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return sample(logits, temperature=self.temperature, top_k=self.top_k, top_p=self.top_p,
                      generator=generator)


GREEDY = SamplingConfig(temperature=0)


def autocast_copy(model: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``model`` with the weights of its matrix products stored in ``dtype``, every other
    parameter shared with ``model``. Under ``torch.autocast(dtype)`` it computes exactly
    what ``model`` does (autocast rounds those weights to ``dtype`` before each product
    anyway) without re-reading and casting the float32 weights at every decode step."""
    shared = {id(p): p for p in model.parameters()}
    decode = copy.deepcopy(model, shared)
    for module in decode.modules():
        if isinstance(module, (nn.Linear, MultiHeadProjection)):
            module.weight = nn.Parameter(module.weight.detach().to(dtype), requires_grad=False)
    return decode


def _own_code(method):
    """``method`` (bound) running a copy of its code object. ``torch.compile`` keeps compiled
    graphs, and counts recompilations against its limit (8), per code object: with a copy
    each Generator compiles for its own model and shapes (a few graphs) instead of all
    Generators of a process sharing, and exhausting, one limit."""
    func = method.__func__
    own = types.FunctionType(func.__code__.replace(), func.__globals__, func.__name__,
                             func.__defaults__, func.__closure__)
    return types.MethodType(own, method.__self__)


class Generator:
    """Decodes with ``model`` (a :class:`~pararnn.models.LanguageModel` in eval mode).

    Args:
        dtype: activation dtype of the decode buffers; a dtype below the parameters'
            (bf16 with float32 weights) runs every call under ``torch.autocast``, as
            training does, and decode steps use :func:`autocast_copy` of the model (made
            once, here: build a new Generator after changing the weights). Default: the
            parameters' dtype (no autocast).
        cuda_graph: capture the decode step in a CUDA graph (default: when the model is on
            a CUDA device). Eager and graph steps run the same kernels on the same buffers.
        compile: ``torch.compile`` the decode step (``fullgraph=True``; compiled at the
            first step of each new buffer shape, then captured in the graph): ``True``
            (inductor), a ``torch.compile`` backend (name or callable), or ``False``.
            Default: inductor when the model is on a CUDA device, off elsewhere. If
            compiling fails, one warning says why and decoding continues with the eager
            step (:attr:`compiled` is then None). Inductor fuses operations, so its
            logits match the eager step's to rounding, not bit for bit.
    """

    def __init__(self, model, *, dtype: torch.dtype | None = None, cuda_graph: bool | None = None,
                 compile: bool | str | Callable | None = None) -> None:
        param = next(model.parameters())
        self.model, self.device = model, param.device
        self.dtype = param.dtype if dtype is None else dtype
        if not isinstance(self.dtype, torch.dtype) or not self.dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
        self.autocast = self.dtype != param.dtype
        self.decode_model = autocast_copy(model, self.dtype) if self.autocast else model
        use_graph = self.device.type == "cuda" if cuda_graph is None else cuda_graph
        if use_graph and self.device.type != "cuda":
            raise ValueError(f"cuda_graph=True needs the model on a CUDA device, it is on {self.device}")
        self.cuda_graph = use_graph
        if compile is None:
            compile = self.device.type == "cuda"
        #: the backend the decode step is compiled with, None when it runs eagerly
        self.compiled = "inductor" if compile is True else (compile or None)
        self._compiled_step = None
        if self.compiled:
            self._compiled_step = torch.compile(_own_code(self._eager_step), backend=self.compiled,
                                                fullgraph=True)
        self._shape: tuple[int, int] | None = None  # (batch, max_len) of the buffers
        self._caches = None
        self._token = self._logits = self._graph = None

    # -- buffers and the captured step ---------------------------------------------------

    def _context(self):
        if not self.autocast:
            return contextlib.nullcontext()
        # no autocast weight cache: inside a CUDA graph the casts must be replayed kernels
        return torch.autocast(self.device.type, dtype=self.dtype, cache_enabled=False)

    def reserve(self, batch: int, max_len: int) -> None:
        """Allocate the decode buffers for ``batch`` rows of up to ``max_len`` tokens
        (prompt included) and capture (or, compiled without a graph, compile) the step; a
        no-op when they already exist. Callers timing decoding call it first."""
        if self._shape == (batch, max_len):
            return
        self.release()  # the old buffers go before the new ones are allocated
        self._caches = self.decode_model.static_caches(batch, max_len, self.device, self.dtype)
        self._token = torch.zeros(batch, dtype=torch.long, device=self.device)
        self._shape = (batch, max_len)
        if self.cuda_graph:
            self._capture()
        elif self._compiled_step is not None:  # compile for this shape now, not in the first step
            self._run_step()
            for buffer in cache_tensors(self._caches):  # the step wrote into the state
                buffer.zero_()

    def release(self) -> None:
        """Free the decode buffers and the captured graph (the next prefill makes new ones)."""
        self._graph = self._caches = self._token = self._logits = self._shape = None
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    def _eager_step(self) -> torch.Tensor:
        with torch.no_grad(), self._context():
            return self.decode_model(self._token[:, None], caches=self._caches)[:, -1]

    def _run_step(self) -> torch.Tensor:
        """One decode step on the buffers: compiled when asked and possible, else eager."""
        if self._compiled_step is not None:
            try:
                return self._compiled_step()
            except torch.cuda.OutOfMemoryError:
                raise  # buffers that do not fit: the eager step would not fit either
            except Exception as err:  # noqa: BLE001 (any compiler failure: the eager step is the answer)
                # the compiler fails while tracing or building, before the step runs, so
                # the buffers are as they were; the first paragraph of dynamo's message
                # names the error that says why
                reason = " ".join(str(err).strip().split("\n\n")[0].split())[:300]
                reason = f"{type(err).__name__}: {reason}"
                warnings.warn(f"torch.compile of the decode step failed ({reason}); decoding with "
                              f"the eager step instead", RuntimeWarning, stacklevel=2)
                self._compiled_step = self.compiled = None
        return self._eager_step()

    def _capture(self) -> None:
        with torch.cuda.device(self.device):  # the graph records on the current device
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):  # warm-up outside the graph (Triton compiles, cuBLAS handles)
                for _ in range(2):
                    self._run_step()
            torch.cuda.current_stream().wait_stream(side)
            self._graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self._graph):
                self._logits = self._run_step()
        for buffer in cache_tensors(self._caches):  # the warm-up steps wrote into the state
            buffer.zero_()

    # -- decoding ------------------------------------------------------------------------

    @torch.no_grad()
    def prefill(self, idx: torch.Tensor, max_len: int) -> torch.Tensor:
        """Run prompt ``idx`` ``(B, T)`` in parallel; leave its state in the decode buffers
        (reserved for ``max_len`` tokens) and return the next-token logits ``(B, V)``."""
        if not isinstance(idx, torch.Tensor) or idx.dim() != 2 or idx.shape[1] < 1:
            raise ValueError(f"idx must be a (batch, length >= 1) tensor of token ids, got "
                             f"{tuple(idx.shape) if isinstance(idx, torch.Tensor) else type(idx).__name__}")
        if max_len <= idx.shape[1]:
            raise ValueError(f"max_len must exceed the prompt length {idx.shape[1]}, got {max_len}")
        self.reserve(idx.shape[0], max_len)
        dynamic = self.model.new_caches()
        with self._context():
            logits = self.model(idx.to(self.device), caches=dynamic, last_only=True)[:, -1]
        self.model.load_caches(self._caches, dynamic)
        return logits

    @torch.no_grad()
    def step(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed one token per row ``(B,)`` and return the next logits ``(B, V)``. The result
        is a buffer that the next step overwrites: clone it to keep it."""
        self._token.copy_(tokens)
        if self._graph is not None:
            self._graph.replay()
            return self._logits
        return self._run_step()

    def parameter_bytes(self) -> int:
        """Bytes of the parameters a decode step reads (the model's tied embedding is read
        as the output head)."""
        return sum(p.numel() * p.element_size() for p in self.decode_model.parameters())

    def state_bytes(self) -> int:
        """Bytes of the decode buffers (states, conv windows, KV cache)."""
        return sum(t.numel() * t.element_size() for t in cache_tensors(self._caches or []))

    def buffer_bytes(self, batch: int, max_len: int) -> int:
        """Bytes :meth:`reserve` would allocate for these buffers (nothing is allocated)."""
        meta = self.decode_model.static_caches(batch, max_len, torch.device("meta"), self.dtype)
        return sum(t.numel() * t.element_size() for t in cache_tensors(meta))

    @torch.no_grad()
    def stream(self, idx: torch.Tensor, max_new_tokens: int, sampling: SamplingConfig = GREEDY, *,
               generator: torch.Generator | None = None, stop_tokens=(),
               max_len: int | None = None) -> Iterator[torch.Tensor]:
        """Yield up to ``max_new_tokens`` tokens ``(B,)`` after prompt ``idx`` ``(B, T)``.

        A row that has drawn one of ``stop_tokens`` repeats that token; the stream ends when
        every row has (this check synchronises with the device once per token, so it is
        only made when ``stop_tokens`` is given). ``max_len`` sizes the buffers (default
        ``T + max_new_tokens``): pass a fixed one to reuse one captured graph across calls.
        """
        if not isinstance(max_new_tokens, int) or max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
        max_len = idx.shape[1] + max_new_tokens if max_len is None else max_len
        if max_len < idx.shape[1] + max_new_tokens:
            raise ValueError(f"max_len={max_len} is shorter than the prompt ({idx.shape[1]}) "
                             f"plus max_new_tokens ({max_new_tokens})")
        stops = torch.tensor(sorted(set(stop_tokens)), dtype=torch.long, device=self.device)
        finished = None
        logits = self.prefill(idx, max_len)
        for i in range(max_new_tokens):
            token = sampling.draw(logits, generator)
            if len(stops):
                if finished is not None:
                    token = torch.where(finished, previous, token)
                    finished = finished | torch.isin(token, stops)
                else:
                    finished = torch.isin(token, stops)
                previous = token
            yield token
            if i + 1 == max_new_tokens or (finished is not None and bool(finished.all())):
                return
            logits = self.step(token)

    def generate(self, idx: torch.Tensor, max_new_tokens: int, sampling: SamplingConfig = GREEDY,
                 **kwargs) -> torch.Tensor:
        """The tokens of :meth:`stream` as one ``(B, n)`` tensor, ``n <= max_new_tokens``."""
        return torch.stack(list(self.stream(idx, max_new_tokens, sampling, **kwargs)), dim=1)


def decode_dtype(device: torch.device, dtype: str) -> torch.dtype | None:
    """The CLI's ``--dtype`` as a :class:`Generator` dtype: ``auto`` is bf16 on CUDA (as
    training's autocast) and the parameters' dtype elsewhere."""
    if dtype == "bfloat16" or (dtype == "auto" and device.type == "cuda"):
        return torch.bfloat16
    if dtype in ("auto", "float32"):
        return None
    raise ValueError(f"dtype must be auto, float32 or bfloat16, got {dtype!r}")


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (timings need it; a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.no_grad()
def benchmark_decode(generator: Generator, batch: int, context: int, new_tokens: int, *,
                     bandwidth: float, prefill: str = "synthetic", warmup: int = 3) -> dict:
    """Greedy decode speed of ``batch`` rows after a ``context``-token state.

    ``prefill="real"`` runs a random prompt through :meth:`Generator.prefill`;
    ``"synthetic"`` fills the decode buffers with random values instead (a KV cache then
    holds ``context`` positions): a step costs the same whatever the values, and a
    sweep to long contexts at large batches needs no prefill of ``batch x context``
    tokens. ``bound_tok_s`` is the memory-bandwidth bound: every step reads the
    parameters and the whole decode state once, ``bandwidth`` bytes/s at most.
    """
    device = generator.device
    max_len = context + warmup + new_tokens
    vocab = generator.model.cfg.vocab_size
    if device.type == "cuda":  # skip, rather than fail inside a graph capture, what cannot fit
        needed, free = generator.buffer_bytes(batch, max_len), torch.cuda.mem_get_info(device)[0]
        if needed > 0.9 * free:
            return {"batch": batch, "context": context,
                    "error": f"decode buffers of {needed / 2**30:.1f} GiB do not fit in {free / 2**30:.1f} GiB free"}
    synchronize(device)
    start = time.perf_counter()
    if prefill == "real":
        prompt = torch.randint(0, vocab, (batch, context), device=device)
        logits = generator.prefill(prompt, max_len)
    elif prefill == "synthetic":
        generator.reserve(batch, max_len)
        for buffer in cache_tensors(generator._caches):
            if buffer.dtype == torch.long:  # the only integer buffers are KV positions
                buffer.fill_(context)
            else:
                buffer.normal_(0.0, 0.5)
        logits = torch.randn(batch, vocab, device=device)
    else:
        raise ValueError(f"prefill must be 'real' or 'synthetic', got {prefill!r}")
    synchronize(device)
    prefill_s = time.perf_counter() - start
    token = logits.argmax(-1)
    for _ in range(warmup):
        token = generator.step(token).argmax(-1)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    synchronize(device)
    start = time.perf_counter()
    for _ in range(new_tokens):
        token = generator.step(token).argmax(-1)
    synchronize(device)
    seconds = time.perf_counter() - start
    step_bytes = generator.parameter_bytes() + generator.state_bytes()
    return {"batch": batch, "context": context, "new_tokens": new_tokens, "prefill": prefill,
            "prefill_ms": prefill_s * 1e3 if prefill == "real" else None,
            "decode_tok_s": batch * new_tokens / seconds,
            "step_ms": seconds / new_tokens * 1e3,
            "peak_mib": torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda" else None,
            "state_mib": generator.state_bytes() / 2**20,
            "bytes_per_step": step_bytes,
            "bound_tok_s": batch * bandwidth / step_bytes,
            "dtype": str(generator.dtype).removeprefix("torch."), "cuda_graph": generator.cuda_graph,
            "compiled": generator.compiled is not None}
