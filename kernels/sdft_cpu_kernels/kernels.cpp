// Float32 decoding kernels for x86-64 CPUs with AVX2 and FMA (OpenMP): the opt-in fast path of
// sdft_core.decoding.StaticCacheDecoder on CPU.
//
// With a few rows a product reads each weight once and does little arithmetic per byte, so a decode step is as
// fast as the weights stream from memory. Each thread reads two weight rows at a time from two places in the
// matrix (two sequential streams keep more reads in flight than one), with a software prefetch a little ahead,
// and applies them to the rows of x in groups of four (the accumulators are registers, x stays in L1).
//
// - skinny_matmul: y = x @ w.T + bias (or y += that) for a few rows of x.
// - DecodeStep: one decode step of a Llama-family model (RMSNorm, rotary attention over a static KV cache,
//   SiLU-gated MLP) in one call and one OpenMP team, so the step's many small operations cost no dispatch. It
//   reads the tensors of the torch decoder that holds it: q/k/v stacked into one weight and gate/up into
//   another, q and k rows in rotary-pair order within each head (each pair (i, i + d/2) side by side), the KV
//   cache in that order too, and an additive attention mask (0 or -inf) per row.
//
// The vector code is compiled for AVX2+FMA per function (`#pragma GCC target`), so the module imports on any
// x86-64 CPU; `supported()` says whether this one can run it.
#include <torch/extension.h>

#include <immintrin.h>
#include <omp.h>

#include <cmath>
#include <cstring>
#include <optional>
#include <vector>

