/* y = x @ w.T for a few rows of x (float32, AVX2 + FMA, OpenMP), the products of a CPU decode step.
 *
 * With a few rows such a product reads each weight once and does little arithmetic per byte, so its speed is
 * the speed at which the weights stream from memory. One weight row at a time is one sequential stream per thread,
 * with a software prefetch a little ahead; each weight row is applied to the rows of x in groups of four (four
 * accumulators, x stays in L1). Built and loaded by cpu_matmul.py. */
#include <immintrin.h>
#include <stdint.h>

#define PREFETCH_FLOATS 256  /* 1 KiB ahead of the load */
#define COLUMNS_PER_TASK 64

static inline float horizontal_sum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* y[r * ld_y] = x[r] . w_row for ROWS rows of x (ROWS a compile-time constant, so the accumulators are registers). */
#define DEFINE_DOT(ROWS)                                                                                  \
    static inline void dot_##ROWS(const float *x, const float *w_row, float *y, int64_t k, int64_t ld_y) { \
        __m256 acc[ROWS];                                                                                 \
        for (int r = 0; r < ROWS; r++) acc[r] = _mm256_setzero_ps();                                      \
        for (int64_t j = 0; j < k; j += 8) {                                                              \
            _mm_prefetch((const char *)(w_row + j + PREFETCH_FLOATS), _MM_HINT_T0);                       \
            __m256 w = _mm256_loadu_ps(w_row + j);                                                        \
            for (int r = 0; r < ROWS; r++) acc[r] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + r * k + j), acc[r]); \
        }                                                                                                 \
        for (int r = 0; r < ROWS; r++) y[r * ld_y] = horizontal_sum(acc[r]);                              \
    }
DEFINE_DOT(1)
DEFINE_DOT(2)
DEFINE_DOT(3)
DEFINE_DOT(4)

/* x [m, k], w [n, k], y [m, n], all row-major and contiguous; k a multiple of 8. Returns 0, or -1 for bad shapes. */
int skinny_matmul(const float *x, const float *w, float *y, int64_t m, int64_t k, int64_t n, int threads) {
    if (m < 1 || k < 8 || k % 8 || n < 1 || threads < 1) return -1;
    int64_t tasks = (n + COLUMNS_PER_TASK - 1) / COLUMNS_PER_TASK;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t task = 0; task < tasks; task++) {
        int64_t end = (task + 1) * COLUMNS_PER_TASK < n ? (task + 1) * COLUMNS_PER_TASK : n;
        for (int64_t col = task * COLUMNS_PER_TASK; col < end; col++) {
            const float *w_row = w + col * k;
            int64_t r = 0;
            for (; r + 4 <= m; r += 4) dot_4(x + r * k, w_row, y + r * n + col, k, n);
            switch (m - r) {
                case 3: dot_3(x + r * k, w_row, y + r * n + col, k, n); break;
                case 2: dot_2(x + r * k, w_row, y + r * n + col, k, n); break;
                case 1: dot_1(x + r * k, w_row, y + r * n + col, k, n); break;
            }
        }
    }
    return 0;
}
