"""The H3 layer's sequence mixing for head_dim 1, fused into one blocked autograd function.

    y = q ⊙ S(K̃(k) ⊙ v),   K̃(k) = k ∗ K_shift + D_shift·k,   S(u) = u ∗ K_diag + D_diag·u

(``∗`` the causal convolution of :mod:`h3lab.nn.fftconv`). Composed from separate ops, the
layer keeps every intermediate of the sequence alive for the backward — the shifted keys,
``kv``, the SSM output, and their gradients — each a (B, D, L) tensor, 64 MiB at batch 4,
d_model 256 and 16k tokens, and streams each through memory several times. Here the forward
walks (batch, channel) blocks of about :data:`h3lab.nn.fftconv.BLOCK_BYTES` of padded rows
(at least :data:`MIN_ROWS`), channel block by channel block, and does all of it per block
while the block is in cache; it saves only the projection output ``qkv`` and the two
kernels. The backward recomputes the shifted keys, ``kv`` and the SSM output per block (two
more FFTs than keeping them; below :data:`SAVE_BYTES` the forward keeps them instead) and
writes the gradient of ``qkv`` in place, so no intermediate of full size exists in either
pass at long L.

The slow reference is the composed path in :meth:`h3lab.nn.h3.H3.forward` (taken whenever
a hook is active, a state is prefilled or head_dim > 1); ``tests/ml/test_nn.py`` checks the
two equal, outputs and gradients, and the fused function by ``gradcheck``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
from torch import Tensor

from h3lab.nn.fftconv import _row_blocks, next_fast_len


def h3_mix(qkv: Tensor, k_shift: Tensor, D_shift: Tensor, k_diag: Tensor, D_diag: Tensor) -> Tensor:
    """qkv: (B, 3D, L) the fused projection, channels first (q, k, v stacked);
    k_shift: (D, Ls), k_diag: (D, Ld) kernels of any length (only the first L taps reach an
    output); D_shift, D_diag: (D,) skips. Returns y: (B, D, L). Differentiable in all five."""
    L = qkv.shape[-1]
    k_shift, k_diag = k_shift[..., :L], k_diag[..., :L]
    n1 = next_fast_len(L + k_shift.shape[-1] - 1)
    n2 = next_fast_len(L + k_diag.shape[-1] - 1)
    # Intermediates are worth keeping only for a backward; inside the Function grad mode is
    # always off, and ``needs_input_grad`` is set under ``no_grad`` too, so it is decided here.
    inputs = (qkv, k_shift, D_shift, k_diag, D_diag)
    for_backward = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
    apply = cast(Callable[..., Tensor], _H3Mix.apply)  # Function.apply is untyped
    return apply(qkv.contiguous(), k_shift, D_shift, k_diag, D_diag, n1, n2, for_backward)


# Below this many bytes of intermediates (the shifted keys, kv, the SSM output and the two
# spectra the backward needs), the forward keeps them and the backward does not recompute
# them: at 1k-2k tokens that saves a third of the pass's FFTs for tens of MiB; longer
# sequences recompute, which keeps the peak flat (0.75 GiB at 16k). Tunable for tests.
SAVE_BYTES = 64 << 20

# A block holds at least this many rows, whatever BLOCK_BYTES says: each rfft/irfft call
# plans its transform afresh (torch keeps no plan cache for MKL on the CPU): an rfft+irfft
# pair at 32k points took 0.89 ms for 2 rows and 2.9 ms for 32, i.e. ~0.75 ms of planning per
# pair and ~0.07 ms per row, so at 8k-16k tokens blocks of 1 MiB, 8 rows, paid more for
# planning than for transforming. 32 rows took a 16k pass from 1.71
# to 1.26 s for ~75 MiB more at its peak; 64 rows was no faster and took another 70-115 MiB
# (docs/benchmark-logs/layer_notes-2.log). Tunable.
MIN_ROWS = 32


def _zero_tailed(like: Tensor, blocks: list[tuple[slice, slice]], L: int, n: int) -> Tensor:
    """One buffer for every block's rows padded to n points: (b, h, n) for the largest block,
    its tail [L, n) zeroed once. A block writes its L values into ``buf[:b, :h, :L]`` (a
    contiguous prefix: blocks of several sequences hold every channel) and transforms the
    rows whole, where ``rfft(x, n=n)`` would allocate, zero-fill and copy per call."""
    b = max(bs.stop - bs.start for bs, _ in blocks)
    h = max(hs.stop - hs.start for _, hs in blocks)
    buf = like.new_empty(b, h, n)
    buf[..., L:].zero_()
    return buf


def _add_conj_product(acc: Tensor, a_conj: Tensor, b: Tensor) -> None:
    """acc (h, m) += Σ_batch a_conj ⊙ b for (b, h, m) spectra, without a temporary when the
    block holds one sequence (the usual case for long L)."""
    if a_conj.shape[0] == 1:
        acc.addcmul_(a_conj[0], b[0])
    else:
        acc += torch.mul(a_conj, b).sum(0)


def _channel_major(blocks: list[tuple[slice, slice]]) -> list[tuple[slice, slice]]:
    """The blocks channel block by channel block, each over the batch in order."""
    return sorted(blocks, key=lambda t: (t[1].start, t[0].start))


class _H3Mix(torch.autograd.Function):
    """See the module docstring. Both gradients of each convolution are correlations that
    the same zero padding keeps exact (as in :class:`h3lab.nn.fftconv._FFTConv`).

    Blocks are walked channel block by channel block (each over the batch), so the kernels'
    spectra, their conjugates and the kernels' gradient spectra exist only for the channels
    at hand: whole, they would hold 100 MiB at 16k tokens beside the backward's peak. Rows to
    be transformed are written straight into zero-tailed buffers (:func:`_zero_tailed`),
    kept intermediates straight into their saved tensors, and the spectra the backward
    correlates with are conjugated in place (or stored conjugated)."""

    @staticmethod
    def forward(
        ctx: Any,
        qkv: Tensor,
        k_shift: Tensor,
        D_shift: Tensor,
        k_diag: Tensor,
        D_diag: Tensor,
        n1: int,
        n2: int,
        for_backward: bool,
    ) -> Tensor:
        B, C3, L = qkv.shape
        D = C3 // 3
        y = qkv.new_empty(B, D, L)
        real, cplx = qkv.element_size(), 2 * qkv.element_size()
        size = B * D * (3 * L * real + (n1 // 2 + n2 // 2 + 2) * cplx)
        keep = for_backward and size <= SAVE_BYTES
        if keep:  # (B, D, L) ×3 and the conjugate spectra of k and kv, filled block by block
            cdtype = torch.complex128 if qkv.dtype == torch.float64 else torch.complex64
            ks_all, kv_all, s_all = (qkv.new_empty(B, D, L) for _ in range(3))
            kfc_all = torch.empty(B, D, n1 // 2 + 1, dtype=cdtype, device=qkv.device)
            kvfc_all = torch.empty(B, D, n2 // 2 + 1, dtype=cdtype, device=qkv.device)
        blocks = _channel_major(_row_blocks(y, max(n1, n2), MIN_ROWS))
        pk, pkv = _zero_tailed(qkv, blocks, L, n1), _zero_tailed(qkv, blocks, L, n2)
        spectra_of: slice | None = None
        for bs, hs in blocks:
            if hs != spectra_of:  # (h, n//2+1) each, for this channel block
                f1 = torch.fft.rfft(k_shift[hs], n=n1)
                f2 = torch.fft.rfft(k_diag[hs], n=n2)
                spectra_of = hs
            q, k, v = (qkv[bs, hs.start + i * D : hs.stop + i * D] for i in range(3))
            pk_b, pkv_b = pk[: q.shape[0], : q.shape[1]], pkv[: q.shape[0], : q.shape[1]]
            pk_b[..., :L] = k
            k_f = torch.fft.rfft(pk_b)  # (b, h, n1//2+1)
            if keep:
                torch.conj_physical(k_f, out=kfc_all[bs, hs])
            ks = torch.fft.irfft(k_f.mul_(f1), n=n1)[..., :L]
            if keep:
                ks = torch.addcmul(ks, k, D_shift[hs, None], out=ks_all[bs, hs])
            else:
                ks = ks.addcmul_(k, D_shift[hs, None])  # (b, h, L)
            kv = torch.mul(ks, v, out=pkv_b[..., :L])
            kv_f = torch.fft.rfft(pkv_b)  # (b, h, n2//2+1)
            if keep:
                kv_all[bs, hs] = kv
                torch.conj_physical(kv_f, out=kvfc_all[bs, hs])
            s = torch.fft.irfft(kv_f.mul_(f2), n=n2)[..., :L]
            if keep:
                s = torch.addcmul(s, kv, D_diag[hs, None], out=s_all[bs, hs])
            else:
                s = s.addcmul_(kv, D_diag[hs, None])
            torch.mul(s, q, out=y[bs, hs])
        kept = (ks_all, kv_all, s_all, kfc_all, kvfc_all) if keep else ()
        ctx.save_for_backward(qkv, k_shift, D_shift, k_diag, D_diag, *kept)
        ctx.sizes = (L, n1, n2)
        return y

    @staticmethod
    def backward(ctx: Any, gy: Tensor) -> tuple[Tensor | None, ...]:
        qkv, k_shift, D_shift, k_diag, D_diag, *kept = ctx.saved_tensors
        L, n1, n2 = ctx.sizes
        D = qkv.shape[1] // 3
        g_qkv = torch.empty_like(qkv)  # (B, 3D, L)
        g_kshift, g_kdiag = torch.empty_like(k_shift), torch.empty_like(k_diag)
        gD1, gD2 = torch.zeros_like(D_shift), torch.zeros_like(D_diag)
        blocks = _channel_major(_row_blocks(gy, max(n1, n2), MIN_ROWS))
        # Zero-tailed rows: p1 holds k (when recomputing), then ∂ks; p2 kv; p3 ∂s.
        p1 = _zero_tailed(qkv, blocks, L, n1)
        p2 = _zero_tailed(qkv, blocks, L, n2) if not kept else None
        p3 = _zero_tailed(qkv, blocks, L, n2)
        for i, (bs, hs) in enumerate(blocks):
            if i == 0 or hs != blocks[i - 1][1]:  # a new channel block: its kernels' spectra
                f1 = torch.fft.rfft(k_shift[hs], n=n1)  # (h, n1//2+1)
                f2 = torch.fft.rfft(k_diag[hs], n=n2)
                f1c, f2c = torch.conj_physical(f1), torch.conj_physical(f2)
                gf1, gf2 = torch.zeros_like(f1), torch.zeros_like(f2)  # Σ_b over the batch
            q, k, v = (qkv[bs, hs.start + j * D : hs.stop + j * D] for j in range(3))
            gq, gk, gv = (g_qkv[bs, hs.start + j * D : hs.stop + j * D] for j in range(3))
            b, h = q.shape[0], q.shape[1]
            p1_b, p3_b = p1[:b, :h], p3[:b, :h]
            g = gy[bs, hs].contiguous()  # (b, h, L); a no-op unless gy arrives transposed
            if kept:  # the forward's intermediates for this block (read, never modified)
                ks, kv, s, k_fc, kv_fc = (t[bs, hs] for t in kept)
            else:  # recomputed
                assert p2 is not None
                p2_b = p2[:b, :h]
                p1_b[..., :L] = k
                k_fc = torch.fft.rfft(p1_b)
                ks = torch.fft.irfft(k_fc * f1, n=n1)[..., :L].addcmul_(k, D_shift[hs, None])
                k_fc = k_fc.conj_physical_()
                kv = torch.mul(ks, v, out=p2_b[..., :L])
                kv_fc = torch.fft.rfft(p2_b)
                s = torch.fft.irfft(kv_fc * f2, n=n2)[..., :L].addcmul_(kv, D_diag[hs, None])
                kv_fc = kv_fc.conj_physical_()
            torch.mul(g, s, out=gq)  # y = q ⊙ s
            gs = torch.mul(g, q, out=p3_b[..., :L])
            gs_f = torch.fft.rfft(p3_b)
            _add_conj_product(gf2, kv_fc, gs_f)
            gD2[hs] += (gs * kv).sum((0, 2))
            gkv = torch.fft.irfft(gs_f.mul_(f2c), n=n2)[..., :L].addcmul_(gs, D_diag[hs, None])
            torch.mul(gkv, ks, out=gv)  # kv = ks ⊙ v
            gks = torch.mul(gkv, v, out=p1_b[..., :L])
            gks_f = torch.fft.rfft(p1_b)
            _add_conj_product(gf1, k_fc, gks_f)
            gD1[hs] += (gks * k).sum((0, 2))
            gk_full = torch.fft.irfft(gks_f.mul_(f1c), n=n1)[..., :L]
            torch.addcmul(gk_full, gks, D_shift[hs, None], out=gk)
            if i + 1 == len(blocks) or blocks[i + 1][1] != hs:  # the channel block is done
                g_kshift[hs] = torch.fft.irfft(gf1, n=n1)[..., : k_shift.shape[-1]]
                g_kdiag[hs] = torch.fft.irfft(gf2, n=n2)[..., : k_diag.shape[-1]]
        need = ctx.needs_input_grad
        return (
            g_qkv if need[0] else None,
            g_kshift if need[1] else None,
            gD1 if need[2] else None,
            g_kdiag if need[3] else None,
            gD2 if need[4] else None,
            None,
            None,
            None,
        )


def h3_mix_heads(
    qkv: Tensor,
    k_shift: Tensor,
    D_shift: Tensor,
    k_diag: Tensor,
    D_diag: Tensor,
    head_dim: int,
) -> Tensor:
    """The multi-head form with one diagonal SSM per head (``h3_ssm="head"``, the reference
    H3): per head h and entries i, j, ``s_ij = S_h(K̃(k)_i ⊙ v_j)`` and
    ``y[j·H + h] = Σ_i q_i ⊙ s_ij`` (channel ``h·d + i`` of q, k, v is entry i of head h; see
    :mod:`h3lab.nn.h3`). qkv: (B, 3D, L); k_shift: (D, Ls), D_shift: (D,); k_diag: (H, Ld),
    D_diag: (H,) with H = D / head_dim. Returns y: (B, D, L). Blocks hold whole heads, so the
    d² kv rows of a head are transformed together and never exist for the whole sequence."""
    L = qkv.shape[-1]
    k_shift, k_diag = k_shift[..., :L], k_diag[..., :L]
    n1 = next_fast_len(L + k_shift.shape[-1] - 1)
    n2 = next_fast_len(L + k_diag.shape[-1] - 1)
    apply = cast(Callable[..., Tensor], _H3MixHeads.apply)  # Function.apply is untyped
    return apply(qkv.contiguous(), k_shift, D_shift, k_diag, D_diag, n1, n2, head_dim)


def _head_blocks(qkv: Tensor, H: int, d: int, n: int) -> list[tuple[slice, slice]]:
    """(batch slice, head slice) blocks with about BLOCK_BYTES of padded kv rows (d² per
    head and sequence)."""
    return _row_blocks(qkv.new_empty(qkv.shape[0], H, 0), n * d * d)


class _H3MixHeads(torch.autograd.Function):
    """See :func:`h3_mix_heads`; the same recompute-in-backward scheme as :class:`_H3Mix`."""

    @staticmethod
    def forward(
        ctx: Any,
        qkv: Tensor,
        k_shift: Tensor,
        D_shift: Tensor,
        k_diag: Tensor,
        D_diag: Tensor,
        n1: int,
        n2: int,
        d: int,
    ) -> Tensor:
        B, C3, L = qkv.shape
        D = C3 // 3
        H = D // d
        f1 = torch.fft.rfft(k_shift, n=n1)  # (D, ·)
        f2 = torch.fft.rfft(k_diag, n=n2)  # (H, ·)
        y = qkv.new_empty(B, D, L)
        y4 = y.view(B, d, H, L)  # output channel j·H + h
        for bs, hs in _head_blocks(qkv, H, d, n2):
            cs = slice(hs.start * d, hs.stop * d)  # the block's channels h·d + i
            q, k, v = (qkv[bs, cs.start + i * D : cs.stop + i * D] for i in range(3))
            b, hb = q.shape[0], hs.stop - hs.start
            ks = torch.fft.irfft(torch.fft.rfft(k, n=n1).mul_(f1[cs]), n=n1)[..., :L]
            ks = ks.addcmul_(k, D_shift[cs, None]).view(b, hb, d, 1, L)  # entry i
            kv = ks * v.reshape(b, hb, 1, d, L)  # (b, hb, i, j, L)
            kv_f = torch.fft.rfft(kv, n=n2).mul_(f2[hs, None, None])
            s = torch.fft.irfft(kv_f, n=n2)[..., :L].addcmul_(kv, D_diag[hs, None, None, None])
            yb = (s.mul_(q.reshape(b, hb, d, 1, L))).sum(2)  # (b, hb, j, L)
            y4[bs, :, hs] = yb.transpose(1, 2)
        ctx.save_for_backward(qkv, f1, D_shift, f2, D_diag)
        ctx.sizes = (L, k_shift.shape[-1], k_diag.shape[-1], n1, n2, d)
        return y

    @staticmethod
    def backward(ctx: Any, gy: Tensor) -> tuple[Tensor | None, ...]:
        qkv, f1, D_shift, f2, D_diag = ctx.saved_tensors
        L, Ls, Ld, n1, n2, d = ctx.sizes
        B = qkv.shape[0]
        D = qkv.shape[1] // 3
        H = D // d
        g_qkv = torch.empty_like(qkv)
        gf1, gf2 = torch.zeros_like(f1), torch.zeros_like(f2)
        gD1, gD2 = torch.zeros_like(D_shift), torch.zeros_like(D_diag)
        f1c, f2c = f1.conj(), f2.conj()
        gy4 = gy.reshape(B, d, H, L)
        for bs, hs in _head_blocks(qkv, H, d, n2):
            cs = slice(hs.start * d, hs.stop * d)
            q, k, v = (qkv[bs, cs.start + i * D : cs.stop + i * D] for i in range(3))
            gq, gk, gv = (g_qkv[bs, cs.start + i * D : cs.stop + i * D] for i in range(3))
            b, hb = q.shape[0], hs.stop - hs.start
            g = gy4[bs, :, hs].transpose(1, 2).reshape(b, hb, 1, d, L)  # gy_j
            k_f = torch.fft.rfft(k, n=n1)
            ks = torch.fft.irfft(k_f * f1[cs], n=n1)[..., :L].addcmul_(k, D_shift[cs, None])
            ks5 = ks.view(b, hb, d, 1, L)
            v5 = v.reshape(b, hb, 1, d, L)
            q5 = q.reshape(b, hb, d, 1, L)
            kv = ks5 * v5  # (b, hb, i, j, L)
            kv_f = torch.fft.rfft(kv, n=n2)
            s = torch.fft.irfft(kv_f * f2[hs, None, None], n=n2)[..., :L]
            s.addcmul_(kv, D_diag[hs, None, None, None])
            gq.copy_((s.mul_(g)).sum(3).view(b, hb * d, L))  # Σ_j gy_j s_ij
            gs = q5 * g  # (b, hb, i, j, L)
            gs_f = torch.fft.rfft(gs, n=n2)
            gf2[hs] += kv_f.conj_physical_().mul_(gs_f).sum((0, 2, 3))
            gD2[hs] += (gs * kv).sum((0, 2, 3, 4))
            gkv = torch.fft.irfft(gs_f.mul_(f2c[hs, None, None]), n=n2)[..., :L]
            gkv.addcmul_(gs, D_diag[hs, None, None, None])
            gv.copy_((gkv * ks5).sum(2).view(b, hb * d, L))  # Σ_i gkv_ij ks_i
            gks = (gkv.mul_(v5)).sum(3).view(b, hb * d, L)  # Σ_j gkv_ij v_j
            gks_f = torch.fft.rfft(gks, n=n1)
            gf1[cs] += k_f.conj_physical_().mul_(gks_f).sum(0)
            gD1[cs] += (gks * k).sum((0, 2))
            gk_full = torch.fft.irfft(gks_f.mul_(f1c[cs]), n=n1)[..., :L]
            torch.addcmul(gk_full, gks, D_shift[cs, None], out=gk)
        need = ctx.needs_input_grad
        return (
            g_qkv if need[0] else None,
            torch.fft.irfft(gf1, n=n1)[..., :Ls] if need[1] else None,
            gD1 if need[2] else None,
            torch.fft.irfft(gf2, n=n2)[..., :Ld] if need[3] else None,
            gD2 if need[4] else None,
            None,
            None,
            None,
        )
