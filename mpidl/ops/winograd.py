"""3x3 stride-1 convolution by Winograd's minimal filtering F(2x2, 3x3) (Lavin & Gray 2016).

The output is cut into 2x2 tiles; tile t reads a 4x4 patch d_t of the padded input (patches
overlap by two rows and columns). Per tile and channel pair,

    y_t = A^T [ (G g G^T) * (B^T d_t B) ] A          (* element-wise: 16 products for 4 outputs)

and the sum over input channels moves inside the brackets, so for each of the 16 positions
xi of the transformed tile the work is one GEMM over all tiles of the batch:

    M[xi] (tiles, F) = V[xi] (tiles, C) @ U[xi] (C, F),    V = B^T d B,  U = G g G^T.

That is 16*C*F multiply-adds per tile of 4 outputs against 36*C*F for the direct convolution
(2.25x fewer), paid for by the transforms.

How the transforms are done (measured, one BLAS thread): element-wise NumPy passes over strided
views run at ~1-3 elements/ns here, and one whose operands are not flat costs about twice one
that is; BLAS does better. So each 2-D transform is one small GEMM with the Kronecker product
of the 1-D transforms, applied to all tiles of a chunk at once:

    forward  D  (16, tiles*C) = the 4x4 input tiles, gathered by one strided copy
             V  = kron(B^T, B^T) (16x16) @ D
             M[xi] = V[xi] @ U[xi]                      (np.matmul on the (16, tiles, C) stack)
             Y  = [kron(A^T, A^T) | 1] (4x17) @ [M; bias]   (the 4 outputs of each tile, bias
                  included), then one copy into the NHWC output.

The batch is worked through a few samples at a time (CHUNK_TILES tiles), so D, V, M and Y of
one chunk stay in cache between these steps; the 16 GEMMs are then small and run at or above
the rate of a large GEMM (on a whole batch at once they run from memory at half that), and the
transform GEMMs are split to at most TRANSFORM_COLUMNS columns, where OpenBLAS is fastest.

Backward, in the Winograd domain (for a tile: dM = A dy_t A^T, the adjoint of the output
transform, again one GEMM with kron(A, A) on the gathered 2x2 dy tiles):
  * dW: dU[xi] = V[xi]^T @ dM[xi], accumulated over chunks (V is kept from forward), then
    dW = G^T dU G.
  * dx: dV[xi] = dM[xi] @ U[xi]^T, then the adjoint of the input transform: 4x4 tile gradients
    kron(B, B) @ dV, added up where the tiles overlap. That is the arithmetic of the Winograd
    forward run on the padded dy with the flipped, transposed filters, but it shares dM with dW
    instead of gathering and transforming 4x4 tiles of dy (16 values per tile instead of 4) a
    second time. The overlap-add: each of the four 2x2 quarters of a tile lands on a separate
    image without overlap (one strided copy for all of them), and the four images, laid out
    with the padded row length, are one flat shift apart: 1 copy + 3 contiguous adds.
  * db: the sum of dy, read off dM[(1, 1)], which holds each tile's sum of its 2x2 outputs.

Few input channels (C < FEW_CHANNELS, a first layer): the tiles are gathered channels-first,
D = (16, C, tiles), whose copies run along image rows, and the 16 GEMMs with an inner dimension
of C = 1-3 (K=1 ran ~100x below BLAS's rate) are folded with the output transform into one GEMM
(see _folded_filters). That gives up Winograd's saving in multiplications, which with so few
channels was never where the time went; measured, the im2col path stays faster on such layers.

Sign convention: A^T's last column and G's last row are negated relative to the paper
(A^T = [[1,1,1,0],[0,1,-1,1]], G[3] = [0,0,-1]); the products are unchanged.

Layouts: channels-last inside, as in mpidl.ops.conv: the output and dx are NCHW views of NHWC
memory; a channels-last dy with even output sizes (what a convolution hands on) is read in
place, anything else is copied once.

Precision: the transforms have entries 0, +-1 and +-1/2, so float64 agrees with the direct
convolution to ~1e-15 relative; float32 to within ~1e-6 of the largest magnitude (worst seen
in tests/unit/ops/test_winograd.py: 7.7e-7, on dW; the im2col path's own worst there: 1.3e-6).
"""

from __future__ import annotations

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view

from mpidl.ops.conv import FEW_CHANNELS, conv_geometry, pair
from mpidl.ops.convpool import _Pooling, _unpool
from mpidl.ops.scratch import FRESH

