"""lm-evaluation-harness adapter: the ``pararnn`` model type (``pip install pararnn[eval]``).

lm-eval (0.4.13) finds models only in its own registry, so it must run in a process that
imported this module first. This module's ``__main__`` is lm-eval's command line with the
``pararnn`` model registered::

    python -m pararnn.lm_eval_model --model pararnn \\
        --model_args checkpoint=runs/tiny,dtype=auto --tasks lambada_openai --device cuda

(every ``lm_eval`` option works the same; ``--include_path DIR`` adds local task YAMLs).
From Python, ``import pararnn.lm_eval_model`` and pass ``model="pararnn"`` to
``lm_eval.simple_evaluate``.

Scoring runs the model's parallel forward (the Newton solve for ParaRNN) over
``context + continuation`` and sums the continuation's token log-probabilities;
``generate_until`` decodes through :class:`pararnn.generation.Generator`.
"""

from __future__ import annotations

import lm_eval.models  # noqa: F401  (lm-eval loads its own models only into an empty registry)
import torch
import torch.nn.functional as F
from lm_eval.api.model import TemplateLM
from lm_eval.api.registry import register_model
from lm_eval.utils import get_rolling_token_windows, make_disjoint_window

from .generation import Generator, SamplingConfig, decode_dtype
from .train.checkpoint import load_model, open_checkpoint
from .train.distributed import pick_device


@register_model("pararnn")
class PararnnLM(TemplateLM):
    """A pararnn checkpoint for lm-eval.

    ``--model_args``: ``checkpoint`` (run or checkpoint folder, required), ``dtype``
    (auto | float32 | bfloat16; auto = bf16 on CUDA), ``max_length`` (tokens of context
    a request keeps, default the training ``seq_len``). lm-eval's ``--device`` and
    ``--batch_size`` (an integer) apply.
    """

    def __init__(self, checkpoint: str, device: str | None = None, dtype: str = "auto",
                 batch_size: int | str | None = 1, max_batch_size: int | None = None,
                 max_length: int | None = None, **kwargs) -> None:
        super().__init__()
        if kwargs:
            raise TypeError(f"unknown pararnn model_args: {', '.join(sorted(kwargs))}")
        self._device = pick_device(device or "auto")
        ckpt = open_checkpoint(checkpoint)
        self.model = load_model(ckpt, self._device)
        self.tokenizer = ckpt.tokenizer()
        self.dtype = decode_dtype(self._device, dtype)
        self.generator = Generator(self.model, dtype=self.dtype)
        try:
            self.batch_size = int(batch_size or 1)
        except ValueError:
            raise ValueError(f"batch_size must be an integer, got {batch_size!r}") from None
        trained = ckpt.meta.get("train_config", {}).get("seq_len")
        self.max_length = int(max_length or trained or 2048)
        if self.batch_size < 1 or self.max_length < 2:
            raise ValueError(f"batch_size must be >= 1 and max_length >= 2, got {self.batch_size}, {self.max_length}")

    # -- tokenizer ----------------------------------------------------------------------

    @property
    def eot_token_id(self) -> int:
        return self.tokenizer.eos_id

    def tok_encode(self, string: str, add_special_tokens: bool | None = None, **kwargs) -> list[int]:
        return self.tokenizer.encode(string)

    def tok_decode(self, tokens) -> str:
        return self.tokenizer.decode(tokens)

    # -- scoring ------------------------------------------------------------------------

    def _autocast(self):
        return torch.autocast(self._device.type, dtype=self.dtype, enabled=self.dtype is not None)

    @torch.no_grad()
    def _score_batch(self, pairs: list[tuple[list[int], list[int]]]) -> list[tuple[float, bool]]:
        # input = (context + continuation)[:-1], cut to the last max_length tokens; rows are
        # right-padded, which a causal model never sees from the earlier positions
        inputs = [(c + x)[-(self.max_length + 1):][:-1] for c, x in pairs]
        width = max(len(i) for i in inputs)
        batch = torch.full((len(inputs), width), self.eot_token_id, dtype=torch.long)
        for row, tokens in enumerate(inputs):
            batch[row, :len(tokens)] = torch.tensor(tokens)
        with self._autocast():
            logprobs = F.log_softmax(self.model(batch.to(self._device)).float(), dim=-1).cpu()
        results = []
        for row, ((_, continuation), tokens) in enumerate(zip(pairs, inputs)):
            n = len(continuation)
            picked = logprobs[row, len(tokens) - n:len(tokens)]
            target = torch.tensor(continuation)
            total = picked.gather(-1, target[:, None]).sum().item()
            results.append((total, bool((picked.argmax(-1) == target).all())))
        return results

    def _loglikelihood_tokens(self, requests, disable_tqdm: bool = False, **kwargs):
        pairs = [(context, continuation) for _, context, continuation in requests]
        longest = max((len(continuation) for _, continuation in pairs), default=0)
        if longest > self.max_length:
            raise ValueError(
                f"a continuation of {longest} tokens does not fit in one window of "
                f"max_length={self.max_length} tokens; pass a larger max_length in --model_args")
        # longest first, so that rows of a batch have similar lengths (less padding)
        order = sorted(range(len(pairs)), key=lambda i: -len(pairs[i][0]) - len(pairs[i][1]))
        results = [None] * len(pairs)
        for start in range(0, len(order), self.batch_size):
            chunk = order[start:start + self.batch_size]
            for i, result in zip(chunk, self._score_batch([pairs[i] for i in chunk])):
                results[i] = result
                self.cache_hook.add_partial("loglikelihood", requests[i][0], result)
        return results

    def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
        results = []
        for request in requests:
            (text,) = request.args
            windows = [make_disjoint_window(w) for w in get_rolling_token_windows(
                self.tok_encode(text), prefix_token=self.eot_token_id,
                max_seq_len=self.max_length, context_len=1)]
            scores = self._loglikelihood_tokens([(None, c, x) for c, x in windows])
            total = sum(s for s, _ in scores)
            results.append(total)
            self.cache_hook.add_partial("loglikelihood_rolling", (text,), total)
        return results

    # -- generation ---------------------------------------------------------------------

    def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
        results = []
        for request in requests:
            context, gen_kwargs = request.args
            kwargs = dict(gen_kwargs)
            until = kwargs.pop("until", None) or []
            # empty strings would match every text (the end-of-text token decodes to "": it
            # ends the generation as a token)
            until = [stop for stop in ([until] if isinstance(until, str) else until) if stop]
            max_new, sampling = _generation_options(kwargs)
            if max_new >= self.max_length:
                raise ValueError(
                    f"max_gen_toks={max_new} keeps no context within max_length="
                    f"{self.max_length} tokens; pass a larger max_length in --model_args (or "
                    f"a smaller max_gen_toks in the task's generation_kwargs)")
            ids = self.tok_encode(context)[-(self.max_length - max_new):] or [self.eot_token_id]
            prompt = torch.tensor([ids], device=self._device)
            out, text = [], ""
            # one buffer size for every request: a CUDA graph is captured once, not per prompt length
            capacity = max(self.max_length, len(ids) + max_new)
            for token in self.generator.stream(prompt, max_new, sampling, stop_tokens=[self.eot_token_id],
                                               max_len=capacity):
                if int(token) == self.eot_token_id:
                    break
                out.append(int(token))
                text = self.tok_decode(out)
                if any(stop in text for stop in until):
                    break
            for stop in until:
                text = text.split(stop)[0]
            results.append(text)
            self.cache_hook.add_partial("generate_until", (context, gen_kwargs), text)
        return results


