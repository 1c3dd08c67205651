// Standalone correctness + timing harness for the sm90 forward (no GoogleTest, no CMake):
// builds with nvcc from src/sm90 + src/core/status.cpp, so it can travel to the GPU machine as
// one binary. Correctness: a float64 CPU reference on the same low-precision inputs and
// FlashAttention's rule max|out - ref64| <= 2 * max|ref_lowp - ref64| + 1e-5 (ref_lowp = ref64
// rounded to the output type). Timing: CUDA events, warm-up, median of repetitions.
//
//   harness check [seed]        randomized sweep (prints one line per case, a summary last)
//   harness bench               canonical grid cells (hdim 64/128/256, 8k/16k, causal 0/1)
//   harness one d dv b hq hkv sq sk mask wl wr softcap varlen seqused dtype  (one case, checked)
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "core/attention_rules.h"
#include "dispatch/backends.h"
#include "sm90/fwd/launch_decl.h"
#include "sm90/sm90_forward.h"

using namespace flashlane;

#define CUDA_OK(x)                                                                      \
  do {                                                                                  \
    cudaError_t e_ = (x);                                                               \
    if (e_ != cudaSuccess) {                                                            \
      std::fprintf(stderr, "CUDA error %s at %s:%d\n", cudaGetErrorString(e_), __FILE__, \
                   __LINE__);                                                           \
      std::exit(2);                                                                     \
    }                                                                                   \
  } while (0)

namespace {

struct Case {
  DType dtype = DType::kBFloat16;
  int d = 128, dv = 128;
  int batch = 1, hq = 1, hkv = 1;
  int sq = 128, sk = 128;  // bshd sizes, or max lengths for varlen
  MaskType mask = MaskType::kNoMask;
  int wl = -1, wr = -1;
  double softcap = 0.0;
  bool varlen = false;
  bool seqused = false;
  bool padded_strides = false;  // head rows padded: non-contiguous token/head strides
  int schedule = 0;             // sm90::ScheduleOverride
  bool pingpong = true;
  int64_t big_batch_stride = 0;  // > 0: q/k/v/o batch stride in elements (64-bit offsets test)
};

uint16_t to_bits(float x, DType dt) {
  if (dt == DType::kBFloat16) {
    __nv_bfloat16 h = __float2bfloat16_rn(x);
    uint16_t b;
    std::memcpy(&b, &h, 2);
    return b;
  }
  __half h = __float2half_rn(x);
  uint16_t b;
  std::memcpy(&b, &h, 2);
  return b;
}
float from_bits(uint16_t b, DType dt) {
  if (dt == DType::kBFloat16) {
    __nv_bfloat16 h;
    std::memcpy(&h, &b, 2);
    return __bfloat162float(h);
  }
  __half h;
  std::memcpy(&h, &b, 2);
  return __half2float(h);
}
double round_lowp(double x, DType dt) { return from_bits(to_bits(float(x), dt), dt); }

// One tensor [rows, heads, dim] (varlen) or [batch, seqlen, heads, dim] (bshd) stored as
// 16-bit bits with a token stride and head stride (in elements).
struct HostT {
  std::vector<uint16_t> bits;
  int64_t row_stride = 0, head_stride = 0, batch_stride = 0;
};

struct Problem {
  Case c;
  std::vector<int> len_q, len_k, used_k, off_q, off_k;
  int total_q = 0, total_k = 0;
  HostT q, k, v;
  int64_t o_row_stride = 0, o_head_stride = 0, o_batch_stride = 0;
  size_t o_elems = 0, lse_elems = 0;
  double scale = 0;
};

void make_tensor(HostT& t, const Case& c, int rows_per_batch, int heads, int dim, int pad,
                 int batches, bool allocate = true) {
  t.head_stride = dim + pad;
  t.row_stride = int64_t(heads) * t.head_stride;
  t.batch_stride = int64_t(rows_per_batch) * t.row_stride;
  if (allocate) t.bits.assign(size_t(t.batch_stride) * batches, to_bits(NAN, c.dtype));
}

// Benchmark inputs are generated on the device (host generation of 10^8 values is slow):
// uniform in [-2, 2) from a per-element hash, never zeros.
__global__ void fill_random_kernel(uint16_t* out, size_t n, uint64_t seed, bool bf16) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n;
       i += size_t(gridDim.x) * blockDim.x) {
    uint64_t x = (i + 1) * 0x9E3779B97F4A7C15ull ^ seed;
    x ^= x >> 31; x *= 0xBF58476D1CE4E5B9ull; x ^= x >> 29;
    const float u = float(x >> 40) * (1.0f / 16777216.0f) * 4.0f - 2.0f;
    if (bf16) {
      __nv_bfloat16 h = __float2bfloat16_rn(u);
      out[i] = *reinterpret_cast<uint16_t*>(&h);
    } else {
      __half h = __float2half_rn(u);
      out[i] = *reinterpret_cast<uint16_t*>(&h);
    }
  }
}