# Tiles per chunk (measured on the CNN's conv2, C=32, F=64, one BLAS thread: the small GEMMs
# run fastest at 100-400 tiles; the transforms want their operands in L2).
CHUNK_TILES = 196
# Widest (16, X) operand for one transform GEMM (kron(B^T, B^T) @ D and the like): measured,
# OpenBLAS's rate for a 16x16 @ 16xX product halves above ~3500 columns (and 4x16 above ~12000).
TRANSFORM_COLUMNS = 3200

_BT = np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], dtype=np.float64)
_AT = np.array([[1, 1, 1, 0], [0, 1, -1, 1]], dtype=np.float64)
_G = np.array([[1.0, 0.0, 0.0], [0.5, 0.5, 0.5], [0.5, -0.5, 0.5], [0.0, 0.0, -1.0]])
_TRANSFORMS: dict = {}


def _transforms(dtype):
    """Kronecker products of the 1-D transforms in `dtype`: rows/columns indexed a*4+b (4x4
    tile positions), i*2+j (2x2 output positions) or p*3+q (filter taps)."""
    dtype = np.dtype(dtype)
    if dtype not in _TRANSFORMS:
        B2, A2, G2 = np.kron(_BT, _BT), np.kron(_AT, _AT), np.kron(_G, _G)
        _TRANSFORMS[dtype] = {name: np.ascontiguousarray(m, dtype=dtype) for name, m in
                              (("B2", B2), ("B2T", B2.T), ("A2", A2), ("A2T", A2.T), ("G2", G2), ("G2T", G2.T))}
    return _TRANSFORMS[dtype]


def winograd_applies(W_shape, stride, padding, dilation) -> bool:
    """Whether these kernels compute this convolution: a 3x3 kernel, stride 1, dilation 1,
    padding 0 or 1 (per axis). Says nothing about speed (see benchmarks/winograd_layers.py)."""
    if len(W_shape) != 4 or tuple(W_shape[2:]) != (3, 3):
        return False
    return pair(stride) == (1, 1) and pair(dilation) == (1, 1) and all(p in (0, 1) for p in pair(padding))


def filter_transform(W, dtype):
    """U = G g G^T for every (out, in) pair: (16, C, F)."""
    F, C = W.shape[:2]
    U = _transforms(dtype)["G2"] @ W.reshape(F * C, 9).T.astype(dtype, copy=False)   # (16, F*C)
    return np.ascontiguousarray(U.reshape(16, F, C).transpose(0, 2, 1))


def filter_gradient(dU):
    """dW = G^T dU G from dU (16, C, F): (F, C, 3, 3)."""
    C, F = dU.shape[1:]
    dW = _transforms(dU.dtype)["G2T"] @ dU.reshape(16, C * F)                          # (9, C*F)
    return dW.reshape(3, 3, C, F).transpose(3, 2, 0, 1)


def _folded_filters(U, dtype):
    """Few input channels: W'[(xi, c), (i, j, f)] = A2[(i, j), xi] * U[xi, c, f], (16C, 4F).

    With C of 1-3 the 16 GEMMs (tiles, C) @ (C, F) have an inner dimension too small for BLAS
    (K=1 ran ~100x below its rate here), and their (16, tiles, F) result is 4x the output. Folding
    the output transform into the filters makes the products and A^T . A one GEMM,
    (tiles, 16C) @ (16C, 4F), straight to the 2x2 outputs: it multiplies more (64*C*F per tile
    against 36*C*F direct) but passes over memory fewer times, which is what costs at this C."""
    C, F = U.shape[1:]
    A2T = _transforms(dtype)["A2T"]                                     # (16, 4)
    return (U[:, :, None, :] * A2T[:, None, :, None]).reshape(16 * C, 4 * F)


