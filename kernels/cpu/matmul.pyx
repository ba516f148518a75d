# cython: boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
# cython: language_level=3, embedsignature=True
"""Packed, register-tiled matrix multiply for float32 and float64 (2-D and batched 3-D).

The structure follows Goto & van de Geijn / BLIS:

* the K x N operand is packed, a KC x NC block at a time, into NR-wide column panels,
  and the M x K operand, an MC x KC block at a time, into MR-tall row panels, both
  contiguous and zero-padded, so the inner loop only ever streams contiguous memory;
* a micro-kernel (``tgm_tile_*`` in the C block below) keeps an MR x NR tile of C in
  local accumulators that gcc keeps in vector registers (12 x 2 vectors with
  AVX-512's 32 registers, 6 x 2 with 16) and runs K rank-1 updates on it; edge tiles
  use 8/4/2/1-row and one-vector variants instead of computing padding;
* loop order: jc (NC) > pc (KC) > pack B > ic (MC) > pack A > jr (NR) > ir (MR), so a
  B micro-panel (KC x NR) stays in L1 while the packed A block (MC x KC, in L2) streams
  past it; K is split into equal KC blocks.

Small products (the MAML scale) skip packing: A is read in place through its strides
and B too when its rows are contiguous. Matrix-vector products and K <= 2 have their
own loops. Any strides work (transposed views, negative strides): packing reads
through element strides, and a transposed B is packed by register transposes, so a
transposed operand is never copied first. Threads (OpenMP ``prange``, dynamic) share
(batch entry, row block, column block) work items, each with its own packing
buffers, and only run above ``THREAD_MIN_WORK`` multiply-adds.

Public entry point: :func:`matmul` (numpy semantics; anything it does not handle goes
to ``numpy.matmul``). :func:`gemm` exposes explicit transpose flags for tests and
benchmarks. ``BUILD_INFO`` says how the module was compiled; ``set_blocking``,
``set_num_threads`` and ``set_thread_min_work`` tune it at run time.
"""
import numpy as np
cimport numpy as cnp
from cython.parallel cimport parallel, prange
from libc.stdlib cimport free
from libc.string cimport memset

cnp.import_array()