Problem build(const Case& c, std::mt19937_64& rng, bool host_data = true) {
  Problem p;
  p.c = c;
  std::normal_distribution<float> normal(0.f, 1.f);
  std::uniform_int_distribution<int> lenq(c.varlen ? 0 : c.sq, c.sq), lenk(c.varlen ? 0 : c.sk, c.sk);
  for (int b = 0; b < c.batch; ++b) {
    int lq = lenq(rng), lk = lenk(rng);
    if (c.varlen && b == 0) { lq = c.sq; lk = c.sk; }  // the max is reached
    p.len_q.push_back(lq);
    p.len_k.push_back(lk);
    int used = lk;
    if (c.seqused) used = std::uniform_int_distribution<int>(0, lk)(rng);
    if (c.seqused && b == 0) used = std::max(lk - 7, 0);
    p.used_k.push_back(used);
    p.off_q.push_back(p.total_q);
    p.off_k.push_back(p.total_k);
    p.total_q += lq;
    p.total_k += lk;
  }
  const int pad = c.padded_strides ? 8 : 0;
  const int bq = c.varlen ? 1 : c.batch;
  const int rq = c.varlen ? p.total_q : c.sq, rk = c.varlen ? p.total_k : c.sk;
  make_tensor(p.q, c, rq, c.hq, c.d, pad, bq, host_data);
  make_tensor(p.k, c, rk, c.hkv, c.d, pad, bq, host_data);
  make_tensor(p.v, c, rk, c.hkv, c.dv, pad, bq, host_data);
  auto fill = [&](HostT& t, int heads, int dim, bool is_kv) {
    for (int b = 0; b < c.batch; ++b) {
      const int rows = is_kv ? p.len_k[b] : p.len_q[b];
      for (int i = 0; i < rows; ++i)
        for (int h = 0; h < heads; ++h)
          for (int x = 0; x < dim; ++x) {
            const int64_t row = c.varlen ? (is_kv ? p.off_k[b] : p.off_q[b]) + i : i;
            const int64_t off = (c.varlen ? 0 : b * t.batch_stride) + row * t.row_stride +
                                h * t.head_stride + x;
            // Keys at or past seqused_k are never used: plant NaN there.
            const bool unused = is_kv && i >= p.used_k[b];
            t.bits[off] = to_bits(unused ? NAN : normal(rng), c.dtype);
          }
    }
  };
  if (host_data) {
    fill(p.q, c.hq, c.d, false);
    fill(p.k, c.hkv, c.d, true);
    fill(p.v, c.hkv, c.dv, true);
  }
  p.o_head_stride = c.dv;
  p.o_row_stride = int64_t(c.hq) * c.dv;
  p.o_batch_stride = int64_t(rq) * p.o_row_stride;
  p.o_elems = size_t(p.o_batch_stride) * bq;
  p.lse_elems = size_t(c.hq) * (c.varlen ? p.total_q : size_t(c.batch) * c.sq);
  p.scale = 1.0 / std::sqrt(double(c.d));
  return p;
}

MaskRule rule_of(const Case& c) {
  MaskRule r;
  r.window_left = c.wl;
  r.window_right = c.mask != MaskType::kNoMask ? 0 : c.wr;
  r.bottom_right = c.mask != MaskType::kCausal;
  return r;
}

// float64 reference for query rows [i0, i1) of (b, h) -> o (dv values per row) and lse.
void reference_rows(const Problem& p, int b, int h, int i0, int i1, std::vector<double>& o,
                    std::vector<double>& lse) {
  const Case& c = p.c;
  const MaskRule rule = rule_of(c);
  const int hk = h / (c.hq / c.hkv);
  const int lq = p.len_q[b], lk = p.used_k[b];
  auto at = [&](const HostT& t, int row, int head, int x) {
    const int64_t r = c.varlen ? row : row;
    return double(from_bits(t.bits[(c.varlen ? 0 : b * t.batch_stride) + r * t.row_stride +
                                   head * t.head_stride + x],
                            c.dtype));
  };
  std::vector<double> s(std::max(lk, 1));
  o.assign(size_t(i1 - i0) * c.dv, 0.0);
  lse.assign(i1 - i0, -INFINITY);
  for (int i = i0; i < i1; ++i) {
    const int qrow = (c.varlen ? p.off_q[b] : 0) + i;
    double mx = -INFINITY;
    for (int j = 0; j < lk; ++j) {
      if (!rule.visible(i, j, lq, lk)) { s[j] = -INFINITY; continue; }
      const int krow = (c.varlen ? p.off_k[b] : 0) + j;
      double acc = 0;
      for (int x = 0; x < c.d; ++x) acc += at(p.q, qrow, h, x) * at(p.k, krow, hk, x);
      acc *= p.scale;
      if (c.softcap > 0) acc = c.softcap * std::tanh(acc / c.softcap);
      s[j] = acc;
      mx = std::max(mx, acc);
    }
    if (mx == -INFINITY) continue;  // O = 0, LSE = -inf
    double sum = 0;
    for (int j = 0; j < lk; ++j) {
      if (s[j] == -INFINITY) continue;
      const double e = std::exp(s[j] - mx);
      sum += e;
      const int krow = (c.varlen ? p.off_k[b] : 0) + j;
      for (int x = 0; x < c.dv; ++x) o[size_t(i - i0) * c.dv + x] += e * at(p.v, krow, hk, x);
    }
    for (int x = 0; x < c.dv; ++x) o[size_t(i - i0) * c.dv + x] /= sum;
    lse[i - i0] = mx + std::log(sum);
  }
}