def _transform(T, src, out):
    """out = T @ src for a small transform matrix T and wide (K, X) src, in blocks of at most
    TRANSFORM_COLUMNS columns: OpenBLAS runs these shapes about twice as fast below that."""
    X = src.shape[1]
    blocks = -(-X // TRANSFORM_COLUMNS)
    if blocks == 1:
        np.matmul(T, src, out=out)
        return
    step = -(-X // blocks)
    for lo in range(0, X, step):
        np.matmul(T, src[:, lo:lo + step], out=out[:, lo:lo + step])


def _view(a, shape):
    """a.reshape(shape), which must not copy (results are written through these views)."""
    r = a.reshape(shape)
    if r.size and not np.may_share_memory(r, a):
        raise AssertionError("winograd: a reshape copied")
    return r


def _geometry(x_shape, W_shape, padding):
    if tuple(W_shape[2:]) != (3, 3):
        raise ValueError(f"winograd: needs a 3x3 kernel, not {tuple(W_shape[2:])}")
    if not winograd_applies(W_shape, 1, padding, 1):
        raise ValueError(f"winograd: padding {padding} is not 0 or 1")
    _, (ph, pw), _, (Ho, Wo) = conv_geometry("winograd conv2d", x_shape, W_shape, 1, padding, 1)
    return (ph, pw), (Ho, Wo), ((Ho + 1) // 2, (Wo + 1) // 2)


def _sample_spans(N, tiles_per_sample):
    step = max(1, CHUNK_TILES // tiles_per_sample)
    return [(lo, min(N, lo + step)) for lo in range(0, N, step)]


def _input_tiles(x, padding, tile_grid, few, dtype, scratch):
    """The zero-padded input (the border, and the grid's extra row and column for odd output
    sizes, stay zero) and all 4x4 tiles as a strided view: (4, 4, N, Th, Tw, C), or
    (4, 4, C, N, Th, Tw) with few channels."""
    N, C, H, Wd = x.shape
    (ph, pw), (Th, Tw) = padding, tile_grid
    Hp, Wp = 2 * Th + 2, 2 * Tw + 2
    # Named by geometry: another (H, padding) can need the same padded shape with other zero rows.
    name = f"wino_padded_{H}x{Wd}_{ph}{pw}"
    if few:
        xp = scratch.temp_zeros_once(name, (C, N, Hp, Wp), dtype)
        xp[:, :, ph:ph + H, pw:pw + Wd] = x.transpose(1, 0, 2, 3)
        return sliding_window_view(xp, (4, 4), axis=(2, 3))[:, :, ::2, ::2].transpose(4, 5, 0, 1, 2, 3)
    xp = scratch.temp_zeros_once(name, (N, Hp, Wp, C), dtype)
    xp[:, ph:ph + H, pw:pw + Wd, :] = x.transpose(0, 2, 3, 1)
    return sliding_window_view(xp, (4, 4), axis=(1, 2))[:, ::2, ::2].transpose(4, 5, 0, 1, 2, 3)


def _transform_chunk(windows, lo, hi, D, block, few, tr):
    """V = B^T d B for samples lo..hi into block (their part of V): gather the 4x4 tiles into D,
    then one transform GEMM. Returns V as (16, tiles * C)."""
    C = windows.shape[2] if few else windows.shape[-1]
    Th, Tw = windows.shape[-2:] if few else windows.shape[-3:-1]
    rows = (hi - lo) * Th * Tw
    d = D[:, :rows * C]
    if few:
        np.copyto(_view(d, (4, 4, C, hi - lo, Th, Tw)), windows[:, :, :, lo:hi])
    else:
        np.copyto(_view(d, (4, 4, hi - lo, Th, Tw, C)), windows[:, :, lo:hi])
    v = _view(block[:16 * C * rows], (16, rows * C))
    _transform(tr["B2"], d, v)
    return v


def winograd_conv2d_forward(x, W, b=None, padding=1, scratch=FRESH, keep_cache=True):
    """conv2d_forward(x, W, b, 1, padding, 1) for a 3x3 W, by F(2x2, 3x3). Returns (y, cache);
    y is an NCHW view of NHWC memory.

    keep_cache: True keeps the transformed input V for the weight gradient (4x the input's
    size, in a ``scratch`` array of the layer's own: the cache is good until the next call with
    that Scratch); "input" keeps a reference to x instead and backward transforms it again (no
    memory beyond x, one more gather and transform); False (evaluation) returns no cache."""
    return _forward(x, W, b, padding, scratch, keep_cache, pool=False)


def winograd_pool_applies(x_shape, W_shape, padding) -> bool:
    """Whether winograd_conv2d_pool_relu_forward computes this layer: Winograd applies, the
    input has FEW_CHANNELS or more, and the convolution output has even sizes, so that each
    2x2 output tile is one pooling window."""
    if not winograd_applies(W_shape, 1, padding, 1) or x_shape[1] < FEW_CHANNELS:
        return False
    (ph, pw) = pair(padding)
    return (x_shape[2] + 2 * ph - 2) % 2 == 0 and (x_shape[3] + 2 * pw - 2) % 2 == 0


def winograd_conv2d_pool_relu_forward(x, W, b=None, padding=1, scratch=FRESH, keep_cache=True):
    """relu(maxpool2x2(conv2d(x, W, b, 1, padding))) by F(2x2, 3x3), as mpidl.ops.convpool does
    by im2col: each 2x2 output tile is a pooling window, so the pooling takes the four rows of
    the output transform while they are in cache, and the full-resolution output is never
    stored (winograd_pool_applies says where). Returns (y, cache); keep_cache as in
    winograd_conv2d_forward, and the cache holds the windows' winners (one byte each)."""
    if not winograd_pool_applies(x.shape, W.shape, padding):
        raise ValueError(f"winograd conv+pool: needs a 3x3 stride-1 kernel, {FEW_CHANNELS}+ input channels "
                         f"and an even output size (input {tuple(x.shape)}, padding {padding})")
    return _forward(x, W, b, padding, scratch, keep_cache, pool=True)


def _forward(x, W, b, padding, scratch, keep_cache, pool):
    if keep_cache not in (True, False, "input"):
        raise ValueError(f"winograd: keep_cache is True, False or 'input', not {keep_cache!r}")
    N, C, H, Wd = x.shape
    F = W.shape[0]
    (ph, pw), (Ho, Wo), (Th, Tw) = _geometry(x.shape, W.shape, padding)
    dtype = np.result_type(x.dtype, W.dtype)
    tr = _transforms(dtype)
    U = filter_transform(W, dtype)
    few = C < FEW_CHANNELS
    tiles = Th * Tw
    spans = _sample_spans(N, tiles)
    chunk_rows = (spans[0][1] - spans[0][0]) * tiles
    windows = _input_tiles(x, (ph, pw), (Th, Tw), few, dtype, scratch)
    bias = None if b is None else b.astype(dtype, copy=False)
    # V chunk after chunk: each (16, tiles, C), or with few channels (16*C + 1, tiles), the last
    # row ones, which carry the bias through the GEMM. For the whole batch when it is kept.
    whole = keep_cache is True
    V = (scratch.empty("wino_V", ((16 * C + few) * N * tiles,), dtype) if whole else
         scratch.temp("wino_V_chunk", ((16 * C + few) * chunk_rows,), dtype))
    D = scratch.temp("wino_D", (16, chunk_rows * C), dtype)
    if few:
        Wf = _folded_filters(U, dtype)
        if bias is not None:
            Wf = np.concatenate([Wf, np.tile(bias, 4)[None]])                      # (16C + 1, 4F)
        Z = scratch.temp("wino_Z", (chunk_rows, 4 * F), dtype)
    else:
        # The bias as a 17th row of M, against a column of ones appended to kron(A^T, A^T).
        M = scratch.temp("wino_M", (16 + (bias is not None), chunk_rows, F), dtype)
        A2 = tr["A2"]
        if bias is not None:
            M[16] = bias
            A2 = np.concatenate([A2, np.ones((4, 1), dtype=dtype)], axis=1)
        Y = scratch.temp("wino_Y", (4, chunk_rows * F), dtype)
    if pool:
        out = np.empty((N, Th, Tw, F), dtype=dtype)
        winner = scratch.empty("winner", (N, Th, Tw, F), np.uint8)
        pooling = _Pooling(chunk_rows // tiles, tiles * F, dtype, scratch)
    else:
        out, winner = np.empty((N, 2 * Th, 2 * Tw, F), dtype=dtype), None
    for lo, hi in spans:
        n, rows = hi - lo, (hi - lo) * tiles
        block = V[(16 * C + few) * lo * tiles:(16 * C + few) * hi * tiles] if whole else V[:(16 * C + few) * rows]
        v = _transform_chunk(windows, lo, hi, D, block, few, tr)                 # V = B^T d B
        if few:
            # Few channels: the 16 products and the output transform in one GEMM (see _folded_filters).
            vt = _view(block, (16 * C + 1, rows))
            vt[16 * C] = 1
            z = Z[:rows]
            np.matmul(vt[:len(Wf)].T, Wf, out=z)                                   # (tiles, (i, j, f))
            target = out[lo:hi].reshape(n, Th, 2, Tw, 2, F).transpose(0, 1, 3, 2, 4, 5)
            source = _view(z, (n, Th, Tw, 2, 2, F))
        else:
            np.matmul(_view(v, (16, rows, C)), U, out=M[:16, :rows])
            y = Y[:, :rows * F]
            _transform(A2, _view(M[:, :rows], (len(M), rows * F)), y)           # A^T M A (+ bias)
            if pool:   # rows of y: tile positions (0,0), (0,1), (1,0), (1,1) = window positions
                plane = tiles * F
                pooling.pool_relu(_view(y, (4, n, plane)).transpose(1, 0, 2), out[lo:hi].reshape(n, plane),
                                  winner[lo:hi].reshape(n, plane))
                continue
            target = out[lo:hi].reshape(n, Th, 2, Tw, 2, F).transpose(2, 4, 0, 1, 3, 5)
            source = _view(y, (2, 2, n, Th, Tw, F))
        np.copyto(target, source)
    y = (out if pool else out[:, :Ho, :Wo]).transpose(0, 3, 1, 2)
    if not keep_cache:
        return y, None
    return y, (V if whole else x, whole, U, few, spans, W.shape, x.shape, (ph, pw), dtype, winner)


def winograd_conv2d_backward(dy, cache, need_dx=True, need_db=True, scratch=FRESH):
    """Returns (dx, dW, db) like conv2d_backward: dx None when not needed, db None when not
    needed. dx is an NCHW view of NHWC memory. After winograd_conv2d_pool_relu_forward, dy is
    the gradient of the pooled output."""
    if cache is None:
        raise RuntimeError("winograd_conv2d_backward: the forward pass ran without keeping its cache")
    V, whole, U, few, spans, W_shape, x_shape, (ph, pw), dtype, winner = cache
    N, C, H, Wd = x_shape
    F = W_shape[0]
    Ho, Wo = H + 2 * ph - 2, Wd + 2 * pw - 2
    Th, Tw = (Ho + 1) // 2, (Wo + 1) // 2
    Hp, Wp = 2 * Th + 2, 2 * Tw + 2
    tiles = Th * Tw
    dtype = np.result_type(dtype, dy.dtype)
    tr = _transforms(dtype)
    # dy channels-last on the even tile grid: a view when it already is (conv output layout).
    g = dy.transpose(0, 2, 3, 1)
    if winner is not None:   # pooled: unpooled into the 2x2 tiles chunk by chunk, below
        if not g[0].flags.c_contiguous or g.dtype != dtype:
            g = np.ascontiguousarray(g, dtype=dtype)
        hit = scratch.temp("hit", (spans[0][1] - spans[0][0], Th, Tw, F), bool)
    elif not g[0].flags.c_contiguous or g.strides[0] != g[0].nbytes or (Ho, Wo) != (2 * Th, 2 * Tw) \
            or g.dtype != dtype:
        # Odd output sizes: the tile grid's last row or column stays 0.
        buf = scratch.temp_zeros_once(f"wino_dy_{Ho}x{Wo}", (N, 2 * Th, 2 * Tw, F), dtype)
        buf[:, :Ho, :Wo] = g
        g = buf
    chunk = spans[0][1] - spans[0][0]
    chunk_rows = chunk * tiles
    if not whole:   # V again from the input, chunk by chunk, as forward made it
        windows = _input_tiles(V, (ph, pw), (Th, Tw), few, dtype, scratch)
        D = scratch.temp("wino_D", (16, chunk_rows * C), dtype)
        V_chunk = scratch.temp("wino_V_chunk", ((16 * C + few) * chunk_rows,), dtype)
    db = np.zeros(F, dtype=dtype) if need_db else None
    if need_db:
        ones = np.ones(4 * chunk_rows, dtype=dtype)
    if few:
        # Folded as in forward: with Gt[t, (i, j, f)] the 2x2 dy tiles, dM[xi] = sum_ij A2[ij, xi] Gt[:, ij],
        # so dU[xi, c, f] = sum_ij A2[ij, xi] (V Gt)[(xi, c), (ij, f)], and dV = W' Gt^T.
        Gt = scratch.temp("wino_dy_tiles", (chunk_rows, 4 * F), dtype)
        P = np.zeros((16 * C, 4 * F), dtype=dtype)
        part = np.empty_like(P)
        if need_dx:
            Wf = _folded_filters(U, dtype)
    else:
        Gd = scratch.temp("wino_dy_tiles", (4, chunk_rows * F), dtype)
        dM = scratch.temp("wino_dM", (16, chunk_rows, F), dtype)
        dU = np.zeros((16, C, F), dtype=dtype)
        part = np.empty_like(dU)
        if need_dx:
            Ut = np.ascontiguousarray(U.transpose(0, 2, 1))    # (16, F, C): BLAS is 2x faster on it
    if need_dx:
        dV = scratch.temp("wino_dV", (16 * chunk_rows * C,), dtype)             # a chunk: a contiguous prefix
        dD = scratch.temp("wino_dD", (16, chunk_rows * C), dtype)
        # Four images, one per 2x2 quarter (s1, s2) of the tiles, rows padded to Wp: the last
        # two columns stay zero, so the images are flat shifts of each other (see module docs).
        quarters = scratch.temp_zeros_once("wino_quarters", (2, 2, chunk, 2 * Th, Wp, C), dtype)
        dxp = np.empty((N, Hp, Wp, C), dtype=dtype)
        L, row = 2 * Th * Wp * C, Wp * C
    for lo, hi in spans:
        n, rows = hi - lo, (hi - lo) * tiles
        if whole:
            v = _view(V[(16 * C + few) * lo * tiles:(16 * C + few) * hi * tiles][:16 * C * rows], (16, rows * C))
        else:
            v = _transform_chunk(windows, lo, hi, D, V_chunk, few, tr)
        tiles_of_dy = g[lo:hi].reshape(n, Th, 2, Tw, 2, F) if winner is None else None
        if few:
            gt = Gt[:rows]
            np.copyto(_view(gt, (n, Th, Tw, 2, 2, F)), tiles_of_dy.transpose(0, 1, 3, 2, 4, 5))
            if need_db:
                db += ones[:4 * rows] @ _view(gt, (4 * rows, F))
            np.matmul(_view(v, (16 * C, rows)), gt, out=part)
            P += part
        else:
            gd = Gd[:, :rows * F]
            if winner is None:
                np.copyto(_view(gd, (2, 2, n, Th, Tw, F)), tiles_of_dy.transpose(2, 4, 0, 1, 3, 5))
            else:
                _unpool(g[lo:hi], winner[lo:hi], list(_view(gd, (4, n, Th, Tw, F))), hit[:n])
            dm = dM[:, :rows]
            _transform(tr["A2T"], gd, _view(dm, (16, rows * F)))              # dM = A dy A^T
            if need_db:
                db += ones[:rows] @ dm[5]                                          # dM[(1,1)]: tile sums
            np.matmul(_view(v, (16, rows, C)).transpose(0, 2, 1), dm, out=part)
            dU += part
        if not need_dx:
            continue
        dv = _view(dV[:16 * rows * C], (16, rows * C))
        if few:
            np.matmul(Wf, gt.T, out=_view(dv, (16 * C, rows)))                    # (xi, c, t)
        else:
            np.matmul(dm, Ut, out=_view(dv, (16, rows, C)))                        # (xi, t, c)
        dd = dD[:, :rows * C]
        _transform(tr["B2T"], dv, dd)                                           # B dV B^T
        # Tile position (k1, k2) = (2*s1 + i, 2*s2 + j) goes to pixel (2*ti + i, 2*tj + j) of quarter (s1, s2).
        q = quarters[:, :, :n]
        if few:
            source = _view(dd, (2, 2, 2, 2, C, n, Th, Tw)).transpose(0, 1, 2, 3, 5, 6, 7, 4)
        else:
            source = _view(dd, (2, 2, 2, 2, n, Th, Tw, C))
        np.copyto(q[..., :2 * Tw, :].reshape(2, 2, n, Th, 2, Tw, 2, C).transpose(0, 4, 1, 6, 2, 3, 5, 7), source)
        flat, qf = _view(dxp[lo:hi], (n, Hp * Wp * C)), _view(q, (2, 2, n, L))
        np.copyto(flat[:, :L], qf[0, 0])
        flat[:, L:] = 0
        for (s1, s2) in ((0, 1), (1, 0), (1, 1)):
            shift = 2 * s1 * row + 2 * s2 * C
            size = min(L, Hp * Wp * C - shift)       # quarter (1, 1): its last two (zero) columns fall off
            target = flat[:, shift:shift + size]
            np.add(target, qf[s1, s2, :, :size], out=target)
    if few:
        A2T = tr["A2T"]
        dU = np.einsum("xcif,xi->xcf", P.reshape(16, C, 4, F), A2T)
    dW = filter_gradient(dU)
    dx = dxp[:, ph:ph + H, pw:pw + Wd, :].transpose(0, 3, 1, 2) if need_dx else None
    return dx, dW, db