# generation_kwargs that change nothing at these values (tasks often spell them out)
_NEUTRAL_OPTIONS = {"num_beams": 1, "repetition_penalty": 1.0, "num_return_sequences": 1}


def _generation_options(kwargs: dict) -> tuple[int, SamplingConfig]:
    """``(max new tokens, sampling)`` of a task's generation_kwargs (``until`` removed), read
    as lm-eval's Hugging Face backend reads them: ``max_gen_toks`` (or ``max_new_tokens`` /
    ``max_tokens``; default 256); ``do_sample=False`` is greedy whatever the temperature,
    ``do_sample=True`` samples at ``temperature`` (default 1.0), and without ``do_sample`` a
    positive temperature samples. Other options raise a ValueError naming them (beam
    search, penalties: this model's generator does not have them)."""
    kwargs = dict(kwargs)
    lengths = [kwargs.pop(key) for key in ("max_gen_toks", "max_new_tokens", "max_tokens") if key in kwargs]
    max_new = int(lengths[0]) if lengths else 256
    do_sample = kwargs.pop("do_sample", None)
    temperature = kwargs.pop("temperature", None)
    if do_sample is False:
        temperature = 0.0
    elif temperature is None:
        temperature = 1.0 if do_sample else 0.0
    temperature = float(temperature)
    top_k, top_p = kwargs.pop("top_k", None), kwargs.pop("top_p", None)
    unsupported = sorted(key for key, value in kwargs.items() if _NEUTRAL_OPTIONS.get(key, object()) != value)
    if unsupported:
        raise ValueError(f"generation_kwargs {', '.join(unsupported)} are not supported by the pararnn "
                         f"model (it decodes greedily or samples with temperature, top_k, top_p)")
    return max_new, SamplingConfig(temperature=temperature, top_k=top_k, top_p=top_p)


def main() -> None:
    """lm-eval's command line, with the ``pararnn`` model registered (module doc)."""
    from lm_eval.__main__ import cli_evaluate
    cli_evaluate()


if __name__ == "__main__":
    main()