cdef extern from *:
    """
    #include <stdlib.h>
    #include <string.h>
    #include <stddef.h>
    #ifdef _OPENMP
    #include <omp.h>
    #endif

    /* Vector width of the target ISA: the micro-kernel tile is sized from it so that the
       MR x NV accumulators plus NV B vectors and one broadcast fit the register file
       (32 vector registers with AVX-512, 16 below). -DTGM_MR=... overrides. */
    #if defined(__AVX512F__)
    #define TGM_VBYTES 64
    #ifndef TGM_MR
    #define TGM_MR 12
    #endif
    #elif defined(__AVX__)
    #define TGM_VBYTES 32
    #ifndef TGM_MR
    #define TGM_MR 6
    #endif
    #else
    #define TGM_VBYTES 16
    #ifndef TGM_MR
    #define TGM_MR 6
    #endif
    #endif
    /* two vectors of C per tile row */
    #define TGM_NV 2
    #define TGM_NR_F32 (TGM_NV * TGM_VBYTES / 4)
    #define TGM_NR_F64 (TGM_NV * TGM_VBYTES / 8)

    #ifdef _OPENMP
    #define TGM_OPENMP 1
    static int tgm_max_threads(void) { return omp_get_max_threads(); }
    #else
    #define TGM_OPENMP 0
    static int tgm_max_threads(void) { return 1; }
    #endif
    #ifndef TGM_CFLAGS
    #define TGM_CFLAGS "unknown"
    #endif
    #define TGM_INLINE static inline __attribute__((always_inline))
    /* Short copy loops (edge tiles, tail panels: a few elements per row) must stay
       inline: gcc would otherwise turn each into a call to memcpy, which costs more
       than the copy. */
    #define TGM_NO_MEMCPY __attribute__((optimize("no-tree-loop-distribute-patterns")))

    static void *tgm_aligned_alloc(size_t nbytes) {
        void *p = NULL;
        if (nbytes == 0) nbytes = 64;
        if (posix_memalign(&p, 64, nbytes) != 0) return NULL;
        return p;
    }

    /* One register tile: C[0:m, 0:n] (+)= A[0:MRV, 0:kc] @ Bpanel[0:kc, 0:NVV*VL].
       A is read through strides (rsa between rows, csa between k steps): a packed panel
       (rsa = 1, csa = MR) or the caller's matrix itself. The B panel is packed k-major
       with ldb elements per k step and zero-padded past n, or a full-width slice of a
       row-contiguous B read in place (ldb = its row stride; memcpy loads need no
       alignment). The
       accumulators are a fixed-size local array that gcc unrolls into registers;
       "acc += a * b" contracts to FMA. m <= MRV and n <= NVV*VL say which part of the
       tile is real (edge tiles are spilled and copied). */
    #define TGM_DEFINE_TILE(T, SFX, MRV, NVV)                                            \\
    TGM_INLINE void tgm_tile_##SFX##_##MRV##x##NVV(                                      \\
            ptrdiff_t kc, const T *restrict a, ptrdiff_t rsa, ptrdiff_t csa,            \\
            const T *restrict pb, ptrdiff_t ldb, T *restrict c, ptrdiff_t ldc,          \\
            int accumulate, int m, int n) {                                             \\
        enum { VL = TGM_VBYTES / (int)sizeof(T) };                                      \\
        tgm_v##SFX acc[MRV][NVV];                                                       \\
        _Pragma("GCC unroll 16")                                                        \\
        for (int i = 0; i < MRV; i++) {                                                 \\
            _Pragma("GCC unroll 4")                                                     \\
            for (int v = 0; v < NVV; v++) acc[i][v] = (tgm_v##SFX){0};                  \\
        }                                                                               \\
        /* unrolled twice: the loop overhead is a visible share of short (small-K) tiles */ \\
        _Pragma("GCC unroll 2")                                                         \\
        for (ptrdiff_t p = 0; p < kc; p++) {                                            \\
            tgm_v##SFX b[NVV];                                                          \\
            _Pragma("GCC unroll 4")                                                     \\
            for (int v = 0; v < NVV; v++) memcpy(&b[v], pb + v * VL, sizeof(b[v]));     \\
            _Pragma("GCC unroll 16")                                                    \\
            for (int i = 0; i < MRV; i++) {                                             \\
                /* x - 0 folds to a plain broadcast (x + 0 would not: -0 + 0 = +0) */   \\
                tgm_v##SFX ai = a[i * rsa] - (tgm_v##SFX){0};                           \\
                _Pragma("GCC unroll 4")                                                 \\
                for (int v = 0; v < NVV; v++) acc[i][v] = TGM_VFMA_##SFX(ai, b[v], acc[i][v]); \\
            }                                                                           \\
            a += csa;                                                                   \\
            pb += ldb;                                                                  \\
        }                                                                               \\
        if (m == MRV && n == NVV * VL) {                                                \\
            _Pragma("GCC unroll 16")                                                    \\
            for (int i = 0; i < MRV; i++) {                                             \\
                _Pragma("GCC unroll 4")                                                 \\
                for (int v = 0; v < NVV; v++) {                                         \\
                    T *dst = c + i * ldc + v * VL;                                      \\
                    tgm_v##SFX out = acc[i][v];                                         \\
                    if (accumulate) {                                                   \\
                        tgm_v##SFX old;                                                 \\
                        memcpy(&old, dst, sizeof(old));                                 \\
                        out += old;                                                     \\
                    }                                                                   \\
                    memcpy(dst, &out, sizeof(out));                                     \\
                }                                                                       \\
            }                                                                           \\
        } else {                                                                        \\
            T tile[MRV * NVV * VL] __attribute__((aligned(64)));                        \\
            memcpy(tile, acc, sizeof(tile));                                            \\
            for (int i = 0; i < m; i++) {                                               \\
                T *dst = c + i * ldc;                                                   \\
                const T *src = tile + i * NVV * VL;                                     \\
                if (accumulate) for (int j = 0; j < n; j++) dst[j] += src[j];           \\
                else for (int j = 0; j < n; j++) dst[j] = src[j];                       \\
            }                                                                           \\
        }                                                                               \\
    }

    /* The loops around the tiles for one mc x nc block of C (the BLIS macro-kernel):
       full MR-row panels run the MR x 2 tile (or MR x 1 where at most one vector of
       columns is left); the last, partial panel is covered by 8/4/2/1-row tiles so that
       no more than one row-tile of padding is ever computed. panel_stride: elements
       between consecutive MR-row panels of A. */
    #define TGM_DEFINE_MACRO(T, SFX)                                                     \\
    TGM_INLINE void tgm_rows_##SFX(int rows, ptrdiff_t kc, const T *a, ptrdiff_t rsa,   \\
            ptrdiff_t csa, const T *pb, ptrdiff_t ldb, T *c, ptrdiff_t ldc,             \\
            int accumulate, int n, int nv) {                                            \\
        int i = 0;                                                                      \\
        while (i < rows) {                                                              \\
            int left = rows - i;                                                        \\
            const T *ai = a + i * rsa;                                                  \\
            T *ci = c + i * ldc;                                                        \\
            if (TGM_MR > 8 && left >= 8) {                                              \\
                if (nv == 2) tgm_tile_##SFX##_8x2(kc, ai, rsa, csa, pb, ldb, ci, ldc, accumulate, 8, n); \\
                else tgm_tile_##SFX##_8x1(kc, ai, rsa, csa, pb, ldb, ci, ldc, accumulate, 8, n); \\
                i += 8;                                                                 \\
            } else if (left >= 4) {                                                     \\
                if (nv == 2) tgm_tile_##SFX##_4x2(kc, ai, rsa, csa, pb, ldb, ci, ldc, accumulate, 4, n); \\
                else tgm_tile_##SFX##_4x1(kc, ai, rsa, csa, pb, ldb, ci, ldc, accumulate, 4, n); \\
                i += 4;                                                                 \\
            } else if (left >= 2) {                                                     \\
                if (nv == 2) tgm_tile_##SFX##_2x2(kc, ai, rsa, csa, pb, ldb, ci, ldc, accumulate, 2, n); \\
                else tgm_tile_##SFX##_2x1(kc, ai, rsa, csa, pb, ldb, ci, ldc, accumulate, 2, n); \\
                i += 2;                                                                 \\
            } else {                                                                    \\
                if (nv == 2) tgm_tile_##SFX##_1x2(kc, ai, rsa, csa, pb, ldb, ci, ldc, accumulate, 1, n); \\
                else tgm_tile_##SFX##_1x1(kc, ai, rsa, csa, pb, ldb, ci, ldc, accumulate, 1, n); \\
                i += 1;                                                                 \\
            }                                                                           \\
        }                                                                               \\
    }                                                                                   \\
    TGM_INLINE void tgm_block_##SFX(ptrdiff_t mc, ptrdiff_t nc, ptrdiff_t kc,           \\
            const T *a, ptrdiff_t rsa, ptrdiff_t csa, ptrdiff_t panel_stride,           \\
            const T *pb, const T *b_direct, ptrdiff_t ldb_direct,                       \\
            T *c, ptrdiff_t ldc, int accumulate) {                                      \\
        enum { VL = TGM_VBYTES / (int)sizeof(T), NR = TGM_NV * VL };                    \\
        ptrdiff_t tail_ld = nc % NR > VL ? NR : VL;                                     \\
        /* jr outside ir (BLIS order): one B micro-panel (kc x NR) stays in L1 while   \\
           the A block streams past it from L2; the other order streams the whole B    \\
           block (KC x NC, larger than L2) once per MR rows of A */                    \\
        for (ptrdiff_t jr = 0; jr < nc; jr += NR) {                                     \\
            for (ptrdiff_t ir = 0; ir < mc; ir += TGM_MR) {                             \\
                const T *ap = a + (ir / TGM_MR) * panel_stride;                         \\
                int mrem = (int)(mc - ir < TGM_MR ? mc - ir : TGM_MR);                  \\
                int nrem = (int)(nc - jr < NR ? nc - jr : NR);                          \\
                int nv = nrem > VL ? 2 : 1;                                             \\
                ptrdiff_t j0 = jr;                                                      \\
                const T *bp;                                                            \\
                ptrdiff_t ldb = NR;                                                     \\
                if (b_direct == NULL) bp = pb + jr * kc;   /* all of B packed */        \\
                else if (nrem == NR) { bp = b_direct + jr; ldb = ldb_direct; }          \\
                else if (nc >= nv * VL) {                                               \\
                    /* tail read in place as a full tile ending at column nc: the      \\
                       columns it shares with the previous tile get the same sums in   \\
                       the same order, so writing them twice changes nothing */        \\
                    j0 = nc - nv * VL; nrem = nv * VL;                                  \\
                    bp = b_direct + j0; ldb = ldb_direct;                               \\
                } else { bp = pb; ldb = tail_ld; }         /* narrower than a vector */ \\
                T *cp = c + ir * ldc + j0;                                              \\
                if (mrem == TGM_MR) {                                                   \\
                    if (nv == 2) tgm_tile_##SFX##_main2(kc, ap, rsa, csa, bp, ldb, cp, ldc, accumulate, TGM_MR, nrem); \\
                    else tgm_tile_##SFX##_main1(kc, ap, rsa, csa, bp, ldb, cp, ldc, accumulate, TGM_MR, nrem); \\
                } else {                                                                \\
                    tgm_rows_##SFX(mrem, kc, ap, rsa, csa, bp, ldb, cp, ldc, accumulate, nrem, nv); \\
                }                                                                       \\
            }                                                                           \\
        }                                                                               \\
    }                                                                                   \\
    /* A and B packed (constant strides let gcc use immediate offsets) */              \\
    static TGM_NO_MEMCPY void tgm_block_packed_##SFX(ptrdiff_t mc, ptrdiff_t nc, ptrdiff_t kc,        \\
            const T *pa, const T *pb, T *c, ptrdiff_t ldc, int accumulate) {            \\
        tgm_block_##SFX(mc, nc, kc, pa, 1, TGM_MR, TGM_MR * kc, pb, NULL, 0, c, ldc,    \\
                        accumulate);                                                    \\
    }                                                                                   \\
    /* Small products: A read in place through its strides; B either packed whole     \\
       (b == NULL) or, when its rows are contiguous, read in place (a partial last     \\
       panel too, shifted left to end at column n, when n is at least one vector wide; \\
       else it is packed into pb by tgm_pack_tail). accumulate is 0: C is written. */  \\
    static TGM_NO_MEMCPY void tgm_block_direct_##SFX(ptrdiff_t mc, ptrdiff_t nc, ptrdiff_t kc,        \\
            const T *a, ptrdiff_t sam, ptrdiff_t sak, const T *pb, const T *b,          \\
            ptrdiff_t sbk, T *c, ptrdiff_t ldc) {                                       \\
        tgm_block_##SFX(mc, nc, kc, a, sam, sak, TGM_MR * sam, pb, b, sbk, c, ldc, 0);  \\
    }

    /* The last, partial column panel of a row-contiguous B (cols < NR columns from
       src, rows sbk apart), packed k-major with a row length of one vector when it fits
       in one (else two), zero-padded: what tgm_block reads as its tail panel. */
    #define TGM_DEFINE_PACK_TAIL(T, SFX)                                                 \\
    static TGM_NO_MEMCPY void tgm_pack_tail_##SFX(T *restrict dst, const T *restrict src,             \\
            ptrdiff_t kc, int cols, ptrdiff_t sbk) {                                    \\
        enum { VL = TGM_VBYTES / (int)sizeof(T), NR = TGM_NV * VL };                    \\
        int width = cols > VL ? NR : VL;                                                \\
        for (ptrdiff_t p = 0; p < kc; p++) {                                            \\
            T *d = dst + p * width;                                                     \\
            const T *s = src + p * sbk;                                                 \\
            int j = 0;                                                                  \\
            for (; j < cols; j++) d[j] = s[j];                                          \\
            for (; j < width; j++) d[j] = 0;                                            \\
        }                                                                               \\
    }

    typedef float tgm_vf32 __attribute__((vector_size(TGM_VBYTES)));
    typedef double tgm_vf64 __attribute__((vector_size(TGM_VBYTES)));
    typedef float tgm_hf32 __attribute__((vector_size(TGM_VBYTES / 2)));   /* half vectors */
    typedef double tgm_hf64 __attribute__((vector_size(TGM_VBYTES / 2)));

    /* c + a * b, one rounding (FMA) where the ISA has it. Written out because gcc
       contracted "acc += a * b" in every tile but the 1-row, 1-vector one, which then
       rounded twice: a product's last odd row then depended on how many columns the
       product had (a column of C must not depend on the others: the conv's chunked
       schedule relies on it, tests/test_conv_chunked.py). */
    #if defined(__FMA__) && TGM_VBYTES == 32
    #include <immintrin.h>
    #define TGM_VFMA_f32(a, b, c) ((tgm_vf32)_mm256_fmadd_ps((__m256)(a), (__m256)(b), (__m256)(c)))
    #define TGM_VFMA_f64(a, b, c) ((tgm_vf64)_mm256_fmadd_pd((__m256d)(a), (__m256d)(b), (__m256d)(c)))
    #elif defined(__AVX512F__) && TGM_VBYTES == 64
    #include <immintrin.h>
    #define TGM_VFMA_f32(a, b, c) ((tgm_vf32)_mm512_fmadd_ps((__m512)(a), (__m512)(b), (__m512)(c)))
    #define TGM_VFMA_f64(a, b, c) ((tgm_vf64)_mm512_fmadd_pd((__m512d)(a), (__m512d)(b), (__m512d)(c)))
    #else
    #define TGM_VFMA_f32(a, b, c) ((c) + (a) * (b))
    #define TGM_VFMA_f64(a, b, c) ((c) + (a) * (b))
    #endif

    #if TGM_MR == 12
    #define TGM_DEFINE_ALL_TILES(T, SFX)                                                  \\
        TGM_DEFINE_TILE(T, SFX, 12, 2) TGM_DEFINE_TILE(T, SFX, 12, 1)
    #define tgm_tile_f32_main2 tgm_tile_f32_12x2
    #define tgm_tile_f32_main1 tgm_tile_f32_12x1
    #define tgm_tile_f64_main2 tgm_tile_f64_12x2
    #define tgm_tile_f64_main1 tgm_tile_f64_12x1
    #elif TGM_MR == 6
    #define TGM_DEFINE_ALL_TILES(T, SFX)                                                  \\
        TGM_DEFINE_TILE(T, SFX, 6, 2) TGM_DEFINE_TILE(T, SFX, 6, 1)
    #define tgm_tile_f32_main2 tgm_tile_f32_6x2
    #define tgm_tile_f32_main1 tgm_tile_f32_6x1
    #define tgm_tile_f64_main2 tgm_tile_f64_6x2
    #define tgm_tile_f64_main1 tgm_tile_f64_6x1
    #else
    #error "TGM_MR must be 12 or 6"
    #endif

    #define TGM_DEFINE_EDGE_TILES(T, SFX)                                                 \\
        TGM_DEFINE_TILE(T, SFX, 8, 2) TGM_DEFINE_TILE(T, SFX, 8, 1)                      \\
        TGM_DEFINE_TILE(T, SFX, 4, 2) TGM_DEFINE_TILE(T, SFX, 4, 1)                      \\
        TGM_DEFINE_TILE(T, SFX, 2, 2) TGM_DEFINE_TILE(T, SFX, 2, 1)                      \\
        TGM_DEFINE_TILE(T, SFX, 1, 2) TGM_DEFINE_TILE(T, SFX, 1, 1)

    TGM_DEFINE_ALL_TILES(float, f32)
    TGM_DEFINE_EDGE_TILES(float, f32)
    TGM_DEFINE_ALL_TILES(double, f64)
    TGM_DEFINE_EDGE_TILES(double, f64)
    TGM_DEFINE_MACRO(float, f32)
    TGM_DEFINE_MACRO(double, f64)
    TGM_DEFINE_PACK_TAIL(float, f32)
    TGM_DEFINE_PACK_TAIL(double, f64)

    /* Packing a row-contiguous B (sbn == 1) into NR-column panels: row by row, so B is
       read as it lies, each row's NR-wide slices going to consecutive panels as
       fixed-size copies (two vector moves); the last, partial panel zero-padded.
       Element-by-element copies with a run-time width took 1/3 of a (64 x 576) @
       (576 x 392) product, the conv's forward on one chunk (perf). */
    #define TGM_DEFINE_PACK_ROWS(T, SFX)                                                 \\
    static TGM_NO_MEMCPY void tgm_pack_b_rows_##SFX(T *restrict dst, const T *restrict b, \\
            ptrdiff_t kc, ptrdiff_t nc, ptrdiff_t sbk) {                                \\
        enum { NR = TGM_NV * TGM_VBYTES / (int)sizeof(T) };                             \\
        ptrdiff_t full = nc / NR * NR;                                                  \\
        for (ptrdiff_t p = 0; p < kc; p++) {                                            \\
            const T *restrict src = b + p * sbk;                                        \\
            T *restrict out = dst + p * NR;                                             \\
            for (ptrdiff_t jr = 0; jr < full; jr += NR)                                 \\
                __builtin_memcpy(out + jr * kc, src + jr, sizeof(T) * NR);              \\
            if (full < nc) {                                                            \\
                T *restrict tail = out + full * kc;                                     \\
                ptrdiff_t j = 0;                                                        \\
                for (; j < nc - full; j++) tail[j] = src[full + j];                     \\
                for (; j < NR; j++) tail[j] = 0;                                        \\
            }                                                                           \\
        }                                                                               \\
    }
    TGM_DEFINE_PACK_ROWS(float, f32)
    TGM_DEFINE_PACK_ROWS(double, f64)

    /* The sum of a vector's lanes, as a tree (adding lane by lane would be a chain of
       VL dependent adds). With AVX the halves are split by register extracts: going
       through memory would stall on store forwarding. */
    #if defined(__AVX__)
    #include <immintrin.h>
    TGM_INLINE float tgm_hsum128_f32(__m128 x) {
        x = _mm_add_ps(x, _mm_movehl_ps(x, x));
        return _mm_cvtss_f32(_mm_add_ss(x, _mm_shuffle_ps(x, x, 1)));
    }
    TGM_INLINE float tgm_hsum256_f32(__m256 v) {
        return tgm_hsum128_f32(_mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1)));
    }
    TGM_INLINE double tgm_hsum128_f64(__m128d x) {
        return _mm_cvtsd_f64(_mm_add_sd(x, _mm_unpackhi_pd(x, x)));
    }
    TGM_INLINE double tgm_hsum256_f64(__m256d v) {
        return tgm_hsum128_f64(_mm_add_pd(_mm256_castpd256_pd128(v), _mm256_extractf128_pd(v, 1)));
    }
    #endif
    #if defined(__AVX512F__)
    TGM_INLINE float tgm_hsum_f32(tgm_vf32 v) { return _mm512_reduce_add_ps((__m512)v); }
    TGM_INLINE double tgm_hsum_f64(tgm_vf64 v) { return _mm512_reduce_add_pd((__m512d)v); }
    TGM_INLINE float tgm_hsum_half_f32(tgm_hf32 v) { return tgm_hsum256_f32((__m256)v); }
    TGM_INLINE double tgm_hsum_half_f64(tgm_hf64 v) { return tgm_hsum256_f64((__m256d)v); }
    #elif defined(__AVX__)
    TGM_INLINE float tgm_hsum_f32(tgm_vf32 v) { return tgm_hsum256_f32((__m256)v); }
    TGM_INLINE double tgm_hsum_f64(tgm_vf64 v) { return tgm_hsum256_f64((__m256d)v); }
    TGM_INLINE float tgm_hsum_half_f32(tgm_hf32 v) { return tgm_hsum128_f32((__m128)v); }
    TGM_INLINE double tgm_hsum_half_f64(tgm_hf64 v) { return tgm_hsum128_f64((__m128d)v); }
    #else
    #define TGM_DEFINE_HSUM_LOOP(T, SFX, VT, NAME)                                       \\
    TGM_INLINE T NAME(VT v) {                                                            \\
        T s = 0;                                                                         \\
        for (int l = 0; l < (int)(sizeof(VT) / sizeof(T)); l++) s += v[l];               \\
        return s;                                                                        \\
    }
    TGM_DEFINE_HSUM_LOOP(float, f32, tgm_vf32, tgm_hsum_f32)
    TGM_DEFINE_HSUM_LOOP(double, f64, tgm_vf64, tgm_hsum_f64)
    TGM_DEFINE_HSUM_LOOP(float, f32, tgm_hf32, tgm_hsum_half_f32)
    TGM_DEFINE_HSUM_LOOP(double, f64, tgm_hf64, tgm_hsum_half_f64)
    #endif

    /* Packing a B whose columns are contiguous (a transposed view, sbk == 1) into
       NR-column panels means transposing it. With AVX that is done in 8x8 (float) or
       4x4 (double) register blocks; edges and other ISAs go element by element. */
    #define TGM_PACK_BT_EDGE(T)                                                          \\
        for (; j < cols; j++)                                                            \\
            for (int q = 0; q < BLK; q++) panel[(p + q) * nr + j] = b[(jr + j) * sbn + p + q]; \\
        for (; j < nr; j++)                                                              \\
            for (int q = 0; q < BLK; q++) panel[(p + q) * nr + j] = 0;
    static TGM_NO_MEMCPY void tgm_pack_bt_f32(float *restrict dst, const float *restrict b,
            ptrdiff_t kc, ptrdiff_t nc, ptrdiff_t sbn, ptrdiff_t nr) {
        enum { BLK = 8 };
        for (ptrdiff_t jr = 0; jr < nc; jr += nr) {
            float *panel = dst + jr * kc;
            ptrdiff_t cols = nc - jr < nr ? nc - jr : nr, p = 0, j;
    #if defined(__AVX__)
            for (; p + BLK <= kc; p += BLK) {
                for (j = 0; j + BLK <= cols; j += BLK) {
                    const float *src = b + (jr + j) * sbn + p;
                    __m256 r0 = _mm256_loadu_ps(src), r1 = _mm256_loadu_ps(src + sbn);
                    __m256 r2 = _mm256_loadu_ps(src + 2 * sbn), r3 = _mm256_loadu_ps(src + 3 * sbn);
                    __m256 r4 = _mm256_loadu_ps(src + 4 * sbn), r5 = _mm256_loadu_ps(src + 5 * sbn);
                    __m256 r6 = _mm256_loadu_ps(src + 6 * sbn), r7 = _mm256_loadu_ps(src + 7 * sbn);
                    __m256 t0 = _mm256_unpacklo_ps(r0, r1), t1 = _mm256_unpackhi_ps(r0, r1);
                    __m256 t2 = _mm256_unpacklo_ps(r2, r3), t3 = _mm256_unpackhi_ps(r2, r3);
                    __m256 t4 = _mm256_unpacklo_ps(r4, r5), t5 = _mm256_unpackhi_ps(r4, r5);
                    __m256 t6 = _mm256_unpacklo_ps(r6, r7), t7 = _mm256_unpackhi_ps(r6, r7);
                    __m256 s0 = _mm256_shuffle_ps(t0, t2, 0x44), s1 = _mm256_shuffle_ps(t0, t2, 0xEE);
                    __m256 s2 = _mm256_shuffle_ps(t1, t3, 0x44), s3 = _mm256_shuffle_ps(t1, t3, 0xEE);
                    __m256 s4 = _mm256_shuffle_ps(t4, t6, 0x44), s5 = _mm256_shuffle_ps(t4, t6, 0xEE);
                    __m256 s6 = _mm256_shuffle_ps(t5, t7, 0x44), s7 = _mm256_shuffle_ps(t5, t7, 0xEE);
                    float *out = panel + p * nr + j;
                    _mm256_storeu_ps(out, _mm256_permute2f128_ps(s0, s4, 0x20));
                    _mm256_storeu_ps(out + nr, _mm256_permute2f128_ps(s1, s5, 0x20));
                    _mm256_storeu_ps(out + 2 * nr, _mm256_permute2f128_ps(s2, s6, 0x20));
                    _mm256_storeu_ps(out + 3 * nr, _mm256_permute2f128_ps(s3, s7, 0x20));
                    _mm256_storeu_ps(out + 4 * nr, _mm256_permute2f128_ps(s0, s4, 0x31));
                    _mm256_storeu_ps(out + 5 * nr, _mm256_permute2f128_ps(s1, s5, 0x31));
                    _mm256_storeu_ps(out + 6 * nr, _mm256_permute2f128_ps(s2, s6, 0x31));
                    _mm256_storeu_ps(out + 7 * nr, _mm256_permute2f128_ps(s3, s7, 0x31));
                }
                TGM_PACK_BT_EDGE(float)
            }
    #endif
            for (; p < kc; p++) {
                for (j = 0; j < cols; j++) panel[p * nr + j] = b[(jr + j) * sbn + p];
                for (; j < nr; j++) panel[p * nr + j] = 0;
            }
        }
    }
    static TGM_NO_MEMCPY void tgm_pack_bt_f64(double *restrict dst, const double *restrict b,
            ptrdiff_t kc, ptrdiff_t nc, ptrdiff_t sbn, ptrdiff_t nr) {
        enum { BLK = 4 };
        for (ptrdiff_t jr = 0; jr < nc; jr += nr) {
            double *panel = dst + jr * kc;
            ptrdiff_t cols = nc - jr < nr ? nc - jr : nr, p = 0, j;
    #if defined(__AVX__)
            for (; p + BLK <= kc; p += BLK) {
                for (j = 0; j + BLK <= cols; j += BLK) {
                    const double *src = b + (jr + j) * sbn + p;
                    __m256d r0 = _mm256_loadu_pd(src), r1 = _mm256_loadu_pd(src + sbn);
                    __m256d r2 = _mm256_loadu_pd(src + 2 * sbn), r3 = _mm256_loadu_pd(src + 3 * sbn);
                    __m256d t0 = _mm256_unpacklo_pd(r0, r1), t1 = _mm256_unpackhi_pd(r0, r1);
                    __m256d t2 = _mm256_unpacklo_pd(r2, r3), t3 = _mm256_unpackhi_pd(r2, r3);
                    double *out = panel + p * nr + j;
                    _mm256_storeu_pd(out, _mm256_permute2f128_pd(t0, t2, 0x20));
                    _mm256_storeu_pd(out + nr, _mm256_permute2f128_pd(t1, t3, 0x20));
                    _mm256_storeu_pd(out + 2 * nr, _mm256_permute2f128_pd(t0, t2, 0x31));
                    _mm256_storeu_pd(out + 3 * nr, _mm256_permute2f128_pd(t1, t3, 0x31));
                }
                TGM_PACK_BT_EDGE(double)
            }
    #endif
            for (; p < kc; p++) {
                for (j = 0; j < cols; j++) panel[p * nr + j] = b[(jr + j) * sbn + p];
                for (; j < nr; j++) panel[p * nr + j] = 0;
            }
        }
    }

    /* Degenerate shapes without packing: n == 1 (matrix-vector) and tiny k or n, for
       row-contiguous B and C. */
    #define TGM_DEFINE_SMALL(T, SFX)                                                     \\
    static void tgm_small_##SFX(ptrdiff_t m, ptrdiff_t n, ptrdiff_t k,                   \\
            const T *a, ptrdiff_t sam, ptrdiff_t sak,                                    \\
            const T *b, ptrdiff_t sbk, T *restrict c) {                                  \\
        if (n == 1 && sam == 1) {                                                        \\
            /* matrix-vector with A's columns contiguous (a transposed view):           \\
               c = sum_p A[:, p] b[p] as axpy updates along m, which gcc vectorises */  \\
            T b0 = b[0];                                                                 \\
            for (ptrdiff_t i = 0; i < m; i++) c[i] = a[i] * b0;                          \\
            for (ptrdiff_t p = 1; p < k; p++) {                                          \\
                const T *restrict ap = a + p * sak;                                      \\
                T bp = b[p * sbk];                                                       \\
                for (ptrdiff_t i = 0; i < m; i++) c[i] += ap[i] * bp;                    \\
            }                                                                            \\
            return;                                                                      \\
        }                                                                                \\
        if (n == 1) {                                                                    \\
            enum { VL = TGM_VBYTES / (int)sizeof(T) };                                   \\
            ptrdiff_t i = 0;                                                             \\
            if (sak == 1 && sbk == 1) {                                                  \\
                /* rows of A and the vector contiguous: four rows at a time, each with   \\
                   a vector of partial sums along k */                                   \\
                for (; i + 4 <= m; i += 4) {                                             \\
                    tgm_v##SFX acc[4] = {{0}};                                           \\
                    ptrdiff_t p = 0;                                                     \\
                    for (; p + VL <= k; p += VL) {                                       \\
                        tgm_v##SFX x;                                                    \\
                        memcpy(&x, b + p, sizeof(x));                                    \\
                        _Pragma("GCC unroll 4")                                          \\
                        for (int r = 0; r < 4; r++) {                                    \\
                            tgm_v##SFX ar;                                               \\
                            memcpy(&ar, a + (i + r) * sam + p, sizeof(ar));              \\
                            acc[r] += ar * x;                                            \\
                        }                                                                \\
                    }                                                                    \\
                    /* a half-vector step for the tail, then a tree sum of the lanes */ \\
                    tgm_h##SFX half[4] = {{0}};                                          \\
                    if (p + VL / 2 <= k) {                                               \\
                        tgm_h##SFX x;                                                    \\
                        memcpy(&x, b + p, sizeof(x));                                    \\
                        _Pragma("GCC unroll 4")                                          \\
                        for (int r = 0; r < 4; r++) {                                    \\
                            tgm_h##SFX ar;                                               \\
                            memcpy(&ar, a + (i + r) * sam + p, sizeof(ar));              \\
                            half[r] = ar * x;                                            \\
                        }                                                                \\
                        p += VL / 2;                                                     \\
                    }                                                                    \\
                    /* unrolled so that acc and half stay in registers */             \\
                    _Pragma("GCC unroll 4")                                              \\
                    for (int r = 0; r < 4; r++) {                                        \\
                        const T *ar = a + (i + r) * sam;                                 \\
                        T s = tgm_hsum_##SFX(acc[r]) + tgm_hsum_half_##SFX(half[r]);      \\
                        for (ptrdiff_t q = p; q < k; q++) s += ar[q] * b[q];             \\
                        c[i + r] = s;                                                    \\
                    }                                                                    \\
                }                                                                        \\
            }                                                                            \\
            /* any strides (and the last rows): 8 independent partial sums per row */   \\
            for (; i < m; i++) {                                                         \\
                const T *ai = a + i * sam;                                               \\
                T acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};                                     \\
                ptrdiff_t p = 0;                                                         \\
                for (; p + 8 <= k; p += 8) {                                             \\
                    _Pragma("GCC unroll 8")                                              \\
                    for (int l = 0; l < 8; l++)                                          \\
                        acc[l] += ai[(p + l) * sak] * b[(p + l) * sbk];                  \\
                }                                                                        \\
                T s = ((acc[0] + acc[1]) + (acc[2] + acc[3]))                            \\
                      + ((acc[4] + acc[5]) + (acc[6] + acc[7]));                         \\
                for (; p < k; p++) s += ai[p * sak] * b[p * sbk];                        \\
                c[i] = s;                                                                \\
            }                                                                            \\
            return;                                                                      \\
        }                                                                                \\
        for (ptrdiff_t i = 0; i < m; i++) {                                              \\
            T *restrict ci = c + i * n;                                                  \\
            const T *ai = a + i * sam;                                                   \\
            T a0 = ai[0];                                                                \\
            for (ptrdiff_t j = 0; j < n; j++) ci[j] = a0 * b[j];                         \\
            for (ptrdiff_t p = 1; p < k; p++) {                                          \\
                T ap = ai[p * sak];                                                      \\
                const T *restrict bp = b + p * sbk;                                      \\
                for (ptrdiff_t j = 0; j < n; j++) ci[j] += ap * bp[j];                   \\
            }                                                                            \\
        }                                                                                \\
    }
    TGM_DEFINE_SMALL(float, f32)
    TGM_DEFINE_SMALL(double, f64)

    """
    int TGM_MR
    int TGM_NR_F32
    int TGM_NR_F64
    int TGM_VBYTES
    int TGM_OPENMP
    const char *TGM_CFLAGS
    int tgm_max_threads() nogil
    void *tgm_aligned_alloc(size_t nbytes) nogil
    void tgm_block_packed_f32(Py_ssize_t mc, Py_ssize_t nc, Py_ssize_t kc, const float *pa,
                              const float *pb, float *c, Py_ssize_t ldc, int accumulate) nogil
    void tgm_block_packed_f64(Py_ssize_t mc, Py_ssize_t nc, Py_ssize_t kc, const double *pa,
                              const double *pb, double *c, Py_ssize_t ldc, int accumulate) nogil
    void tgm_block_direct_f32(Py_ssize_t mc, Py_ssize_t nc, Py_ssize_t kc, const float *a,
                              Py_ssize_t sam, Py_ssize_t sak, const float *pb, const float *b,
                              Py_ssize_t sbk, float *c, Py_ssize_t ldc) nogil
    void tgm_block_direct_f64(Py_ssize_t mc, Py_ssize_t nc, Py_ssize_t kc, const double *a,
                              Py_ssize_t sam, Py_ssize_t sak, const double *pb, const double *b,
                              Py_ssize_t sbk, double *c, Py_ssize_t ldc) nogil
    void tgm_pack_bt_f32(float *dst, const float *b, Py_ssize_t kc, Py_ssize_t nc,
                         Py_ssize_t sbn, Py_ssize_t nr) nogil
    void tgm_pack_bt_f64(double *dst, const double *b, Py_ssize_t kc, Py_ssize_t nc,
                         Py_ssize_t sbn, Py_ssize_t nr) nogil
    void tgm_pack_tail_f32(float *dst, const float *src, Py_ssize_t kc, int cols,
                           Py_ssize_t sbk) nogil
    void tgm_pack_b_rows_f32(float *dst, const float *b, Py_ssize_t kc, Py_ssize_t nc,
                             Py_ssize_t sbk) nogil
    void tgm_pack_b_rows_f64(double *dst, const double *b, Py_ssize_t kc, Py_ssize_t nc,
                             Py_ssize_t sbk) nogil
    void tgm_pack_tail_f64(double *dst, const double *src, Py_ssize_t kc, int cols,
                           Py_ssize_t sbk) nogil
    void tgm_small_f32(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const float *a,
                       Py_ssize_t sam, Py_ssize_t sak, const float *b, Py_ssize_t sbk,
                       float *c) nogil
    void tgm_small_f64(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k, const double *a,
                       Py_ssize_t sam, Py_ssize_t sak, const double *b, Py_ssize_t sbk,
                       double *c) nogil

