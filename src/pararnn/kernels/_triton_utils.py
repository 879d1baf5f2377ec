"""Small Triton helpers shared by the scan kernels (row bookkeeping, affine combines).

The combines compose two affine maps ``x -> A x + b`` along the scan axis:
``(A2, b2) ∘ (A1, b1) = (A2 A1, A2 b1 + b2)`` where ``1`` is the earlier element, as
``tl.associative_scan`` passes them (left = earlier for a forward scan). Block maps are
spelled out entry by entry (row-major ``aij``) because a combine acts elementwise.
"""

from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def last_row(x, is_last):
    """Row ``BLOCK_T - 1`` of a ``(BLOCK_T, C)`` tile as a ``(C,)`` vector (exact)."""
    return tl.sum(tl.where(is_last[:, None], x, 0.0), axis=0)


@triton.jit
def affine1(a1, b1, a2, b2):
    return a2 * a1, a2 * b1 + b2


@triton.jit
def affine2(
    p00, p01, p10, p11, p0, p1,
    q00, q01, q10, q11, q0, q1,
):
    # q ∘ p: Q P and Q p + q
    return (
        q00 * p00 + q01 * p10, q00 * p01 + q01 * p11,
        q10 * p00 + q11 * p10, q10 * p01 + q11 * p11,
        q00 * p0 + q01 * p1 + q0, q10 * p0 + q11 * p1 + q1,
    )


@triton.jit
def affine3(
    p00, p01, p02, p10, p11, p12, p20, p21, p22, p0, p1, p2,
    q00, q01, q02, q10, q11, q12, q20, q21, q22, q0, q1, q2,
):
    # q ∘ p: Q P and Q p + q
    return (
        q00 * p00 + q01 * p10 + q02 * p20,
        q00 * p01 + q01 * p11 + q02 * p21,
        q00 * p02 + q01 * p12 + q02 * p22,
        q10 * p00 + q11 * p10 + q12 * p20,
        q10 * p01 + q11 * p11 + q12 * p21,
        q10 * p02 + q11 * p12 + q12 * p22,
        q20 * p00 + q21 * p10 + q22 * p20,
        q20 * p01 + q21 * p11 + q22 * p21,
        q20 * p02 + q21 * p12 + q22 * p22,
        q00 * p0 + q01 * p1 + q02 * p2 + q0,
        q10 * p0 + q11 * p1 + q12 * p2 + q1,
        q20 * p0 + q21 * p1 + q22 * p2 + q2,
    )