namespace {

constexpr int64_t kPrefetchFloats = 256;  // 1 KiB ahead of the load
constexpr int64_t kColumnsPerTask = 64;

#pragma GCC push_options
#pragma GCC target("avx2,fma")

inline float horizontal_sum(__m256 v) {
  __m128 s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
  s = _mm_add_ps(s, _mm_movehl_ps(s, s));
  s = _mm_add_ss(s, _mm_movehdup_ps(s));
  return _mm_cvtss_f32(s);
}

// sums[r] = x[r] . w_row for ROWS rows of x (a compile-time count, so the accumulators are registers).
template <int ROWS>
inline void dot_rows(const float* x, const float* w_row, int64_t k, float* sums) {
  __m256 acc[ROWS];
  for (int r = 0; r < ROWS; r++) acc[r] = _mm256_setzero_ps();
  for (int64_t j = 0; j < k; j += 8) {
    _mm_prefetch(reinterpret_cast<const char*>(w_row + j + kPrefetchFloats), _MM_HINT_T0);
    __m256 w = _mm256_loadu_ps(w_row + j);
    for (int r = 0; r < ROWS; r++) acc[r] = _mm256_fmadd_ps(w, _mm256_loadu_ps(x + r * k + j), acc[r]);
  }
  for (int r = 0; r < ROWS; r++) sums[r] = horizontal_sum(acc[r]);
}

// The same for two weight rows at once, from two distant places in the matrix.
template <int ROWS>
inline void dot_pair(const float* x, const float* w_first, const float* w_second, int64_t k, float* first,
                     float* second) {
  __m256 acc[ROWS], acc2[ROWS];
  for (int r = 0; r < ROWS; r++) acc[r] = acc2[r] = _mm256_setzero_ps();
  for (int64_t j = 0; j < k; j += 8) {
    _mm_prefetch(reinterpret_cast<const char*>(w_first + j + kPrefetchFloats), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(w_second + j + kPrefetchFloats), _MM_HINT_T0);
    __m256 w = _mm256_loadu_ps(w_first + j), w2 = _mm256_loadu_ps(w_second + j);
    for (int r = 0; r < ROWS; r++) {
      __m256 xr = _mm256_loadu_ps(x + r * k + j);
      acc[r] = _mm256_fmadd_ps(w, xr, acc[r]);
      acc2[r] = _mm256_fmadd_ps(w2, xr, acc2[r]);
    }
  }
  for (int r = 0; r < ROWS; r++) first[r] = horizontal_sum(acc[r]), second[r] = horizontal_sum(acc2[r]);
}

// y[r + i, col] = sums[i] + bias[col] for `group` rows from r, or y[...] += that when `accumulate`.
inline void store(float* y, int64_t ld_y, int64_t r, int64_t group, int64_t col, const float* sums,
                  const float* bias, bool accumulate) {
  float b = bias ? bias[col] : 0.0f;
  for (int64_t i = 0; i < group; i++) {
    float* out = y + (r + i) * ld_y + col;
    *out = accumulate ? *out + (sums[i] + b) : sums[i] + b;
  }
}

// For columns [begin, end): y[r, col] = x[r] . w[col] + bias[col] for every row r of x [m, k] (rows k apart), or
// y[r, col] += that when `accumulate`. `bias` may be null; y's rows are `ld_y` apart. Column begin + i is paired
// with the column half the range further on; each weight row is read once and applied to the rows of x by fours.
void product_columns(const float* x, int64_t m, int64_t k, const float* w, const float* bias, float* y,
                     int64_t ld_y, int64_t begin, int64_t end, bool accumulate) {
  float sums[4], sums2[4];
  int64_t half = (end - begin) / 2;
  for (int64_t col = begin; col < begin + half; col++) {
    const float *w_first = w + col * k, *w_second = w + (col + half) * k;
    for (int64_t r = 0; r < m; r += 4) {
      int64_t group = m - r < 4 ? m - r : 4;
      switch (group) {
        case 4: dot_pair<4>(x + r * k, w_first, w_second, k, sums, sums2); break;
        case 3: dot_pair<3>(x + r * k, w_first, w_second, k, sums, sums2); break;
        case 2: dot_pair<2>(x + r * k, w_first, w_second, k, sums, sums2); break;
        default: dot_pair<1>(x + r * k, w_first, w_second, k, sums, sums2); break;
      }
      store(y, ld_y, r, group, col, sums, bias, accumulate);
      store(y, ld_y, r, group, col + half, sums2, bias, accumulate);
    }
  }
  if ((end - begin) % 2) {  // the odd column out
    const float* w_row = w + (end - 1) * k;
    for (int64_t r = 0; r < m; r += 4) {
      int64_t group = m - r < 4 ? m - r : 4;
      switch (group) {
        case 4: dot_rows<4>(x + r * k, w_row, k, sums); break;
        case 3: dot_rows<3>(x + r * k, w_row, k, sums); break;
        case 2: dot_rows<2>(x + r * k, w_row, k, sums); break;
        default: dot_rows<1>(x + r * k, w_row, k, sums); break;
      }
      store(y, ld_y, r, group, end - 1, sums, bias, accumulate);
    }
  }
}

inline int64_t tasks_for(int64_t n) { return (n + kColumnsPerTask - 1) / kColumnsPerTask; }
inline int64_t task_end(int64_t task, int64_t n) { return std::min((task + 1) * kColumnsPerTask, n); }

// The product over all n columns, shared out in tasks of kColumnsPerTask columns; called by every thread of a team.
void team_product(const float* x, int64_t m, int64_t k, const float* w, const float* bias, float* y, int64_t ld_y,
                  int64_t n, bool accumulate) {
#pragma omp for schedule(static)
  for (int64_t task = 0; task < tasks_for(n); task++)
    product_columns(x, m, k, w, bias, y, ld_y, task * kColumnsPerTask, task_end(task, n), accumulate);
}

inline float dot(const float* a, const float* b, int64_t n) {  // n a multiple of 8
  __m256 acc = _mm256_setzero_ps();
  for (int64_t i = 0; i < n; i += 8) acc = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc);
  return horizontal_sum(acc);
}

// out = h / sqrt(mean(h^2) + eps) * weight, row by row, as the models' RMSNorm computes it in float32.
void rms_norm(const float* h, const float* weight, float* out, int64_t rows, int64_t width, float eps) {
  for (int64_t r = 0; r < rows; r++) {
    const float* x = h + r * width;
    float inverse = 1.0f / std::sqrt(dot(x, x, width) / static_cast<float>(width) + eps);
    for (int64_t i = 0; i < width; i++) out[r * width + i] = weight[i] * (x[i] * inverse);
  }
}

// The rotary embedding of one head whose pairs are adjacent (x[2i], x[2i + 1]): each times cos[i] + i sin[i].
void rotate_pairs(const float* x, const float* cos, const float* sin, float* out, int64_t half) {
  for (int64_t i = 0; i < half; i++) {
    float a = x[2 * i], b = x[2 * i + 1];
    out[2 * i] = a * cos[i] - b * sin[i];
    out[2 * i + 1] = b * cos[i] + a * sin[i];
  }
}