ctypedef fused real:
    float
    double

# Cache blocking. KC bounds a B micro-panel (KC x NR: 32 KiB f32 and f64 at most; K is
# cut into equal blocks, so K = 576 runs two of 288, 18 KiB) that stays in L1 while the
# A block streams past it (KC = 192-512 measured alike at the conv's products). NC is large: on the Zen 4 we tuned on
# (1 MiB L2, 32 MiB L3) a B block bigger than L2 still streams fast from L3, and every
# extra NC block repacks all of A (measured, one thread, n = 1024-2048: NC = 2048
# beat 512 by 5-10%). MC only bounds the A buffer: A panels stream once per B block.
cdef Py_ssize_t KC_F32 = 512
cdef Py_ssize_t KC_F64 = 256
cdef Py_ssize_t NC_BLOCK = 2048
cdef Py_ssize_t MC_BLOCK = 192

# Threads run only when the product has at least this many multiply-adds: below it
# waking the pool costs more than a second core saves. Our idle workers sleep after
# a short spin (the backend sets GOMP_SPINCOUNT), so a region may pay a futex
# wake-up: microseconds on an idle machine, ~100 us when other processes hold the
# cores. 160^3 (~45 us on one Zen 4 core) is the default; auto mode measures and
# resets it.
cdef double THREAD_MIN_WORK = 160.0 * 160.0 * 160.0
cdef int _num_threads = 0          # 0: use omp_get_max_threads()
# Work items per thread for a threaded product (see _gemm_batched).
cdef Py_ssize_t ITEMS_PER_THREAD = 2