// Tuning experiments launch a non-default instantiation through the same parameters.
using Launcher = Status (*)(sm90::FwdParams, cudaStream_t);
Launcher g_launcher = nullptr;
std::string g_launcher_name;

Status launch(const AttentionProblem& ap, const ProblemInfo& info, std::string* variant) {
  if (g_launcher == nullptr) return detail::sm90_forward(ap, info, nullptr, variant);
  sm90::FwdParams p;
  if (Status st = sm90::build_fwd_params(ap, info, &p); !st.ok()) return st;
  if (variant != nullptr) *variant = g_launcher_name;
  return g_launcher(p, nullptr);
}

struct CheckResult {
  bool pass = false;
  double err_o = 0, tol_o = 0, err_lse = 0, tol_lse = 0;
  long bad_written = 0, guard_touched = 0;
  std::string variant;
  std::string note;
};

struct DeviceProblem {
  void *q = nullptr, *k = nullptr, *v = nullptr, *o = nullptr;
  float* lse = nullptr;
  int32_t *cu_q = nullptr, *cu_k = nullptr, *used = nullptr;
  size_t o_bytes = 0, lse_bytes = 0;
};

constexpr size_t kGuardElems = 4096;  // poisoned elements after O and LSE: must stay untouched

AttentionProblem to_problem(const Problem& p, DeviceProblem& dp, ProblemInfo* info) {
  const Case& c = p.c;
  const DType dt = c.dtype;
  const Device dev = Device::cuda(0);
  AttentionProblem ap;
  const int rq = c.varlen ? p.total_q : c.sq, rk = c.varlen ? p.total_k : c.sk;
  auto view = [&](void* ptr, HostT t, int rows, int heads, int dim) {
    if (c.big_batch_stride > 0) t.batch_stride = c.big_batch_stride;
    if (c.varlen)
      return TensorView::strided(ptr, dt, {rows, heads, dim}, {t.row_stride, t.head_stride, 1}, dev);
    return TensorView::strided(ptr, dt, {c.batch, rows, heads, dim},
                               {t.batch_stride, t.row_stride, t.head_stride, 1}, dev);
  };
  ap.q = view(dp.q, p.q, rq, c.hq, c.d);
  ap.k = view(dp.k, p.k, rk, c.hkv, c.d);
  ap.v = view(dp.v, p.v, rk, c.hkv, c.dv);
  HostT ot;
  ot.row_stride = p.o_row_stride;
  ot.head_stride = p.o_head_stride;
  ot.batch_stride = p.o_batch_stride;
  ap.o = view(dp.o, ot, rq, c.hq, c.dv);
  if (c.varlen) {
    ap.lse = TensorView::contiguous(dp.lse, DType::kFloat32, {c.hq, p.total_q}, dev);
    ap.cu_seqlens_q = TensorView::contiguous(dp.cu_q, DType::kInt32, {c.batch + 1}, dev);
    ap.cu_seqlens_k = TensorView::contiguous(dp.cu_k, DType::kInt32, {c.batch + 1}, dev);
  } else {
    ap.lse = TensorView::contiguous(dp.lse, DType::kFloat32, {c.batch, c.hq, c.sq}, dev);
  }
  if (c.seqused) ap.seqused_k = TensorView::contiguous(dp.used, DType::kInt32, {c.batch}, dev);
  ap.mask = c.mask;
  ap.window_left = c.wl;
  ap.window_right = c.wr;
  ap.softcap = c.softcap;

  ProblemInfo& in = *info;
  in.direction = Direction::kForward;
  in.dtype = dt;
  in.device = dev;
  in.varlen = c.varlen;
  in.batch = c.batch;
  in.seqlen_q = c.sq;
  in.seqlen_k = c.sk;
  in.total_q = c.varlen ? p.total_q : int64_t(c.batch) * c.sq;
  in.total_k = c.varlen ? p.total_k : int64_t(c.batch) * c.sk;
  in.heads_q = c.hq;
  in.heads_kv = c.hkv;
  in.head_dim = c.d;
  in.head_dim_v = c.dv;
  in.has_lse = true;
  in.has_seqused_k = c.seqused;
  in.softmax_scale = p.scale;
  in.softcap = c.softcap;
  in.mask = c.mask;
  in.bottom_right = c.mask != MaskType::kCausal;
  in.window_left = c.wl;
  in.window_right = c.mask != MaskType::kNoMask ? 0 : c.wr;
  return ap;
}

