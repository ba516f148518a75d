// Matrix multiply for the cuda backend: C[b] = op(A[b]) @ op(B[b]), row-major C.
//
// float32 ("sgemm_*"): shared-memory tiles of BM x BK (A) and BK x BN (B), double
// buffered; each thread keeps a TM x TN tile of C in registers (2-D register blocking)
// and reads its A and B fragments from shared memory as float4. Global loads are float4
// wherever the host says the operand allows it (vec flag: 16-byte aligned base pointer,
// leading dimension and batch stride multiples of 4) and the 4 elements are inside the
// matrix; the edges of the matrix, and misaligned operands, take a guarded scalar path
// that fills zeros, so any M, N, K works.
//
// Transposes cost nothing: with ta = 0, A is stored M x K (A(m, k) = A[m * lda + k]);
// with ta = 1 it is stored K x M (A(m, k) = A[k * lda + m]), which is how a transposed
// view such as `a.T` or `a.mT` of a row-major array looks. Likewise B: tb = 0 means K x N
// (B(k, n) = B[k * ldb + n]), tb = 1 means N x K (B(k, n) = B[n * ldb + k]). The
// backward's `g @ B.T` and `A.T @ g` therefore need no copies.
//
// Batches: blockIdx.z walks the batch (grid-stride, so any batch count works);
// operand b starts at A + b * stride_a (stride 0 broadcasts one matrix over the batch).
//
// Entry points (extern "C", so CuPy's RawModule finds them by name):
//   sgemm_{128x128,64x64}_{nn,nt,tn,tt}  -- tile config, then transpose flags of A and B
//   dgemm_tiled                           -- float64, simpler: 64x64 tiles, general strides
//
// Every file here must stay free of #include: NVRTC (what CuPy compiles with at run
// time) has no host headers.

typedef long long tgm_i64;

#define TGM_DEVICE __device__ __forceinline__

// ---------------------------------------------------------------------------------
// float32
// ---------------------------------------------------------------------------------

// Four consecutive elements of row `row` of a (rows x cols, leading dimension ld) matrix,
// from column `col` (a multiple of 4); zeros outside the matrix.
TGM_DEVICE float4 tgm_load4(const float* __restrict__ base, tgm_i64 ld, int row, int col,
                            int rows, int cols, bool vec) {
    float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (row < rows) {
        const float* p = base + (tgm_i64)row * ld + col;
        if (vec && col + 3 < cols) {
            v = *reinterpret_cast<const float4*>(p);
        } else {
            if (col < cols) v.x = p[0];
            if (col + 1 < cols) v.y = p[1];
            if (col + 2 < cols) v.z = p[2];
            if (col + 3 < cols) v.w = p[3];
        }
    }
    return v;
}

