"""Triton kernels (GPU fast paths; run on CPU only under TRITON_INTERPRET=1)."""