DeviceProblem upload(const Problem& p, bool device_fill = false) {
  DeviceProblem dp;
  const int batches = p.c.varlen ? 1 : p.c.batch;
  auto up = [&](const HostT& t, void** d) {
    if (device_fill) {
      const size_t n = size_t(t.batch_stride) * batches;
      CUDA_OK(cudaMalloc(d, n * 2));
      fill_random_kernel<<<1024, 256>>>(static_cast<uint16_t*>(*d), n, uint64_t(size_t(*d)),
                                        p.c.dtype == DType::kBFloat16);
      CUDA_OK(cudaGetLastError());
      return;
    }
    if (p.c.big_batch_stride > 0) {  // batch b at element b * big_batch_stride
      const size_t big = size_t(p.c.big_batch_stride);
      CUDA_OK(cudaMalloc(d, (size_t(batches - 1) * big + t.batch_stride) * 2));
      for (int b = 0; b < batches; ++b) {
        CUDA_OK(cudaMemcpy(static_cast<uint16_t*>(*d) + b * big, t.bits.data() + b * t.batch_stride,
                           t.batch_stride * 2, cudaMemcpyHostToDevice));
      }
      return;
    }
    CUDA_OK(cudaMalloc(d, t.bits.size() * 2));
    CUDA_OK(cudaMemcpy(*d, t.bits.data(), t.bits.size() * 2, cudaMemcpyHostToDevice));
  };
  up(p.q, &dp.q);
  up(p.k, &dp.k);
  up(p.v, &dp.v);
  dp.o_bytes = (p.o_elems + kGuardElems) * 2;
  if (p.c.big_batch_stride > 0) {
    dp.o_bytes = (size_t(batches - 1) * p.c.big_batch_stride + p.o_batch_stride + kGuardElems) * 2;
  }
  dp.lse_bytes = (p.lse_elems + kGuardElems) * 4;
  CUDA_OK(cudaMalloc(&dp.o, dp.o_bytes));
  CUDA_OK(cudaMalloc(&dp.lse, dp.lse_bytes));
  std::vector<int32_t> cu_q{0}, cu_k{0};
  for (size_t b = 0; b < p.len_q.size(); ++b) {
    cu_q.push_back(cu_q.back() + p.len_q[b]);
    cu_k.push_back(cu_k.back() + p.len_k[b]);
  }
  auto up32 = [](const std::vector<int32_t>& h, int32_t** d) {
    CUDA_OK(cudaMalloc(d, h.size() * 4));
    CUDA_OK(cudaMemcpy(*d, h.data(), h.size() * 4, cudaMemcpyHostToDevice));
  };
  up32(cu_q, &dp.cu_q);
  up32(cu_k, &dp.cu_k);
  up32(std::vector<int32_t>(p.used_k.begin(), p.used_k.end()), &dp.used);
  return dp;
}

void release(DeviceProblem& dp) {
  for (void* ptr : {dp.q, dp.k, dp.v, dp.o, (void*)dp.lse, (void*)dp.cu_q, (void*)dp.cu_k,
                    (void*)dp.used})
    cudaFree(ptr);
}

