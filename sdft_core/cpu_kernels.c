/* Float32 kernels for decoding on an x86-64 CPU with AVX2 + FMA (OpenMP), built and loaded by cpu_kernels.py.
 *
 * With a few rows a product reads each weight once and does little arithmetic per byte, so a decode step is as
 * fast as the weights stream from memory. Each thread reads two weight rows at a time from two places in the
 * matrix (two sequential streams keep more reads in flight than one), with a software prefetch a little ahead,
 * and applies them to the rows of x in groups of four (the accumulators are registers, x stays in L1).
 *
 * - skinny_matmul: y = x @ w.T for a few rows of x.
 * - decode_step: one decode step of a Llama-family model (RMSNorm, rotary attention over a static KV cache,
 *   SiLU-gated MLP) in one call and one OpenMP team, so the step's many small operations cost no dispatch. */
#include <immintrin.h>
#include <math.h>
#include <stdint.h>
#include <string.h>

#define PREFETCH_FLOATS 256  /* 1 KiB ahead of the load */
#define COLUMNS_PER_TASK 64

static inline float horizontal_sum(__m256 v) {
    __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    s = _mm_add_ss(s, _mm_movehdup_ps(s));
    return _mm_cvtss_f32(s);
}

/* sums[r] = x[r] . w_row for ROWS rows of x (ROWS a compile-time constant, so the accumulators are registers). */
#define DEFINE_DOT(ROWS)                                                                                  \
    static inline void dot_##ROWS(const float *x, const float *w_row, int64_t k, float *sums) {           \
        __m256 acc[ROWS];                                                                                 \
        for (int r = 0; r < ROWS; r++) acc[r] = _mm256_setzero_ps();                                      \
        for (int64_t j = 0; j < k; j += 8) {                                                              \
            _mm_prefetch((const char *)(w_row + j + PREFETCH_FLOATS), _MM_HINT_T0);                       \
            __m256 w = _mm256_loadu_ps(w_row + j);                                                        \
            for (int r = 0; r < ROWS; r++) acc[r] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + r * k + j), acc[r]); \
        }                                                                                                 \
        for (int r = 0; r < ROWS; r++) sums[r] = horizontal_sum(acc[r]);                                  \
    }
/* The same for two weight rows at once, from two distant places: two sequential streams per thread keep more
 * reads in flight than one (on a 2-core EPYC they stream 11% faster, as fast as a plain read). */
#define DEFINE_DOT_PAIR(ROWS)                                                                             \
    static inline void dot_pair_##ROWS(const float *x, const float *w_first, const float *w_second,       \
                                       int64_t k, float *first, float *second) {                          \
        __m256 acc[ROWS], acc2[ROWS];                                                                     \
        for (int r = 0; r < ROWS; r++) acc[r] = acc2[r] = _mm256_setzero_ps();                            \
        for (int64_t j = 0; j < k; j += 8) {                                                              \
            _mm_prefetch((const char *)(w_first + j + PREFETCH_FLOATS), _MM_HINT_T0);                     \
            _mm_prefetch((const char *)(w_second + j + PREFETCH_FLOATS), _MM_HINT_T0);                    \
            __m256 w = _mm256_loadu_ps(w_first + j), w2 = _mm256_loadu_ps(w_second + j);                  \
            for (int r = 0; r < ROWS; r++) {                                                              \
                __m256 xr = _mm256_loadu_ps(x + r * k + j);                                               \
                acc[r] = _mm256_fmadd_ps(w, xr, acc[r]);                                                  \
                acc2[r] = _mm256_fmadd_ps(w2, xr, acc2[r]);                                               \
            }                                                                                             \
        }                                                                                                 \
        for (int r = 0; r < ROWS; r++) first[r] = horizontal_sum(acc[r]), second[r] = horizontal_sum(acc2[r]); \
    }
DEFINE_DOT(1)
DEFINE_DOT(2)
DEFINE_DOT(3)
DEFINE_DOT(4)
DEFINE_DOT_PAIR(1)
DEFINE_DOT_PAIR(2)
DEFINE_DOT_PAIR(3)
DEFINE_DOT_PAIR(4)

/* y[r, col] = sum + bias[col] for `group` rows from r, or y[r, col] += it when `accumulate`. */
static inline void store(float *y, int64_t ld_y, int64_t r, int64_t group, int64_t col, const float *sums,
                         const float *bias, int accumulate) {
    float b = bias ? bias[col] : 0.0f;
    for (int64_t i = 0; i < group; i++) {
        float *out = y + (r + i) * ld_y + col;
        *out = accumulate ? *out + (sums[i] + b) : sums[i] + b;
    }
}