// One thread block computes a BM x BN tile of C; THREADS = (BM / TM) * (BN / TN).
// Thread (ty, tx) owns rows  i * 4 * TY + ty * 4 + r  (i < TM / 4, r < 4) and columns
// j * 4 * TX + tx * 4 + c: its tile is split into 4 x 4 blocks spaced a quarter tile
// apart, so a warp's float4 fragment reads from shared memory hit distinct banks or
// broadcast.
template <int BM, int BN, int BK, int TM, int TN, bool TA, bool TB>
TGM_DEVICE void tgm_sgemm_body(const float* __restrict__ A, const float* __restrict__ B,
                               float* __restrict__ C, int M, int N, int K,
                               tgm_i64 lda, tgm_i64 ldb, tgm_i64 ldc,
                               tgm_i64 stride_a, tgm_i64 stride_b, tgm_i64 stride_c,
                               int batch, int vec_a, int vec_b, int vec_c) {
    constexpr int TX = BN / TN;
    constexpr int TY = BM / TM;
    constexpr int THREADS = TX * TY;
    // +4 floats per shared row: keeps float4 alignment and moves the transposing scalar
    // stores of neighbouring k rows onto different banks.
    constexpr int PAD = 4;
    constexpr int A_CHUNKS = BM * BK / 4;  // float4 chunks per A tile
    constexpr int B_CHUNKS = BK * BN / 4;
    constexpr int A_PER_THREAD = (A_CHUNKS + THREADS - 1) / THREADS;
    constexpr int B_PER_THREAD = (B_CHUNKS + THREADS - 1) / THREADS;
    static_assert(TM % 4 == 0 && TN % 4 == 0, "register tile must be made of 4x4 blocks");
    static_assert(BM % TM == 0 && BN % TN == 0 && BK % 4 == 0, "tile sizes must divide");

    __shared__ __align__(16) float As[2][BK][BM + PAD];  // As[.][k][m]
    __shared__ __align__(16) float Bs[2][BK][BN + PAD];  // Bs[.][k][n]

    const int tid = threadIdx.x;
    const int tx = tid % TX;
    const int ty = tid / TX;
    const int bm = blockIdx.y * BM;
    const int bn = blockIdx.x * BN;
    const int k_tiles = (K + BK - 1) / BK;

    for (int b = blockIdx.z; b < batch; b += gridDim.z) {
        const float* Ab = A + (tgm_i64)b * stride_a;
        const float* Bb = B + (tgm_i64)b * stride_b;
        float* Cb = C + (tgm_i64)b * stride_c;

        float acc[TM][TN];
#pragma unroll
        for (int i = 0; i < TM; ++i)
#pragma unroll
            for (int j = 0; j < TN; ++j) acc[i][j] = 0.0f;

        float4 ra[A_PER_THREAD];
        float4 rb[B_PER_THREAD];

        // Global -> registers for the k tile starting at k0. A chunk is 4 elements along
        // the operand's contiguous direction.
        auto load_tile = [&](int k0) {
#pragma unroll
            for (int l = 0; l < A_PER_THREAD; ++l) {
                const int c = tid + l * THREADS;
                if (c < A_CHUNKS) {
                    if (!TA) {  // rows m, contiguous k
                        const int r = c / (BK / 4), c4 = (c % (BK / 4)) * 4;
                        ra[l] = tgm_load4(Ab, lda, bm + r, k0 + c4, M, K, vec_a);
                    } else {    // rows k, contiguous m
                        const int r = c / (BM / 4), c4 = (c % (BM / 4)) * 4;
                        ra[l] = tgm_load4(Ab, lda, k0 + r, bm + c4, K, M, vec_a);
                    }
                }
            }
#pragma unroll
            for (int l = 0; l < B_PER_THREAD; ++l) {
                const int c = tid + l * THREADS;
                if (c < B_CHUNKS) {
                    if (!TB) {  // rows k, contiguous n
                        const int r = c / (BN / 4), c4 = (c % (BN / 4)) * 4;
                        rb[l] = tgm_load4(Bb, ldb, k0 + r, bn + c4, K, N, vec_b);
                    } else {    // rows n, contiguous k
                        const int r = c / (BK / 4), c4 = (c % (BK / 4)) * 4;
                        rb[l] = tgm_load4(Bb, ldb, bn + r, k0 + c4, N, K, vec_b);
                    }
                }
            }
        };

        // Registers -> shared buffer `buf`, transposing where the contiguous direction of
        // the operand is k (shared memory is always k-major).
        auto store_tile = [&](int buf) {
#pragma unroll
            for (int l = 0; l < A_PER_THREAD; ++l) {
                const int c = tid + l * THREADS;
                if (c < A_CHUNKS) {
                    if (!TA) {
                        const int r = c / (BK / 4), c4 = (c % (BK / 4)) * 4;
                        As[buf][c4 + 0][r] = ra[l].x;
                        As[buf][c4 + 1][r] = ra[l].y;
                        As[buf][c4 + 2][r] = ra[l].z;
                        As[buf][c4 + 3][r] = ra[l].w;
                    } else {
                        const int r = c / (BM / 4), c4 = (c % (BM / 4)) * 4;
                        *reinterpret_cast<float4*>(&As[buf][r][c4]) = ra[l];
                    }
                }
            }
#pragma unroll
            for (int l = 0; l < B_PER_THREAD; ++l) {
                const int c = tid + l * THREADS;
                if (c < B_CHUNKS) {
                    if (!TB) {
                        const int r = c / (BN / 4), c4 = (c % (BN / 4)) * 4;
                        *reinterpret_cast<float4*>(&Bs[buf][r][c4]) = rb[l];
                    } else {
                        const int r = c / (BK / 4), c4 = (c % (BK / 4)) * 4;
                        Bs[buf][c4 + 0][r] = rb[l].x;
                        Bs[buf][c4 + 1][r] = rb[l].y;
                        Bs[buf][c4 + 2][r] = rb[l].z;
                        Bs[buf][c4 + 3][r] = rb[l].w;
                    }
                }
            }
        };

        load_tile(0);
        store_tile(0);
        __syncthreads();

        for (int kt = 0; kt < k_tiles; ++kt) {
            const int cur = kt & 1;
            const bool has_next = kt + 1 < k_tiles;
            // Issue the next tile's global loads now; they land while we compute.
            if (has_next) load_tile((kt + 1) * BK);

#pragma unroll
            for (int kk = 0; kk < BK; ++kk) {
                float a_frag[TM];
                float b_frag[TN];
#pragma unroll
                for (int i = 0; i < TM / 4; ++i) {
                    const float4 v = *reinterpret_cast<const float4*>(&As[cur][kk][i * 4 * TY + ty * 4]);
                    a_frag[i * 4 + 0] = v.x;
                    a_frag[i * 4 + 1] = v.y;
                    a_frag[i * 4 + 2] = v.z;
                    a_frag[i * 4 + 3] = v.w;
                }
#pragma unroll
                for (int j = 0; j < TN / 4; ++j) {
                    const float4 v = *reinterpret_cast<const float4*>(&Bs[cur][kk][j * 4 * TX + tx * 4]);
                    b_frag[j * 4 + 0] = v.x;
                    b_frag[j * 4 + 1] = v.y;
                    b_frag[j * 4 + 2] = v.z;
                    b_frag[j * 4 + 3] = v.w;
                }
#pragma unroll
                for (int i = 0; i < TM; ++i)
#pragma unroll
                    for (int j = 0; j < TN; ++j) acc[i][j] = fmaf(a_frag[i], b_frag[j], acc[i][j]);
            }

            // The other buffer was last read in iteration kt - 1, which every thread has
            // finished (barrier below), so it can be overwritten while others still read `cur`.
            if (has_next) store_tile(cur ^ 1);
            __syncthreads();
        }

#pragma unroll
        for (int i = 0; i < TM / 4; ++i) {
#pragma unroll
            for (int r = 0; r < 4; ++r) {
                const int m = bm + i * 4 * TY + ty * 4 + r;
                if (m >= M) continue;
                float* crow = Cb + (tgm_i64)m * ldc;
#pragma unroll
                for (int j = 0; j < TN / 4; ++j) {
                    const int n = bn + j * 4 * TX + tx * 4;
                    const float* a = &acc[i * 4 + r][j * 4];
                    if (vec_c && n + 3 < N) {
                        *reinterpret_cast<float4*>(crow + n) = make_float4(a[0], a[1], a[2], a[3]);
                    } else {
                        if (n < N) crow[n] = a[0];
                        if (n + 1 < N) crow[n + 1] = a[1];
                        if (n + 2 < N) crow[n + 2] = a[2];
                        if (n + 3 < N) crow[n + 3] = a[3];
                    }
                }
            }
        }
    }
}