CheckResult run_and_check(const Case& c, uint64_t seed, int sample_rows = 0) {
  std::mt19937_64 rng(seed);
  Problem p = build(c, rng);
  DeviceProblem dp = upload(p);
  CheckResult res;
  ProblemInfo info;
  AttentionProblem ap = to_problem(p, dp, &info);
  CUDA_OK(cudaMemset(dp.o, 0xFF, dp.o_bytes));
  CUDA_OK(cudaMemset(dp.lse, 0xFF, dp.lse_bytes));
  sm90::set_schedule_override(sm90::ScheduleOverride(c.schedule));
  sm90::set_pingpong(c.pingpong);
  Status st = launch(ap, info, &res.variant);
  if (!st.ok()) {
    res.note = "launch: " + st.to_string();
    release(dp);
    return res;
  }
  cudaError_t e = cudaDeviceSynchronize();
  if (e != cudaSuccess) {
    res.note = std::string("kernel: ") + cudaGetErrorString(e);
    std::printf("FATAL %s\n", res.note.c_str());
    std::exit(3);
  }
  std::vector<uint16_t> o;
  std::vector<float> lse(dp.lse_bytes / 4);
  if (c.big_batch_stride > 0) {
    // Gather the batches into the compact layout; the guard is what follows the last batch.
    o.assign(p.o_elems + kGuardElems, 0);
    for (int b = 0; b < c.batch; ++b) {
      const size_t n = size_t(p.o_batch_stride) + (b == c.batch - 1 ? kGuardElems : 0);
      CUDA_OK(cudaMemcpy(o.data() + b * p.o_batch_stride,
                         static_cast<uint16_t*>(dp.o) + b * size_t(c.big_batch_stride), n * 2,
                         cudaMemcpyDeviceToHost));
    }
  } else {
    o.resize(dp.o_bytes / 2);
    CUDA_OK(cudaMemcpy(o.data(), dp.o, dp.o_bytes, cudaMemcpyDeviceToHost));
  }
  CUDA_OK(cudaMemcpy(lse.data(), dp.lse, dp.lse_bytes, cudaMemcpyDeviceToHost));
  for (size_t i = p.o_elems; i < o.size(); ++i) res.guard_touched += o[i] != 0xFFFF;
  uint32_t poison32;
  std::memset(&poison32, 0xFF, 4);
  for (size_t i = p.lse_elems; i < lse.size(); ++i) {
    uint32_t b;
    std::memcpy(&b, &lse[i], 4);
    res.guard_touched += b != poison32;
  }

  // Reference, parallel over (batch, head) and row chunks.
  struct Job { int b, h, i0, i1; };
  std::vector<Job> jobs;
  for (int b = 0; b < c.batch; ++b)
    for (int h = 0; h < c.hq; ++h) {
      const int lq = p.len_q[b];
      if (sample_rows > 0) {
        // Sampled check for big problems: first, last and a strided middle block of rows.
        for (int i0 : {0, std::max(lq / 2 - sample_rows / 2, 0), std::max(lq - sample_rows, 0)})
          jobs.push_back({b, h, i0, std::min(lq, i0 + sample_rows)});
      } else {
        for (int i0 = 0; i0 < lq; i0 += 64) jobs.push_back({b, h, i0, std::min(lq, i0 + 64)});
      }
    }
  const unsigned nthreads = std::max(1u, std::thread::hardware_concurrency());
  std::vector<double> err_o(nthreads, 0), ref_o(nthreads, 0), err_l(nthreads, 0),
      ref_l(nthreads, 0);
  std::vector<long> bad(nthreads, 0);
  std::vector<std::thread> pool;
  for (unsigned t = 0; t < nthreads; ++t) {
    pool.emplace_back([&, t] {
      std::vector<double> ro, rl;
      for (size_t j = t; j < jobs.size(); j += nthreads) {
        const Job& jb = jobs[j];
        reference_rows(p, jb.b, jb.h, jb.i0, jb.i1, ro, rl);
        for (int i = jb.i0; i < jb.i1; ++i) {
          const int64_t row = (c.varlen ? p.off_q[jb.b] : 0) + i;
          const int64_t obase = (c.varlen ? 0 : jb.b * p.o_batch_stride) + row * p.o_row_stride +
                                jb.h * p.o_head_stride;
          for (int x = 0; x < c.dv; ++x) {
            const double r = ro[size_t(i - jb.i0) * c.dv + x];
            const float got = from_bits(o[obase + x], c.dtype);
            if (!std::isfinite(got)) { ++bad[t]; continue; }
            err_o[t] = std::max(err_o[t], std::fabs(got - r));
            ref_o[t] = std::max(ref_o[t], std::fabs(round_lowp(r, c.dtype) - r));
          }
          const int64_t lidx = c.varlen ? int64_t(jb.h) * p.total_q + row
                                        : (int64_t(jb.b) * c.hq + jb.h) * c.sq + i;
          const double r = rl[i - jb.i0];
          const float got = lse[lidx];
          if (std::isinf(r)) {
            if (!(std::isinf(got) && got < 0)) ++bad[t];
          } else if (!std::isfinite(got)) {
            ++bad[t];
          } else {
            err_l[t] = std::max(err_l[t], std::fabs(got - r));
            ref_l[t] = std::max(ref_l[t], std::fabs(double(float(r)) - r));
          }
        }
      }
    });
  }
  for (auto& th : pool) th.join();
  double eo = 0, ro_ = 0, el = 0, rl_ = 0;
  for (unsigned t = 0; t < nthreads; ++t) {
    eo = std::max(eo, err_o[t]);
    ro_ = std::max(ro_, ref_o[t]);
    el = std::max(el, err_l[t]);
    rl_ = std::max(rl_, ref_l[t]);
    res.bad_written += bad[t];
  }
  res.err_o = eo;
  res.tol_o = 2 * ro_ + 1e-5;
  res.err_lse = el;
  res.tol_lse = 2 * rl_ + 1e-5;
  res.pass = res.bad_written == 0 && res.guard_touched == 0 && eo <= res.tol_o && el <= res.tol_lse;
  release(dp);
  return res;
}