// out = softmax(q . keys[t] * scale + mask[t]) @ values over the first `visible` cache slots.
void attend(const float* q, const float* keys, const float* values, const float* mask, int64_t visible, float scale,
            float* scores, float* out, int64_t head_dim) {
  float best = -INFINITY;
  for (int64_t t = 0; t < visible; t++) {
    float s = mask[t] == -INFINITY ? -INFINITY : dot(q, keys + t * head_dim, head_dim) * scale + mask[t];
    scores[t] = s;
    best = s > best ? s : best;
  }
  float total = 0.0f;
  for (int64_t i = 0; i < head_dim; i++) out[i] = 0.0f;
  for (int64_t t = 0; t < visible; t++) {
    if (scores[t] == -INFINITY) continue;
    float p = std::exp(scores[t] - best);
    total += p;
    __m256 weight = _mm256_set1_ps(p);
    const float* v = values + t * head_dim;
    for (int64_t i = 0; i < head_dim; i += 8)
      _mm256_storeu_ps(out + i, _mm256_fmadd_ps(weight, _mm256_loadu_ps(v + i), _mm256_loadu_ps(out + i)));
  }
  for (int64_t i = 0; i < head_dim; i++) out[i] /= total;
}

// One layer's tensors as the torch decoder holds them (weights [out, in]); biases may be null.
struct Layer {
  const float *input_norm, *qkv, *qkv_bias, *o, *o_bias, *post_attention_norm, *gate_up, *gate_up_bias, *down,
      *down_bias;
  float *keys, *values;  // this layer's cache [rows, kv_heads, max_length, head_dim]
};

struct Shapes {
  int64_t rows, hidden, heads, kv_heads, head_dim, intermediate, vocab, max_length;
  float eps, scale;
};

// One decode step: tokens [rows] at positions [rows] -> logits [rows, vocab], their keys and values written to
// cache slot `slot`, attending to slots [0, slot] where mask [rows, max_length] is 0. cos/sin [max_length, d/2].
void decode_step(const Shapes& s, const std::vector<Layer>& layers, const float* embed, const float* final_norm,
                 const float* head, const float* head_bias, const float* cos, const float* sin, const float* mask,
                 const int64_t* tokens, const int64_t* positions, int64_t slot, float* workspace, float* logits,
                 int threads) {
  const int64_t rows = s.rows, hidden = s.hidden, heads = s.heads, kv_heads = s.kv_heads, head_dim = s.head_dim;
  const int64_t intermediate = s.intermediate, max_length = s.max_length, half = head_dim / 2;
  const int64_t q_width = heads * head_dim, kv_width = kv_heads * head_dim, qkv_width = q_width + 2 * kv_width;
  const int64_t groups = heads / kv_heads, visible = slot + 1;
  float *h = workspace, *normed = h + rows * hidden, *qkv = normed + rows * hidden;
  float *attended = qkv + rows * qkv_width, *gate_up = attended + rows * q_width;
  float *act = gate_up + rows * 2 * intermediate, *scores = act + rows * intermediate;
  for (int64_t r = 0; r < rows; r++) std::memcpy(h + r * hidden, embed + tokens[r] * hidden, hidden * sizeof(float));

#pragma omp parallel num_threads(threads)
  {
    for (const Layer& layer : layers) {
#pragma omp single
      rms_norm(h, layer.input_norm, normed, rows, hidden, s.eps);
      team_product(normed, rows, hidden, layer.qkv, layer.qkv_bias, qkv, qkv_width, qkv_width, false);
#pragma omp for schedule(static)
      for (int64_t pair = 0; pair < rows * kv_heads; pair++) {  // (row, KV head): its key, value, query heads
        int64_t r = pair / kv_heads, kv_head = pair % kv_heads;
        const float *cos_r = cos + positions[r] * half, *sin_r = sin + positions[r] * half;
        float* row = qkv + r * qkv_width;
        float* keys = layer.keys + pair * max_length * head_dim;
        float* values = layer.values + pair * max_length * head_dim;
        rotate_pairs(row + q_width + kv_head * head_dim, cos_r, sin_r, keys + slot * head_dim, half);
        std::memcpy(values + slot * head_dim, row + q_width + kv_width + kv_head * head_dim,
                    head_dim * sizeof(float));
        for (int64_t g = 0; g < groups; g++) {
          int64_t query_head = kv_head * groups + g;
          float* query = row + query_head * head_dim;
          rotate_pairs(query, cos_r, sin_r, query, half);
          attend(query, keys, values, mask + r * max_length, visible, s.scale,
                 scores + (r * heads + query_head) * max_length, attended + r * q_width + query_head * head_dim,
                 head_dim);
        }
      }
      team_product(attended, rows, q_width, layer.o, layer.o_bias, h, hidden, hidden, true);
#pragma omp single
      rms_norm(h, layer.post_attention_norm, normed, rows, hidden, s.eps);
#pragma omp for schedule(static)
      for (int64_t task = 0; task < tasks_for(intermediate); task++) {  // gate and up, then SiLU(gate) * up
        int64_t begin = task * kColumnsPerTask, end = task_end(task, intermediate), width = 2 * intermediate;
        product_columns(normed, rows, hidden, layer.gate_up, layer.gate_up_bias, gate_up, width, begin, end, false);
        product_columns(normed, rows, hidden, layer.gate_up, layer.gate_up_bias, gate_up, width,
                        intermediate + begin, intermediate + end, false);
        for (int64_t r = 0; r < rows; r++)
          for (int64_t i = begin; i < end; i++) {
            float gate = gate_up[r * width + i];
            act[r * intermediate + i] = gate / (1.0f + std::exp(-gate)) * gate_up[r * width + intermediate + i];
          }
      }
      team_product(act, rows, intermediate, layer.down, layer.down_bias, h, hidden, hidden, true);
    }
#pragma omp single
    rms_norm(h, final_norm, normed, rows, hidden, s.eps);
    team_product(normed, rows, hidden, head, head_bias, logits, s.vocab, s.vocab, false);
  }
}