#define TGM_SGEMM_PARAMS                                                                   \
    const float* __restrict__ A, const float* __restrict__ B, float* __restrict__ C, int M, \
        int N, int K, tgm_i64 lda, tgm_i64 ldb, tgm_i64 ldc, tgm_i64 stride_a,              \
        tgm_i64 stride_b, tgm_i64 stride_c, int batch, int vec_a, int vec_b, int vec_c
#define TGM_SGEMM_ARGS \
    A, B, C, M, N, K, lda, ldb, ldc, stride_a, stride_b, stride_c, batch, vec_a, vec_b, vec_c

// 128 x 128 tiles, 8 x 8 per thread, 256 threads: the large-matrix kernel. The launch
// bound of 2 blocks per SM caps registers at 128 per thread.
#define TGM_SGEMM_128(NAME, TA, TB)                                                   \
    extern "C" __global__ void __launch_bounds__(256, 2) NAME(TGM_SGEMM_PARAMS) {     \
        tgm_sgemm_body<128, 128, 8, 8, 8, TA, TB>(TGM_SGEMM_ARGS);                     \
    }
// 64 x 64 tiles, 4 x 4 per thread, 256 threads: four times the blocks, for matrices
// too small to fill every SM with 128 x 128 tiles.
#define TGM_SGEMM_64(NAME, TA, TB)                                                    \
    extern "C" __global__ void __launch_bounds__(256) NAME(TGM_SGEMM_PARAMS) {        \
        tgm_sgemm_body<64, 64, 16, 4, 4, TA, TB>(TGM_SGEMM_ARGS);                      \
    }