const char* mask_name(const Case& c) {
  switch (c.mask) {
    case MaskType::kNoMask: return "none";
    case MaskType::kCausal: return "causal";
    default: return "causal_br";
  }
}

void print_case(const Case& c, const CheckResult& r) {
  std::printf("%s %-4s d%3d/%3d b%-3d h%2d/%-2d sq%5d sk%5d %-9s w(%d,%d) cap%.0f %s%s%s%s sch%d "
              "pp%d | O %.2e<=%.2e LSE %.2e<=%.2e bad %ld guard %ld | %s %s\n",
              r.pass ? "PASS" : "FAIL", c.dtype == DType::kBFloat16 ? "bf16" : "fp16", c.d, c.dv,
              c.batch, c.hq, c.hkv, c.sq, c.sk, mask_name(c), c.wl, c.wr, c.softcap,
              c.varlen ? "varlen " : "", c.seqused ? "seqused " : "",
              c.padded_strides ? "strided " : "", "", c.schedule, int(c.pingpong), r.err_o, r.tol_o, r.err_lse,
              r.tol_lse, r.bad_written, r.guard_touched, r.variant.c_str(), r.note.c_str());
  std::fflush(stdout);
}

int check(uint64_t seed, int count) {
  std::mt19937_64 rng(seed);
  auto pick = [&](std::initializer_list<int> v) {
    return *(v.begin() + std::uniform_int_distribution<size_t>(0, v.size() - 1)(rng));
  };
  std::vector<Case> cases;
  // Deterministic coverage first: every head dim x dtype on a ragged causal problem and a
  // plain one, then the random sweep.
  const int dims[][2] = {{64, 64}, {96, 96}, {128, 128}, {192, 192}, {192, 128}, {256, 256}};
  for (auto& dd : dims)
    for (DType dt : {DType::kBFloat16, DType::kFloat16}) {
      Case c;
      c.dtype = dt; c.d = dd[0]; c.dv = dd[1]; c.batch = 2; c.hq = 4; c.hkv = 2;
      c.sq = 300; c.sk = 517; c.mask = MaskType::kCausalBottomRight;
      cases.push_back(c);
      c.sq = 256; c.sk = 256; c.mask = MaskType::kNoMask; c.hkv = 4; c.batch = 1;
      cases.push_back(c);
    }
  // Special shapes.
  { Case c; c.sq = 1; c.sk = 1; cases.push_back(c); }
  { Case c; c.sq = 100; c.sk = 0; c.batch = 2; cases.push_back(c); }  // no keys at all
  { Case c; c.sq = 17; c.sk = 113; c.mask = MaskType::kCausal; cases.push_back(c); }
  { Case c; c.sq = 113; c.sk = 17; c.mask = MaskType::kCausal; cases.push_back(c); }  // empty rows
  { Case c; c.sq = 113; c.sk = 17; c.mask = MaskType::kCausalBottomRight; cases.push_back(c); }
  { Case c; c.sq = 4097; c.sk = 4097; c.hq = 2; c.hkv = 1; c.mask = MaskType::kCausal; cases.push_back(c); }
  { Case c; c.sq = 1000; c.sk = 4097; c.hq = 2; c.hkv = 2; c.wl = 300; c.wr = 77; cases.push_back(c); }
  { Case c; c.sq = 1000; c.sk = 1000; c.batch = 3; c.hq = 4; c.hkv = 1; c.softcap = 30; c.schedule = 2; cases.push_back(c); }
  { Case c; c.sq = 500; c.sk = 700; c.batch = 5; c.hq = 4; c.hkv = 2; c.varlen = true; c.seqused = true; c.mask = MaskType::kCausalBottomRight; cases.push_back(c); }
  { Case c; c.sq = 333; c.sk = 333; c.batch = 40; c.hq = 2; c.hkv = 2; c.varlen = true; c.schedule = 2; cases.push_back(c); }
  { Case c; c.sq = 200; c.sk = 300; c.batch = 3; c.hq = 4; c.hkv = 4; c.seqused = true; c.padded_strides = true; cases.push_back(c); }
  for (int i = 0; i < count; ++i) {
    Case c;
    c.dtype = pick({0, 1}) ? DType::kBFloat16 : DType::kFloat16;
    const int di = pick({0, 1, 2, 3, 4, 5});
    c.d = dims[di][0]; c.dv = dims[di][1];
    c.batch = pick({1, 2, 3, 7});
    c.hkv = pick({1, 2, 3});
    c.hq = c.hkv * pick({1, 2, 4});
    c.sq = pick({1, 17, 64, 113, 128, 200, 257, 1000});
    c.sk = pick({1, 17, 80, 113, 128, 256, 300, 1000});
    const int m = pick({0, 1, 2, 3, 4});
    c.mask = m == 1 ? MaskType::kCausal : m == 2 ? MaskType::kCausalBottomRight : MaskType::kNoMask;
    if (m >= 3) { c.wl = pick({-1, 0, 5, 100}); c.wr = pick({-1, 0, 7, 64}); }
    if (m == 1 || m == 2) c.wl = pick({-1, -1, 33});
    c.softcap = pick({0, 0, 1}) ? 20.0 : 0.0;
    c.varlen = pick({0, 1});
    c.seqused = pick({0, 0, 1});
    c.padded_strides = !c.varlen && pick({0, 1});
    c.schedule = pick({0, 1, 2});
    c.pingpong = pick({0, 1, 1});
    cases.push_back(c);
  }
  int fails = 0, n = 0;
  for (size_t i = 0; i < cases.size(); ++i) {
    CheckResult r = run_and_check(cases[i], seed * 1000 + i);
    print_case(cases[i], r);
    fails += !r.pass;
    ++n;
  }
  std::printf("SUMMARY check: %d cases, %d failed\n", n, fails);
  return fails;
}