/* For columns [begin, end): y[r, col] = x[r] . w[col] + bias[col] for every row r of x [m, k], or y[r, col] += it
 * when `accumulate`. `bias` may be NULL; y's rows are `ld_y` apart. Column begin + i is paired with the column
 * half the range further on; each weight row is read from memory once and applied to the rows of x by fours. */
static void product_columns(const float *x, int64_t m, int64_t k, const float *w, const float *bias, float *y,
                            int64_t ld_y, int64_t begin, int64_t end, int accumulate) {
    float sums[4], sums2[4];
    int64_t half = (end - begin) / 2;
    for (int64_t col = begin; col < begin + half; col++) {
        const float *w_first = w + col * k, *w_second = w + (col + half) * k;
        for (int64_t r = 0; r < m; r += 4) {
            int64_t group = m - r < 4 ? m - r : 4;
            switch (group) {
                case 4: dot_pair_4(x + r * k, w_first, w_second, k, sums, sums2); break;
                case 3: dot_pair_3(x + r * k, w_first, w_second, k, sums, sums2); break;
                case 2: dot_pair_2(x + r * k, w_first, w_second, k, sums, sums2); break;
                default: dot_pair_1(x + r * k, w_first, w_second, k, sums, sums2); break;
            }
            store(y, ld_y, r, group, col, sums, bias, accumulate);
            store(y, ld_y, r, group, col + half, sums2, bias, accumulate);
        }
    }
    if ((end - begin) % 2) { /* the odd column out */
        const float *w_row = w + (end - 1) * k;
        for (int64_t r = 0; r < m; r += 4) {
            int64_t group = m - r < 4 ? m - r : 4;
            switch (group) {
                case 4: dot_4(x + r * k, w_row, k, sums); break;
                case 3: dot_3(x + r * k, w_row, k, sums); break;
                case 2: dot_2(x + r * k, w_row, k, sums); break;
                default: dot_1(x + r * k, w_row, k, sums); break;
            }
            store(y, ld_y, r, group, end - 1, sums, bias, accumulate);
        }
    }
}

static inline int64_t tasks_for(int64_t n) { return (n + COLUMNS_PER_TASK - 1) / COLUMNS_PER_TASK; }
static inline int64_t task_end(int64_t task, int64_t n) {
    int64_t end = (task + 1) * COLUMNS_PER_TASK;
    return end < n ? end : n;
}

/* x [m, k], w [n, k], y [m, n], all row-major and contiguous; k a multiple of 8. Returns 0, or -1 for bad shapes. */
int skinny_matmul(const float *x, const float *w, float *y, int64_t m, int64_t k, int64_t n, int threads) {
    if (m < 1 || k < 8 || k % 8 || n < 1 || threads < 1) return -1;
#pragma omp parallel for num_threads(threads) schedule(static)
    for (int64_t task = 0; task < tasks_for(n); task++)
        product_columns(x, m, k, w, NULL, y, n, task * COLUMNS_PER_TASK, task_end(task, n), 0);
    return 0;
}

/* ------------------------------------------------------------------------------------------------ decode step */

/* One layer's tensors, as the model holds them (weights [out, in]); biases may be NULL. */
typedef struct {
    const float *q, *k, *v, *o, *gate, *up, *down;
    const float *q_bias, *k_bias, *v_bias, *o_bias, *gate_bias, *up_bias, *down_bias;
    const float *input_norm, *post_attention_norm;
    float *keys, *values; /* the static cache [rows, kv_heads, max_length, head_dim] */
} layer_tensors;

enum { ROWS, HIDDEN, HEADS, KV_HEADS, HEAD_DIM, INTERMEDIATE, VOCAB, MAX_LENGTH, LAYERS, SLOT, THREADS, DIMS };