TGM_SGEMM_128(sgemm_128x128_nn, false, false)
TGM_SGEMM_128(sgemm_128x128_nt, false, true)
TGM_SGEMM_128(sgemm_128x128_tn, true, false)
TGM_SGEMM_128(sgemm_128x128_tt, true, true)
TGM_SGEMM_64(sgemm_64x64_nn, false, false)
TGM_SGEMM_64(sgemm_64x64_nt, false, true)
TGM_SGEMM_64(sgemm_64x64_tn, true, false)
TGM_SGEMM_64(sgemm_64x64_tt, true, true)

// ---------------------------------------------------------------------------------
// float64: 64 x 64 tiles, BK = 8, 256 threads with 4 x 4 outputs each. Operands are
// described by element strides, A(m, k) = A[m * a_rs + k * a_cs] and
// B(k, n) = B[k * b_rs + n * b_cs], so transposed, sliced and broadcast views all work
// without copies. Scalar loads; a_kfast / b_nfast pick which tile index runs fastest
// across threads so that the loads along the contiguous direction coalesce.
// ---------------------------------------------------------------------------------

extern "C" __global__ void __launch_bounds__(256)
dgemm_tiled(const double* __restrict__ A, const double* __restrict__ B, double* __restrict__ C,
            int M, int N, int K, tgm_i64 a_rs, tgm_i64 a_cs, tgm_i64 b_rs, tgm_i64 b_cs,
            tgm_i64 ldc, tgm_i64 stride_a, tgm_i64 stride_b, tgm_i64 stride_c, int batch,
            int a_kfast, int b_nfast) {
    constexpr int BM = 64, BN = 64, BK = 8, THREADS = 256;
    // +1 double per row: the m-fast scalar stores of 16 threads fall on distinct banks.
    __shared__ double As[BK][BM + 1];
    __shared__ double Bs[BK][BN + 1];

    const int tid = threadIdx.x;
    const int tx = tid % 16;
    const int ty = tid / 16;
    const int bm = blockIdx.y * BM;
    const int bn = blockIdx.x * BN;

    for (int b = blockIdx.z; b < batch; b += gridDim.z) {
        const double* Ab = A + (tgm_i64)b * stride_a;
        const double* Bb = B + (tgm_i64)b * stride_b;
        double* Cb = C + (tgm_i64)b * stride_c;
        double acc[4][4];
#pragma unroll
        for (int i = 0; i < 4; ++i)
#pragma unroll
            for (int j = 0; j < 4; ++j) acc[i][j] = 0.0;

        for (int k0 = 0; k0 < K; k0 += BK) {
#pragma unroll
            for (int l = 0; l < BM * BK / THREADS; ++l) {
                const int e = tid + l * THREADS;
                const int kk = a_kfast ? e % BK : e / BM;
                const int mm = a_kfast ? e / BK : e % BM;
                const int m = bm + mm, k = k0 + kk;
                As[kk][mm] = (m < M && k < K) ? Ab[(tgm_i64)m * a_rs + (tgm_i64)k * a_cs] : 0.0;
            }
#pragma unroll
            for (int l = 0; l < BK * BN / THREADS; ++l) {
                const int e = tid + l * THREADS;
                const int kk = b_nfast ? e / BN : e % BK;
                const int nn = b_nfast ? e % BN : e / BK;
                const int n = bn + nn, k = k0 + kk;
                Bs[kk][nn] = (n < N && k < K) ? Bb[(tgm_i64)k * b_rs + (tgm_i64)n * b_cs] : 0.0;
            }
            __syncthreads();
#pragma unroll
            for (int kk = 0; kk < BK; ++kk) {
                double a_frag[4], b_frag[4];
#pragma unroll
                for (int i = 0; i < 4; ++i) a_frag[i] = As[kk][ty + 16 * i];
#pragma unroll
                for (int j = 0; j < 4; ++j) b_frag[j] = Bs[kk][tx + 16 * j];
#pragma unroll
                for (int i = 0; i < 4; ++i)
#pragma unroll
                    for (int j = 0; j < 4; ++j) acc[i][j] = fma(a_frag[i], b_frag[j], acc[i][j]);
            }
            __syncthreads();  // the tile is overwritten by the next k step
        }

#pragma unroll
        for (int i = 0; i < 4; ++i) {
            const int m = bm + ty + 16 * i;
            if (m >= M) continue;
#pragma unroll
            for (int j = 0; j < 4; ++j) {
                const int n = bn + tx + 16 * j;
                if (n < N) Cb[(tgm_i64)m * ldc + n] = acc[i][j];
            }
        }
    }
}