double median(std::vector<float> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

struct Cell { int d, sq; bool causal; int schedule; bool pingpong = true; };
void bench_cells(const std::vector<Cell>& cells);

void bench() {
  std::vector<Cell> cells;
  for (int d : {128, 64, 256, 96, 192, -192})
    for (int s : {8192, 16384})
      for (bool causal : {false, true}) cells.push_back({d, s, causal, 0});
  cells.push_back({128, 8192, false, 1});
  cells.push_back({128, 16384, false, 1});
  cells.push_back({128, 8192, true, 2});
  for (int d : {128, 64, 256}) {
    cells.push_back({d, 16384, false, 0, false});
    cells.push_back({d, 16384, true, 0, false});
  }
  // The headline cells once more at the end: the spread between the two is the run's noise.
  for (int s : {8192, 16384})
    for (bool causal : {false, true}) cells.push_back({128, s, causal, 0});
  bench_cells(cells);
  // Sampled correctness of one big cell (the benchmark's own output path).
  sm90::set_pingpong(true);
  Case c;
  c.hq = c.hkv = 4;
  c.sq = c.sk = 8192;
  c.batch = 1;
  CheckResult r = run_and_check(c, 99, 32);
  print_case(c, r);
  c.mask = MaskType::kCausal;
  r = run_and_check(c, 98, 32);
  print_case(c, r);
}

void bench_cells(const std::vector<Cell>& cells) {
  std::printf("%-6s %-6s %-6s %-6s %-3s %-10s %-10s %s\n", "hdim", "seqlen", "causal", "sched", "pp", "ms",
              "TFLOP/s", "variant");
  for (const Cell& cell : cells) {
    Case c;
    c.d = cell.d < 0 ? -cell.d : cell.d;  // negative: head_dim -d with head_dim_v 128
    c.dv = cell.d < 0 ? 128 : cell.d;
    c.hq = c.hkv = 2048 / c.d;
    c.batch = 16384 / cell.sq;
    c.sq = c.sk = cell.sq;
    c.mask = cell.causal ? MaskType::kCausal : MaskType::kNoMask;
    c.schedule = cell.schedule;
    std::mt19937_64 rng(7);
    sm90::set_pingpong(cell.pingpong);
    Problem p = build(c, rng, /*host_data=*/false);
    DeviceProblem dp = upload(p, /*device_fill=*/true);
    ProblemInfo info;
    AttentionProblem ap = to_problem(p, dp, &info);
    sm90::set_schedule_override(sm90::ScheduleOverride(c.schedule));
    std::string variant;
    cudaEvent_t e0, e1;
    CUDA_OK(cudaEventCreate(&e0));
    CUDA_OK(cudaEventCreate(&e1));
    for (int i = 0; i < 3; ++i) {
      Status st = launch(ap, info, &variant);
      if (!st.ok()) { std::printf("launch failed: %s\n", st.to_string().c_str()); std::exit(4); }
    }
    CUDA_OK(cudaDeviceSynchronize());
    std::vector<float> ms;
    for (int i = 0; i < 20; ++i) {
      CUDA_OK(cudaEventRecord(e0));
      (void)launch(ap, info, nullptr);
      CUDA_OK(cudaEventRecord(e1));
      CUDA_OK(cudaEventSynchronize(e1));
      CUDA_OK(cudaGetLastError());
      float t;
      CUDA_OK(cudaEventElapsedTime(&t, e0, e1));
      ms.push_back(t);
    }
    const double t = median(ms);
    double flops = 2.0 * c.batch * c.hq * double(c.sq) * c.sk * (c.d + c.dv);
    if (cell.causal) flops /= 2;
    std::printf("%-6d %-6d %-6d %-6d %-3d %-10.3f %-10.1f %s\n", cell.d, cell.sq, int(cell.causal),
                cell.schedule, int(cell.pingpong), t, flops / (t * 1e-3) / 1e12, variant.c_str());
    std::fflush(stdout);
    release(dp);
    cudaEventDestroy(e0);
    cudaEventDestroy(e1);
  }
  sm90::set_pingpong(true);
}

void variants() {
  struct V { const char* name; Launcher fn; int d; };
  const V vs[] = {
      {"default_d192_dv128", nullptr, -192},
      {"fwd_m128_n96_d192_dv128_bf16_stages2", &sm90::launch_fwd<192, 128, true, 96, 2>, -192},
      {"default_d128", nullptr, 128},
      {"fwd_m128_n96_d128_bf16_stages2", &sm90::launch_fwd<128, 128, true, 96, 2>, 128},
  };


  for (const V& v : vs) {
    g_launcher = v.fn;
    g_launcher_name = v.name;
    std::printf("== variant %s\n", v.name);
    int fails = 0;
    for (int i = 0; i < 3; ++i) {
      Case c;
      c.d = v.d < 0 ? -v.d : v.d;
      c.dv = v.d < 0 ? 128 : v.d;
      c.batch = 2; c.hq = 4; c.hkv = 2; c.sq = 300; c.sk = 517;
      c.mask = i == 0 ? MaskType::kCausalBottomRight : MaskType::kNoMask;
      c.varlen = i == 2; c.seqused = i == 2;
      CheckResult r = run_and_check(c, 21 + i);
      print_case(c, r);
      fails += !r.pass;
    }
    if (fails) continue;
    bench_cells({{v.d, 8192, false, 0}, {v.d, 16384, false, 0}, {v.d, 8192, true, 0},
                 {v.d, 16384, true, 0}});
  }
  g_launcher = nullptr;
}

}  // namespace