# Products whose A has at most this many elements (and K <= KC, N <= NC) read A in
# place instead of packing it: A then sits in L1/L2 and packing would cost more than
# the strided broadcasts it saves.
cdef Py_ssize_t DIRECT_MAX_A = 128 * 128

MR = TGM_MR
NR_F32 = TGM_NR_F32
NR_F64 = TGM_NR_F64

BUILD_INFO = {
    "cflags": TGM_CFLAGS.decode("ascii"),
    "openmp": bool(TGM_OPENMP),
    "vector_bits": TGM_VBYTES * 8,
    "micro_tile_f32": (TGM_MR, TGM_NR_F32),
    "micro_tile_f64": (TGM_MR, TGM_NR_F64),
    "max_threads": tgm_max_threads(),
}


def set_blocking(Py_ssize_t kc_f32=0, Py_ssize_t kc_f64=0, Py_ssize_t nc=0, Py_ssize_t mc=0,
                 Py_ssize_t direct_max_a=-1):
    """Override the cache-block sizes (0 keeps a value) and the largest A (elements)
    read in place (-1 keeps it, 0 always packs); returns the old
    (kc_f32, kc_f64, nc, mc, direct_max_a), so ``set_blocking(*old)`` restores them.
    For tuning on a new machine, and for tests that force every code path."""
    global KC_F32, KC_F64, NC_BLOCK, MC_BLOCK, DIRECT_MAX_A
    old = (KC_F32, KC_F64, NC_BLOCK, MC_BLOCK, DIRECT_MAX_A)
    if direct_max_a >= 0:
        DIRECT_MAX_A = direct_max_a
    if kc_f32 > 0:
        KC_F32 = kc_f32
    if kc_f64 > 0:
        KC_F64 = kc_f64
    if nc > 0:
        NC_BLOCK = _round_up(nc, TGM_NR_F32)
    if mc > 0:
        MC_BLOCK = _round_up(mc, TGM_MR)
    return old


