"""Peak activation memory of a real architecture, measured on the meta device.

The model is built on ``torch.device("meta")`` (no memory, no weights) and one training step or
one scoring batch is run through it while a dispatch mode counts the bytes of every tensor the
operators create and frees them when the tensor dies. Weights and buffers are registered first
and never counted. The peak is what the step holds at once: saved activations, the transients
of the widest operator, gradients, and under gradient checkpointing the recomputed layer.

Two things a meta run cannot see are modelled explicitly:
- fused attention: ``scaled_dot_product_attention`` runs on meta as its math fallback, which
  materialises batch x heads x length x length scores. On GPU (and on this CPU) SDPA runs a
  fused kernel that keeps only q, k, v, the output and a log-sum-exp per row, so the trace
  replaces it with exactly that (``_FusedAttention``). Architectures that run eager attention
  (Gemma-2 with soft-capping) are traced as they are: their score matrices are real.
- ``.item()``: a meta tensor has no value; data-dependent checks in transformers (is the mask
  all ones, is the batch packed) get "yes" / 0, the unpadded case the plan sizes for.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class _LiveBytes(TorchDispatchMode):
    """Live and peak bytes of the storages that operators create under it."""

    def __init__(self, registered: list[torch.Tensor]) -> None:
        super().__init__()
        self.seen = {t.untyped_storage()._cdata for t in registered}  # weights and buffers: never counted
        self.live = 0
        self.peak = 0

    def _freed(self, size: int, key: int) -> None:
        self.live -= size
        self.seen.discard(key)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            return True if args[0].dtype == torch.bool else 0
        out = func(*args, **(kwargs or {}))
        for tensor in out if isinstance(out, (tuple, list)) else (out,):
            if not isinstance(tensor, torch.Tensor) or tensor.device.type != "meta":
                continue
            storage = tensor.untyped_storage()
            key = storage._cdata  # views and in-place results share their input's storage: counted once
            if key in self.seen:
                continue
            self.seen.add(key)
            self.live += storage.nbytes()
            self.peak = max(self.peak, self.live)
            weakref.finalize(tensor, self._freed, storage.nbytes(), key)
        return out


class _FusedAttention(torch.autograd.Function):
    """What a fused attention kernel keeps: its output, and for backward q, k, v and a log-sum-exp per row."""

    @staticmethod
    def forward(ctx, query, key, value):
        out = torch.empty_like(query)
        ctx.save_for_backward(query, key, value, out, query.new_empty(query.shape[:-1], dtype=torch.float32))
        return out

    @staticmethod
    def backward(ctx, grad):
        query, key, value, _, _ = ctx.saved_tensors
        return torch.empty_like(query), torch.empty_like(key), torch.empty_like(value)


@contextlib.contextmanager
def _fused_attention() -> Iterator[None]:
    """SDPA as its fused kernel, for the trace only (autograd runs meta backward on its own thread,
    so a thread-local mode would miss the recompute of a checkpointed layer: the function is swapped)."""
    functional = torch.nn.functional
    original = functional.scaled_dot_product_attention
    functional.scaled_dot_product_attention = lambda query, key, value, *args, **kwargs: _FusedAttention.apply(query, key, value)
    try:
        yield
    finally:
        functional.scaled_dot_product_attention = original


def activation_peak(model: torch.nn.Module, batch: int, length: int, training: bool) -> int:
    """Peak bytes one forward (and with ``training`` its backward) of ``batch`` x ``length`` tokens
    holds beside the weights; gradients of trainable parameters included. ``model`` is on meta,
    with gradient checkpointing enabled or not as the run will have it."""
    ids = torch.zeros(batch, length, dtype=torch.long, device="meta")
    counter = _LiveBytes([*model.parameters(), *model.buffers()])
    model.train(training)
    with _fused_attention(), counter, torch.set_grad_enabled(training):
        logits = model(input_ids=ids, use_cache=False).logits
        if training:
            logits.float().sum().backward()
        del logits
    return counter.peak