int main(int argc, char** argv) {
  int dev_count = 0;
  if (cudaGetDeviceCount(&dev_count) != cudaSuccess || dev_count == 0) {
    std::printf("no CUDA device\n");
    return 0;
  }
  cudaDeviceProp prop;
  CUDA_OK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s sm_%d%d, %d SMs\n", prop.name, prop.major, prop.minor,
              prop.multiProcessorCount);
  const std::string mode = argc > 1 ? argv[1] : "check";
  if (mode == "check") {
    const uint64_t seed = argc > 2 ? std::strtoull(argv[2], nullptr, 10) : 1;
    const int count = argc > 3 ? std::atoi(argv[3]) : 60;
    return check(seed, count) == 0 ? 0 : 1;
  }
  if (mode == "big") {
    // 64-bit offsets: batch stride 2^31 + 4096 elements, so batch 1 lives beyond 2^31 elements
    // (4.3 GB per tensor) in q, k, v and o.
    int fails = 0;
    for (int mask = 0; mask < 2; ++mask) {
      Case c;
      c.batch = 2; c.hq = 4; c.hkv = 2; c.sq = 300; c.sk = 1000;
      c.mask = mask ? MaskType::kCausalBottomRight : MaskType::kNoMask;
      c.big_batch_stride = (int64_t(1) << 31) + 4096;
      CheckResult r = run_and_check(c, 11 + mask);
      print_case(c, r);
      fails += !r.pass;
    }
    std::printf("SUMMARY big: %d failed\n", fails);
    return fails;
  }
  if (mode == "bench") {
    bench();
    return 0;
  }
  if (mode == "prof" && argc >= 5) {  // one benchmark cell, for a profiler
    bench_cells({{std::atoi(argv[2]), std::atoi(argv[3]), std::atoi(argv[4]) != 0, 0}});
    return 0;
  }
  if (mode == "variants") {
    variants();
    return 0;
  }
  if (mode == "one" && argc >= 16) {
    Case c;
    c.d = std::atoi(argv[2]); c.dv = std::atoi(argv[3]); c.batch = std::atoi(argv[4]);
    c.hq = std::atoi(argv[5]); c.hkv = std::atoi(argv[6]); c.sq = std::atoi(argv[7]);
    c.sk = std::atoi(argv[8]);
    const int m = std::atoi(argv[9]);
    c.mask = m == 1 ? MaskType::kCausal : m == 2 ? MaskType::kCausalBottomRight : MaskType::kNoMask;
    c.wl = std::atoi(argv[10]); c.wr = std::atoi(argv[11]); c.softcap = std::atof(argv[12]);
    c.varlen = std::atoi(argv[13]); c.seqused = std::atoi(argv[14]);
    c.dtype = std::string(argv[15]) == "fp16" ? DType::kFloat16 : DType::kBFloat16;
    CheckResult r = run_and_check(c, 5);
    print_case(c, r);
    return r.pass ? 0 : 1;
  }
  std::printf("usage: harness check [seed] [count] | bench | one ...\n");
  return 2;
}