#pragma GCC pop_options

bool cpu_supported() { return __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma"); }

const float* data_or_null(const std::optional<at::Tensor>& tensor) {
  return tensor.has_value() ? tensor->data_ptr<float>() : nullptr;
}

void check_float(const at::Tensor& tensor, std::vector<int64_t> shape, const char* name) {
  TORCH_CHECK(tensor.device().is_cpu() && tensor.scalar_type() == at::kFloat && tensor.is_contiguous(), name,
              ": expected a contiguous float32 CPU tensor");
  TORCH_CHECK(tensor.sizes() == at::IntArrayRef(shape), name, ": expected shape ", at::IntArrayRef(shape), ", got ",
              tensor.sizes());
}

void check_optional(const std::optional<at::Tensor>& tensor, std::vector<int64_t> shape, const char* name) {
  if (tensor.has_value()) check_float(*tensor, std::move(shape), name);
}

at::Tensor skinny_matmul(const at::Tensor& x, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                         std::optional<at::Tensor> out, bool accumulate) {
  TORCH_CHECK(cpu_supported(), "skinny_matmul needs a CPU with AVX2 and FMA");
  TORCH_CHECK(x.dim() == 2 && weight.dim() == 2, "skinny_matmul takes x [m, k] and weight [n, k]");
  const int64_t m = x.size(0), k = x.size(1), n = weight.size(0);
  TORCH_CHECK(m > 0 && n > 0 && k > 0 && k % 8 == 0, "skinny_matmul takes k a positive multiple of 8, got ", k);
  check_float(x, {m, k}, "x");
  check_float(weight, {n, k}, "weight");
  check_optional(bias, {n}, "bias");
  TORCH_CHECK(out.has_value() || !accumulate, "accumulate needs out");
  if (out.has_value())
    check_float(*out, {m, n}, "out");
  else
    out = at::empty({m, n}, x.options());
  const float *x_data = x.data_ptr<float>(), *w_data = weight.data_ptr<float>(), *b_data = data_or_null(bias);
  float* y = out->data_ptr<float>();
  int threads = at::get_num_threads();
  {
    pybind11::gil_scoped_release released;
#pragma omp parallel num_threads(threads)
    team_product(x_data, m, k, w_data, b_data, y, n, n, accumulate);
  }
  return *out;
}

// One decode step over a torch decoder's tensors, which it holds (so they outlive it) and checks once.
class DecodeStep {
 public:
  // `layers`: per layer [input_norm, qkv, qkv_bias, o, o_bias, post_attention_norm, gate_up, gate_up_bias, down,
  // down_bias] (a missing bias is None); keys/values [layers, rows, kv_heads, max_length, head_dim]; mask
  // [rows, ..., max_length] (0 or -inf); cos/sin [max_length, head_dim / 2].
  DecodeStep(at::Tensor embed, std::vector<std::vector<std::optional<at::Tensor>>> layers, at::Tensor final_norm,
             at::Tensor head, std::optional<at::Tensor> head_bias, at::Tensor keys, at::Tensor values, at::Tensor mask,
             at::Tensor cos, at::Tensor sin, int64_t heads, double eps, double scale)
      : embed_(std::move(embed)), final_norm_(std::move(final_norm)), head_(std::move(head)),
        head_bias_(std::move(head_bias)), keys_(std::move(keys)), values_(std::move(values)), mask_(std::move(mask)),
        cos_(std::move(cos)), sin_(std::move(sin)), held_(std::move(layers)) {
    TORCH_CHECK(cpu_supported(), "DecodeStep needs a CPU with AVX2 and FMA");
    TORCH_CHECK(keys_.dim() == 5, "keys: expected [layers, rows, kv_heads, max_length, head_dim]");
    TORCH_CHECK(embed_.dim() == 2 && head_.dim() == 2, "embed and head: expected [vocab, hidden]");
    const int64_t count = keys_.size(0), hidden = embed_.size(1);
    s_.rows = keys_.size(1), s_.kv_heads = keys_.size(2), s_.max_length = keys_.size(3);
    s_.head_dim = keys_.size(4), s_.heads = heads, s_.hidden = hidden, s_.vocab = head_.size(0);
    s_.eps = static_cast<float>(eps), s_.scale = static_cast<float>(scale);
    TORCH_CHECK(count == static_cast<int64_t>(held_.size()) && count > 0, "one cache per layer");
    TORCH_CHECK(heads > 0 && heads % s_.kv_heads == 0, "heads must be a multiple of kv_heads");
    TORCH_CHECK(hidden % 8 == 0 && s_.head_dim % 8 == 0, "hidden size and head_dim must be multiples of 8");
    const int64_t rows = s_.rows, q_width = heads * s_.head_dim, kv_width = s_.kv_heads * s_.head_dim;
    check_float(embed_, {embed_.size(0), hidden}, "embed");
    check_float(final_norm_, {hidden}, "final_norm");
    check_float(head_, {s_.vocab, hidden}, "head");
    check_optional(head_bias_, {s_.vocab}, "head_bias");
    check_float(keys_, keys_.sizes().vec(), "keys");
    check_float(values_, keys_.sizes().vec(), "values");
    check_float(mask_, mask_.sizes().vec(), "mask");
    TORCH_CHECK(mask_.numel() == rows * s_.max_length && mask_.size(0) == rows, "mask: expected rows x max_length");
    check_float(cos_, {s_.max_length, s_.head_dim / 2}, "cos");
    check_float(sin_, {s_.max_length, s_.head_dim / 2}, "sin");
    for (int64_t index = 0; index < count; index++) {
      auto& t = held_[index];
      TORCH_CHECK(t.size() == 10, "each layer: 10 tensors");
      for (int i : {0, 1, 3, 5, 6, 8}) TORCH_CHECK(t[i].has_value(), "layer tensor ", i, " is required");
      if (index == 0) s_.intermediate = t[6]->size(0) / 2;
      TORCH_CHECK(s_.intermediate % 8 == 0, "the intermediate size must be a multiple of 8");
      check_float(*t[0], {hidden}, "input_norm");
      check_float(*t[1], {q_width + 2 * kv_width, hidden}, "qkv");
      check_optional(t[2], {q_width + 2 * kv_width}, "qkv_bias");
      check_float(*t[3], {hidden, q_width}, "o");
      check_optional(t[4], {hidden}, "o_bias");
      check_float(*t[5], {hidden}, "post_attention_norm");
      check_float(*t[6], {2 * s_.intermediate, hidden}, "gate_up");
      check_optional(t[7], {2 * s_.intermediate}, "gate_up_bias");
      check_float(*t[8], {hidden, s_.intermediate}, "down");
      check_optional(t[9], {hidden}, "down_bias");
      layers_.push_back({t[0]->data_ptr<float>(), t[1]->data_ptr<float>(), data_or_null(t[2]),
                         t[3]->data_ptr<float>(), data_or_null(t[4]), t[5]->data_ptr<float>(),
                         t[6]->data_ptr<float>(), data_or_null(t[7]), t[8]->data_ptr<float>(), data_or_null(t[9]),
                         keys_[index].data_ptr<float>(), values_[index].data_ptr<float>()});
    }
    workspace_ = at::empty({rows * (2 * hidden + 2 * q_width + 2 * kv_width + 3 * s_.intermediate +
                                    heads * s_.max_length)},
                           embed_.options());
  }

  // Logits [rows, vocab] of the tokens [rows] at positions [rows]; their keys and values go to cache slot `slot`,
  // and attention reads slots [0, slot] where the mask is 0 (the caller opens `slot` first).
  at::Tensor operator()(const at::Tensor& tokens_in, const at::Tensor& positions_in, int64_t slot) {
    at::Tensor tokens = tokens_in.to(at::kLong).contiguous(), positions = positions_in.to(at::kLong).contiguous();
    TORCH_CHECK(tokens.numel() == s_.rows && positions.numel() == s_.rows, "tokens and positions: one per row");
    TORCH_CHECK(slot >= 0 && slot < s_.max_length, "slot ", slot, " is outside the cache of ", s_.max_length);
    const int64_t *token = tokens.data_ptr<int64_t>(), *position = positions.data_ptr<int64_t>();
    for (int64_t r = 0; r < s_.rows; r++) {
      TORCH_CHECK(token[r] >= 0 && token[r] < embed_.size(0), "token ", token[r], " is outside the vocabulary");
      TORCH_CHECK(position[r] >= 0 && position[r] < s_.max_length, "position ", position[r], " is outside the cache");
    }
    at::Tensor logits = at::empty({s_.rows, s_.vocab}, embed_.options());
    int threads = at::get_num_threads();
    pybind11::gil_scoped_release released;
    decode_step(s_, layers_, embed_.data_ptr<float>(), final_norm_.data_ptr<float>(), head_.data_ptr<float>(),
                data_or_null(head_bias_), cos_.data_ptr<float>(), sin_.data_ptr<float>(), mask_.data_ptr<float>(),
                token, position, slot, workspace_.data_ptr<float>(), logits.data_ptr<float>(), threads);
    return logits;
  }

 private:
  at::Tensor embed_, final_norm_, head_;
  std::optional<at::Tensor> head_bias_;
  at::Tensor keys_, values_, mask_, cos_, sin_, workspace_;
  std::vector<std::vector<std::optional<at::Tensor>>> held_;
  std::vector<Layer> layers_;
  Shapes s_{};
};

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  m.doc() = "Float32 decode-step kernels for x86-64 CPUs with AVX2 and FMA";
  m.def("supported", &cpu_supported, "Whether this CPU can run the kernels (AVX2 and FMA)");
  m.def("skinny_matmul", &skinny_matmul, "x @ weight.T (+ bias), into out (added to it when accumulate)",
        pybind11::arg("x"), pybind11::arg("weight"), pybind11::arg("bias") = pybind11::none(),
        pybind11::arg("out") = pybind11::none(), pybind11::arg("accumulate") = false);
  pybind11::class_<DecodeStep>(m, "DecodeStep")
      .def(pybind11::init<at::Tensor, std::vector<std::vector<std::optional<at::Tensor>>>, at::Tensor, at::Tensor,
                          std::optional<at::Tensor>, at::Tensor, at::Tensor, at::Tensor, at::Tensor, at::Tensor,
                          int64_t, double, double>(),
           pybind11::arg("embed"), pybind11::arg("layers"), pybind11::arg("final_norm"), pybind11::arg("head"),
           pybind11::arg("head_bias"), pybind11::arg("keys"), pybind11::arg("values"), pybind11::arg("mask"),
           pybind11::arg("cos"), pybind11::arg("sin"), pybind11::arg("heads"), pybind11::arg("eps"),
           pybind11::arg("scale"))
      .def("__call__", &DecodeStep::operator(), pybind11::arg("tokens"), pybind11::arg("positions"),
           pybind11::arg("slot"));
}