static inline float dot(const float *a, const float *b, int64_t n) { /* n a multiple of 8 */
    __m256 acc = _mm256_setzero_ps();
    for (int64_t i = 0; i < n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
    return horizontal_sum(acc);
}

/* out = h / sqrt(mean(h^2) + eps) * weight, row by row, as the models' RMSNorm computes it in float32. */
static void rms_norm(const float *h, const float *weight, float *out, int64_t rows, int64_t width, float eps) {
    for (int64_t r = 0; r < rows; r++) {
        const float *x = h + r * width;
        float inverse = 1.0f / sqrtf(dot(x, x, width) / (float)width + eps);
        for (int64_t i = 0; i < width; i++) out[r * width + i] = weight[i] * (x[i] * inverse);
    }
}

/* The rotary embedding of one head (rotate-half layout: pairs (i, i + d/2)); `out` may be `x`. */
static void rotate(const float *x, const float *cos, const float *sin, float *out, int64_t head_dim) {
    int64_t half = head_dim / 2;
    for (int64_t i = 0; i < half; i++) {
        float a = x[i], b = x[i + half];
        out[i] = a * cos[i] - b * sin[i];
        out[i + half] = b * cos[i + half] + a * sin[i + half];
    }
}

/* out = softmax(q . keys[t] * scale + bias[t]) @ values over the first `visible` cache slots. */
static void attend(const float *q, const float *keys, const float *values, const float *bias, int64_t visible,
                   float scale, float *scores, float *out, int64_t head_dim) {
    float best = -INFINITY;
    for (int64_t t = 0; t < visible; t++) {
        float s = bias[t] == -INFINITY ? -INFINITY : dot(q, keys + t * head_dim, head_dim) * scale + bias[t];
        scores[t] = s;
        best = s > best ? s : best;
    }
    float total = 0.0f;
    for (int64_t i = 0; i < head_dim; i++) out[i] = 0.0f;
    for (int64_t t = 0; t < visible; t++) {
        if (scores[t] == -INFINITY) continue;
        float p = expf(scores[t] - best);
        total += p;
        __m256 weight = _mm256_set1_ps(p);
        const float *v = values + t * head_dim;
        for (int64_t i = 0; i < head_dim; i += 8)
            _mm256_storeu_ps(out + i, _mm256_fmadd_ps(weight, _mm256_loadu_ps(v + i), _mm256_loadu_ps(out + i)));
    }
    for (int64_t i = 0; i < head_dim; i++) out[i] /= total;
}

/* Floats of workspace decode_step needs. */
int64_t decode_workspace(const int64_t *dims) {
    int64_t rows = dims[ROWS], q_width = dims[HEADS] * dims[HEAD_DIM], kv_width = dims[KV_HEADS] * dims[HEAD_DIM];
    return rows * (2 * dims[HIDDEN] + 2 * q_width + 2 * kv_width + 2 * dims[INTERMEDIATE]
                   + dims[HEADS] * dims[MAX_LENGTH]);
}

/* One decode step: tokens [rows] at positions [rows] -> logits [rows, vocab], their keys and values written to
 * cache slot dims[SLOT]. attention_bias [rows, max_length] is 0 where a row may attend and -inf elsewhere; the
 * step opens the slot it writes. cos/sin [max_length, head_dim] are the rotary tables by position. Returns 0,
 * -1 for shapes it does not take, -2 for a token or position out of range. */
int decode_step(const int64_t *dims, float eps, float scale, const layer_tensors *layers, const int64_t *tokens,
                const int64_t *positions, const float *embed, const float *final_norm, const float *head,
                const float *head_bias, const float *cos, const float *sin, float *attention_bias,
                float *workspace, float *logits) {
    const int64_t rows = dims[ROWS], hidden = dims[HIDDEN], heads = dims[HEADS], kv_heads = dims[KV_HEADS];
    const int64_t head_dim = dims[HEAD_DIM], intermediate = dims[INTERMEDIATE], vocab = dims[VOCAB];
    const int64_t max_length = dims[MAX_LENGTH], slot = dims[SLOT];
    const int64_t q_width = heads * head_dim, kv_width = kv_heads * head_dim, groups = heads / kv_heads;
    if (rows < 1 || hidden % 8 || head_dim % 8 || intermediate % 8 || kv_heads < 1 || heads % kv_heads
        || slot < 0 || slot >= max_length || dims[THREADS] < 1 || dims[LAYERS] < 1)
        return -1;
    for (int64_t r = 0; r < rows; r++)
        if (tokens[r] < 0 || tokens[r] >= vocab || positions[r] < 0 || positions[r] >= max_length) return -2;

    float *h = workspace, *normed = h + rows * hidden, *q = normed + rows * hidden, *k = q + rows * q_width;
    float *v = k + rows * kv_width, *attended = v + rows * kv_width, *gate = attended + rows * q_width;
    float *up = gate + rows * intermediate, *scores = up + rows * intermediate;
    for (int64_t r = 0; r < rows; r++) {
        memcpy(h + r * hidden, embed + tokens[r] * hidden, hidden * sizeof(float));
        attention_bias[r * max_length + slot] = 0.0f;
    }
    const int64_t q_tasks = tasks_for(q_width), kv_tasks = tasks_for(kv_width);
    const int64_t visible = slot + 1;

#pragma omp parallel num_threads((int)dims[THREADS])
    for (int64_t index = 0; index <= dims[LAYERS]; index++) {
        const layer_tensors *layer = layers + index;
        if (index == dims[LAYERS]) { /* the final norm and the head */
#pragma omp single
            rms_norm(h, final_norm, normed, rows, hidden, eps);
#pragma omp for schedule(static)
            for (int64_t task = 0; task < tasks_for(vocab); task++)
                product_columns(normed, rows, hidden, head, head_bias, logits, vocab, task * COLUMNS_PER_TASK,
                                task_end(task, vocab), 0);
            break;
        }
#pragma omp single
        rms_norm(h, layer->input_norm, normed, rows, hidden, eps);
#pragma omp for schedule(static)
        for (int64_t task = 0; task < q_tasks + 2 * kv_tasks; task++) {
            if (task < q_tasks)
                product_columns(normed, rows, hidden, layer->q, layer->q_bias, q, q_width, task * COLUMNS_PER_TASK,
                                task_end(task, q_width), 0);
            else if (task < q_tasks + kv_tasks)
                product_columns(normed, rows, hidden, layer->k, layer->k_bias, k, kv_width,
                                (task - q_tasks) * COLUMNS_PER_TASK, task_end(task - q_tasks, kv_width), 0);
            else
                product_columns(normed, rows, hidden, layer->v, layer->v_bias, v, kv_width,
                                (task - q_tasks - kv_tasks) * COLUMNS_PER_TASK,
                                task_end(task - q_tasks - kv_tasks, kv_width), 0);
        }
#pragma omp for schedule(static)
        for (int64_t pair = 0; pair < rows * kv_heads; pair++) { /* (row, KV head): its key, value, query heads */
            int64_t r = pair / kv_heads, kv_head = pair % kv_heads;
            const float *cos_r = cos + positions[r] * head_dim, *sin_r = sin + positions[r] * head_dim;
            float *keys = layer->keys + pair * max_length * head_dim, *values = layer->values + pair * max_length * head_dim;
            rotate(k + r * kv_width + kv_head * head_dim, cos_r, sin_r, keys + slot * head_dim, head_dim);
            memcpy(values + slot * head_dim, v + r * kv_width + kv_head * head_dim, head_dim * sizeof(float));
            for (int64_t g = 0; g < groups; g++) {
                int64_t query_head = kv_head * groups + g;
                float *query = q + r * q_width + query_head * head_dim;
                rotate(query, cos_r, sin_r, query, head_dim);
                attend(query, keys, values, attention_bias + r * max_length, visible, scale,
                       scores + (r * heads + query_head) * max_length, attended + r * q_width + query_head * head_dim,
                       head_dim);
            }
        }
#pragma omp for schedule(static)
        for (int64_t task = 0; task < tasks_for(hidden); task++)
            product_columns(attended, rows, q_width, layer->o, layer->o_bias, h, hidden, task * COLUMNS_PER_TASK,
                            task_end(task, hidden), 1);
#pragma omp single
        rms_norm(h, layer->post_attention_norm, normed, rows, hidden, eps);
#pragma omp for schedule(static)
        for (int64_t task = 0; task < tasks_for(intermediate); task++) {
            int64_t begin = task * COLUMNS_PER_TASK, end = task_end(task, intermediate);
            product_columns(normed, rows, hidden, layer->gate, layer->gate_bias, gate, intermediate, begin, end, 0);
            product_columns(normed, rows, hidden, layer->up, layer->up_bias, up, intermediate, begin, end, 0);
            for (int64_t r = 0; r < rows; r++)
                for (int64_t i = r * intermediate + begin; i < r * intermediate + end; i++)
                    gate[i] = gate[i] / (1.0f + expf(-gate[i])) * up[i];
        }
#pragma omp for schedule(static)
        for (int64_t task = 0; task < tasks_for(hidden); task++)
            product_columns(gate, rows, intermediate, layer->down, layer->down_bias, h, hidden,
                            task * COLUMNS_PER_TASK, task_end(task, hidden), 1);
    }
    return 0;
}
