"""Results kept per unchanged tensor, for host work that every layer of a model repeats on
the same input (checking ``cu_seqlens``, packing reset bits): one rule for when a result
may be kept and reused, used by the solver's input checks and the fused kernels."""

import weakref

import torch


def _capturing(tensor: torch.Tensor) -> bool:
    return tensor.is_cuda and torch.cuda.is_current_stream_capturing()


class LastTensorCache:
    """Per slot, the result built from the last tensor seen there, returned again while the
    same tensor object comes back unchanged (its version counter: in-place writes bump it)
    with the same ``key``. Writes that bypass the counter (through ``.data``, or a numpy
    array sharing a CPU tensor's memory, as a loader refilling one host buffer does) are
    caught for CPU tensors, whose values are compared with a copy kept of them (these are
    small index or mask tensors; on CUDA that comparison would wait for the GPU).

    Nothing is kept for a trace's fake or functional tensors, while ``torch.compile``
    traces (the trace must build the result), for inference tensors (no version counter)
    or while a CUDA graph is captured (memory made then belongs to the graph). A result
    reused during a capture is read by the graph at every replay, so it is kept for good
    even after its slot moves on to another tensor."""

    def __init__(self):
        self._slots: dict = {}
        self._captured: list = []

    def get(self, slot, tensor: torch.Tensor, key, build):
        if (type(tensor) is not torch.Tensor or torch.compiler.is_compiling()
                or tensor.is_inference()):
            return build()
        capturing = _capturing(tensor)
        entry = self._slots.get(slot)
        if (entry is not None and entry[0]() is tensor and entry[1] == tensor._version
                and entry[2] == key and (entry[4] is None or torch.equal(entry[4], tensor))):
            if capturing and not any(value is entry[3] for value in self._captured):
                self._captured.append(entry[3])
            return entry[3]
        value = build()
        if not capturing:
            values = tensor.detach().clone() if tensor.device.type == "cpu" else None
            self._slots[slot] = (weakref.ref(tensor), tensor._version, key, value, values)
        return value