def set_thread_min_work(double work):
    """Run products with at least ``work`` multiply-adds on threads (smaller ones on
    one); returns the old threshold."""
    global THREAD_MIN_WORK
    old = THREAD_MIN_WORK
    THREAD_MIN_WORK = work
    return old


def get_thread_min_work():
    """The smallest product (multiply-adds) that runs on threads."""
    return THREAD_MIN_WORK


def set_num_threads(int n):
    """Use at most ``n`` OpenMP threads (n <= 0: the OpenMP default). Returns the old value."""
    global _num_threads
    old = _num_threads
    _num_threads = n
    return old


def get_num_threads():
    """The number of threads a large product runs on."""
    return _num_threads if _num_threads > 0 else tgm_max_threads()


cdef inline Py_ssize_t _min(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return a if a < b else b


cdef inline Py_ssize_t _round_up(Py_ssize_t a, Py_ssize_t b) noexcept nogil:
    return (a + b - 1) // b * b


cdef void _pack_a(real *dst, const real *a, Py_ssize_t mc, Py_ssize_t kc,
                  Py_ssize_t sam, Py_ssize_t sak) noexcept nogil:
    """Pack an mc x kc block of A (element strides sam, sak) into MR-row panels,
    k-major inside a panel; rows past mc are zero."""
    cdef Py_ssize_t ir, i, p, mr = TGM_MR, rows
    cdef real *panel
    cdef const real *src
    ir = 0
    while ir < mc:
        panel = dst + ir * kc
        rows = _min(mr, mc - ir)
        if rows < mr:
            memset(panel, 0, mr * kc * sizeof(real))
        if sak == 1:
            # rows of A are contiguous: read along k, write with stride MR
            for i in range(rows):
                src = a + (ir + i) * sam
                for p in range(kc):
                    panel[p * mr + i] = src[p]
        else:
            for p in range(kc):
                src = a + ir * sam + p * sak
                for i in range(rows):
                    panel[p * mr + i] = src[i * sam]
        ir += mr


cdef void _pack_b(real *dst, const real *b, Py_ssize_t kc, Py_ssize_t nc,
                  Py_ssize_t sbk, Py_ssize_t sbn, Py_ssize_t nr) noexcept nogil:
    """Pack a kc x nc block of B (element strides sbk, sbn) into NR-column panels,
    k-major inside a panel; columns past nc are zero."""
    cdef Py_ssize_t jr, j, p, cols
    cdef real *panel
    cdef const real *src
    if sbk == 1 and sbn != 1:
        # B's columns are contiguous: a transpose, done in register blocks
        if real is float:
            tgm_pack_bt_f32(dst, b, kc, nc, sbn, nr)
        else:
            tgm_pack_bt_f64(dst, b, kc, nc, sbn, nr)
        return
    if sbn == 1:
        # rows contiguous: row by row, fixed-size slice copies (nr is always TGM_NR_*)
        if real is float:
            tgm_pack_b_rows_f32(dst, b, kc, nc, sbk)
        else:
            tgm_pack_b_rows_f64(dst, b, kc, nc, sbk)
        return
    jr = 0
    while jr < nc:
        panel = dst + jr * kc
        cols = _min(nr, nc - jr)
        if cols < nr:
            memset(panel, 0, nr * kc * sizeof(real))
        # any other strides: read along k
        for j in range(cols):
            src = b + (jr + j) * sbn
            for p in range(kc):
                panel[p * nr + j] = src[p * sbk]
        jr += nr


cdef void _gemm_block(Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                      const real *a, Py_ssize_t sam, Py_ssize_t sak,
                      const real *b, Py_ssize_t sbk, Py_ssize_t sbn,
                      real *c, Py_ssize_t ldc, real *pa, real *pb) noexcept nogil:
    """C[m, n] = A[m, k] @ B[k, n] on one thread, with the given packing buffers
    (pa: MC x KC, pb: KC x NC, rounded up to whole panels). Requires k >= 1."""
    cdef Py_ssize_t nr, kc_max, kc_step, jc, pc, ic, nc, kc, mc
    cdef int accumulate
    if real is float:
        nr = TGM_NR_F32
        kc_max = KC_F32
    else:
        nr = TGM_NR_F64
        kc_max = KC_F64
    # K in equal blocks of at most kc_max (576 = 288 + 288, not 512 + 64: a short last
    # block pays a whole pass of C loads and stores for little work; 5-7% at the conv's
    # (64, 576) @ (576, 392) chunk product)
    kc_step = (k + (k + kc_max - 1) // kc_max - 1) // ((k + kc_max - 1) // kc_max)
    jc = 0
    while jc < n:
        nc = _min(NC_BLOCK, n - jc)
        pc = 0
        while pc < k:
            kc = _min(kc_step, k - pc)
            accumulate = pc > 0
            _pack_b(pb, b + pc * sbk + jc * sbn, kc, nc, sbk, sbn, nr)
            ic = 0
            while ic < m:
                mc = _min(MC_BLOCK, m - ic)
                _pack_a(pa, a + ic * sam + pc * sak, mc, kc, sam, sak)
                if real is float:
                    tgm_block_packed_f32(mc, nc, kc, pa, pb, c + ic * ldc + jc, ldc, accumulate)
                else:
                    tgm_block_packed_f64(mc, nc, kc, pa, pb, c + ic * ldc + jc, ldc, accumulate)
                ic += MC_BLOCK
            pc += kc_step
        jc += NC_BLOCK


cdef int _gemm_batched(Py_ssize_t batch, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
                       const real *a, Py_ssize_t sab, Py_ssize_t sam, Py_ssize_t sak,
                       const real *b, Py_ssize_t sbb, Py_ssize_t sbk, Py_ssize_t sbn,
                       real *c) noexcept nogil:
    """C[t] = A[t] @ B[t] for t < batch; C is C-contiguous (batch, m, n). Strides are
    in elements and may be zero (broadcast) or negative. Returns -1 if out of memory."""
    cdef Py_ssize_t nr, kc_max, pa_size, pb_size, slab_rows, slab_cols, items, item
    cdef Py_ssize_t t, r0, c0, rows, cols, n_full, needed, max_m, max_n, slabs_m, slabs_n
    cdef int nthreads, failed = 0
    cdef real *pa
    cdef real *pb
    cdef double work = <double>batch * m * n * k
    if real is float:
        nr = TGM_NR_F32
        kc_max = KC_F32
    else:
        nr = TGM_NR_F64
        kc_max = KC_F64

    # Degenerate shapes (matrix-vector, tiny K or N) with row-contiguous B: the
    # unpacked loops beat any tiling.
    if sbn == 1 and (n == 1 or k <= 2 or n <= 4):
        for t in range(batch):
            if real is float:
                tgm_small_f32(m, n, k, a + t * sab, sam, sak, b + t * sbb, sbk, c + t * m * n)
            else:
                tgm_small_f64(m, n, k, a + t * sab, sam, sak, b + t * sbb, sbk, c + t * m * n)
        return 0

    # Small products (the MAML scale): read A in place, and B too where its rows are
    # contiguous (then only its last, partial NR-column panel is packed).
    if k <= kc_max and n <= NC_BLOCK and m * k <= DIRECT_MAX_A and work < THREAD_MIN_WORK:
        n_full = n // nr * nr if sbn == 1 else 0
        if sbn == 1 and (n >= nr or n == nr // 2):
            n_full = n     # the tail is read in place too (see tgm_block_##SFX)
        pb = <real *>tgm_aligned_alloc(_round_up(n - n_full, nr) * k * sizeof(real))
        if pb == NULL:
            return -1
        for t in range(batch):
            if n_full < n and (t == 0 or sbb != 0):    # a broadcast B is packed once
                if sbn != 1:
                    _pack_b(pb, b + t * sbb, k, n, sbk, sbn, nr)
                elif real is float:
                    tgm_pack_tail_f32(pb, b + t * sbb + n_full, k, <int>(n - n_full), sbk)
                else:
                    tgm_pack_tail_f64(pb, b + t * sbb + n_full, k, <int>(n - n_full), sbk)
            if real is float:
                tgm_block_direct_f32(m, n, k, a + t * sab, sam, sak, pb,
                                     b + t * sbb if sbn == 1 else NULL, sbk, c + t * m * n, n)
            else:
                tgm_block_direct_f64(m, n, k, a + t * sab, sam, sak, pb,
                                     b + t * sbb if sbn == 1 else NULL, sbk, c + t * m * n, n)
        free(pb)
        return 0

    nthreads = _num_threads if _num_threads > 0 else tgm_max_threads()
    if work < THREAD_MIN_WORK:
        nthreads = 1
    pa_size = _round_up(_min(MC_BLOCK, m), TGM_MR) * _min(kc_max, k)
    pb_size = _round_up(_min(NC_BLOCK, n), nr) * _min(kc_max, k)

    if nthreads <= 1:
        pa = <real *>tgm_aligned_alloc(pa_size * sizeof(real))
        pb = <real *>tgm_aligned_alloc(pb_size * sizeof(real))
        if pa == NULL or pb == NULL:
            free(pa)
            free(pb)
            return -1
        for t in range(batch):
            _gemm_block(m, n, k, a + t * sab, sam, sak, b + t * sbb, sbk, sbn,
                        c + t * m * n, n, pa, pb)
        free(pa)
        free(pb)
        return 0

    # Work items: (batch entry, block of rows, block of columns), handed out
    # dynamically. The matrices are split only when the batch alone gives fewer than
    # ITEMS_PER_THREAD items per thread: more items than threads lets a thread that
    # the OS keeps waiting hand its share to the others, at the price of packing A
    # once per column block and B once per row block. Blocks are whole panels.
    needed = (nthreads * ITEMS_PER_THREAD + batch - 1) // batch
    max_m = (m + TGM_MR - 1) // TGM_MR
    max_n = (n + nr - 1) // nr
    slabs_m = 1
    while slabs_m * slabs_m < needed:
        slabs_m += 1
    slabs_m = _min(slabs_m, max_m)
    slabs_n = _min((needed + slabs_m - 1) // slabs_m, max_n)
    if slabs_m * slabs_n < needed:
        slabs_m = _min((needed + slabs_n - 1) // slabs_n, max_m)
    slab_rows = _round_up((m + slabs_m - 1) // slabs_m, TGM_MR)
    slabs_m = (m + slab_rows - 1) // slab_rows
    slab_cols = _round_up((n + slabs_n - 1) // slabs_n, nr)
    slabs_n = (n + slab_cols - 1) // slab_cols
    items = batch * slabs_m * slabs_n
    pa_size = _round_up(_min(MC_BLOCK, slab_rows), TGM_MR) * _min(kc_max, k)
    pb_size = _round_up(_min(NC_BLOCK, slab_cols), nr) * _min(kc_max, k)
    with parallel(num_threads=nthreads):
        pa = <real *>tgm_aligned_alloc(pa_size * sizeof(real))
        pb = <real *>tgm_aligned_alloc(pb_size * sizeof(real))
        for item in prange(items, schedule="dynamic"):
            if pa == NULL or pb == NULL:
                failed = 1
            else:
                t = item // (slabs_m * slabs_n)
                r0 = (item // slabs_n) % slabs_m * slab_rows
                c0 = item % slabs_n * slab_cols
                rows = _min(slab_rows, m - r0)
                cols = _min(slab_cols, n - c0)
                _gemm_block(rows, cols, k, a + t * sab + r0 * sam, sam, sak,
                            b + t * sbb + c0 * sbn, sbk, sbn, c + t * m * n + r0 * n + c0, n,
                            pa, pb)
        free(pa)
        free(pb)
    return -1 if failed else 0


cdef int _run(cnp.ndarray out, Py_ssize_t batch, Py_ssize_t m, Py_ssize_t n, Py_ssize_t k,
              cnp.ndarray a, Py_ssize_t sab, Py_ssize_t sam, Py_ssize_t sak,
              cnp.ndarray b, Py_ssize_t sbb, Py_ssize_t sbk, Py_ssize_t sbn,
              int is_f32) except -1:
    """Run the kernel on raw arrays; strides in bytes, converted here to elements."""
    cdef int rc
    cdef char *pa = <char *>cnp.PyArray_DATA(a)
    cdef char *pb = <char *>cnp.PyArray_DATA(b)
    cdef char *pc = <char *>cnp.PyArray_DATA(out)
    if is_f32:
        with nogil:
            rc = _gemm_batched[float](batch, m, n, k, <const float *>pa, sab // 4, sam // 4,
                                      sak // 4, <const float *>pb, sbb // 4, sbk // 4,
                                      sbn // 4, <float *>pc)
    else:
        with nogil:
            rc = _gemm_batched[double](batch, m, n, k, <const double *>pa, sab // 8, sam // 8,
                                       sak // 8, <const double *>pb, sbb // 8, sbk // 8,
                                       sbn // 8, <double *>pc)
    if rc != 0:
        raise MemoryError("matmul: could not allocate packing buffers")
    return 0


cdef inline bint _layout_ok(cnp.ndarray x, Py_ssize_t itemsize) noexcept:
    """The kernel can read ``x`` in place: native byte order, aligned, and every
    stride a whole number of elements (numpy allows odd byte strides and swapped or
    unaligned data in views of raw buffers; those go to numpy)."""
    cdef int d
    cdef cnp.npy_intp *st = cnp.PyArray_STRIDES(x)
    if not cnp.PyArray_ISNOTSWAPPED(x) or not cnp.PyArray_ISALIGNED(x):
        return False
    for d in range(cnp.PyArray_NDIM(x)):
        if st[d] % itemsize != 0:
            return False
    return True


_np_matmul = np.matmul

# Auto mode: products with more multiply-adds than this go to numpy (per dtype);
# set by the backend from measurements. +inf: always ours.
cdef double _auto_max_work_f32 = 1e300
cdef double _auto_max_work_f64 = 1e300
cdef bint _auto = False
cdef object _calibrate_hook = None


def set_auto(bint enabled, double max_work_f32=1e300, double max_work_f64=1e300,
             hook=None):
    """Configure :func:`matmul`'s routing. ``enabled``: route by size (products over
    ``max_work_*`` multiply-adds go to numpy); otherwise every supported product runs
    here. ``hook``: called once, before the first routed product, to measure and set
    the thresholds (it calls ``set_auto`` itself)."""
    global _auto, _auto_max_work_f32, _auto_max_work_f64, _calibrate_hook
    _auto = enabled
    _auto_max_work_f32 = max_work_f32
    _auto_max_work_f64 = max_work_f64
    _calibrate_hook = hook


def get_auto():
    """(enabled, max_work_f32, max_work_f64, calibration pending)."""
    return _auto, _auto_max_work_f32, _auto_max_work_f64, _calibrate_hook is not None


def matmul(a, b):
    """``numpy.matmul(a, b)``, running float32/float64 2-D and 3-D products here.

    Takes two arrays; returns a new C-contiguous array like ``a @ b``. 2-D @ 2-D,
    3-D @ 3-D (batch dims equal or 1), 3-D @ 2-D and 2-D @ 3-D of one float dtype
    run on the packed kernel with any strides (transposed views are read in place);
    everything else (1-D or >3-D operands, integer or mixed dtypes, mismatched
    shapes, which then raise numpy's ValueError) goes to ``numpy.matmul``.

    >>> import numpy as np
    >>> matmul(np.ones((2, 3), np.float32), np.ones((3, 4), np.float32))[0, 0]
    3.0
    """
    return _dispatch(a, b, _auto)


cdef object _dispatch(object a, object b, bint routed):
    """matmul's body; ``routed``: apply the auto-mode size threshold."""
    global _calibrate_hook
    cdef cnp.ndarray A, B, out
    cdef int nda, ndb, ta
    cdef Py_ssize_t itemsize, batch, m, n, k, ba, bb, sab, sam, sak, sbb, sbk, sbn
    cdef cnp.npy_intp *da
    cdef cnp.npy_intp *db
    cdef cnp.npy_intp *sa
    cdef cnp.npy_intp *sb
    cdef cnp.npy_intp dims[3]
    cdef double work
    if type(a) is not cnp.ndarray or type(b) is not cnp.ndarray:
        return _np_matmul(a, b)
    A = <cnp.ndarray>a
    B = <cnp.ndarray>b
    ta = cnp.PyArray_TYPE(A)
    if ta != cnp.PyArray_TYPE(B) or (ta != cnp.NPY_FLOAT32 and ta != cnp.NPY_FLOAT64):
        return _np_matmul(a, b)
    nda = cnp.PyArray_NDIM(A)
    ndb = cnp.PyArray_NDIM(B)
    if nda < 2 or ndb < 2 or nda > 3 or ndb > 3:
        return _np_matmul(a, b)
    da = cnp.PyArray_DIMS(A)
    db = cnp.PyArray_DIMS(B)
    sa = cnp.PyArray_STRIDES(A)
    sb = cnp.PyArray_STRIDES(B)
    itemsize = 4 if ta == cnp.NPY_FLOAT32 else 8
    m = da[nda - 2]
    k = da[nda - 1]
    n = db[ndb - 1]
    if db[ndb - 2] != k:
        return _np_matmul(a, b)     # raises numpy's shape error
    sam = sa[nda - 2]
    sak = sa[nda - 1]
    sbk = sb[ndb - 2]
    sbn = sb[ndb - 1]
    ba = da[0] if nda == 3 else 1
    bb = db[0] if ndb == 3 else 1
    sab = sa[0] if nda == 3 and ba != 1 else 0
    sbb = sb[0] if ndb == 3 and bb != 1 else 0
    if n == 1:
        sbn = itemsize     # a single column: its stride is never used
    if ba != bb and ba != 1 and bb != 1:
        return _np_matmul(a, b)
    batch = ba if ba > bb else bb
    if ndb == 2 and nda == 3 and sab == m * sam:
        # (T, M, K) @ (K, N) with uniformly strided rows is one (T*M, K) @ (K, N)
        m = m * batch
        batch = 1
    work = <double>batch * m * n * k
    if routed:
        if _calibrate_hook is not None:
            hook = _calibrate_hook
            _calibrate_hook = None
            hook()
        if work > (_auto_max_work_f32 if itemsize == 4 else _auto_max_work_f64):
            return _np_matmul(a, b)
    if not (_layout_ok(A, itemsize) and _layout_ok(B, itemsize)):
        return _np_matmul(a, b)
    if nda == 3 or ndb == 3:
        dims[0] = ba if ba > bb else bb
        dims[1] = da[nda - 2]
        dims[2] = n
        out = cnp.PyArray_EMPTY(3, dims, ta, 0) if k > 0 else cnp.PyArray_ZEROS(3, dims, ta, 0)
    else:
        dims[0] = m
        dims[1] = n
        out = cnp.PyArray_EMPTY(2, dims, ta, 0) if k > 0 else cnp.PyArray_ZEROS(2, dims, ta, 0)
    if m == 0 or n == 0 or k == 0 or batch == 0:
        return out
    _run(out, batch, m, n, k, A, sab, sam, sak, B, sbb, sbk, sbn, itemsize == 4)
    return out


def gemm(a, b, bint trans_a=False, bint trans_b=False):
    """``op(a) @ op(b)`` with op = transpose of the last two axes where the flag is set.

    Takes 2-D or 3-D float32/float64 arrays of one dtype; returns a new C-contiguous
    array. The transposes are strides, never copies, so ``gemm(g, w, trans_b=True)``
    is the backward ``g @ w.T`` read in place.

    >>> import numpy as np
    >>> gemm(np.ones((3, 2)), np.ones((3, 4)), trans_a=True).shape
    (2, 4)
    """
    a = np.asarray(a)
    b = np.asarray(b)
    if a.dtype != b.dtype or a.dtype not in (np.float32, np.float64):
        raise TypeError(f"gemm: need two float32 or two float64 arrays, got {a.dtype} and {b.dtype}")
    if a.ndim not in (2, 3) or b.ndim not in (2, 3):
        raise ValueError(f"gemm: operands must be 2-D or 3-D, got shapes {a.shape} and {b.shape}")
    if trans_a:
        a = a.swapaxes(-1, -2)
    if trans_b:
        b = b.swapaxes(-1, -2)
    ka = a.shape[a.ndim - 1]
    kb = b.shape[b.ndim - 2]
    if ka != kb:
        raise ValueError(f"gemm: shapes {a.shape} and {b.shape} don't align ({ka} != {kb})")
    return _dispatch(a, b, False)
