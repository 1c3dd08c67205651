// bench/harness.cpp: problem construction, reference runs and error figures (see harness.h).
#include "bench/harness.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <mutex>
#include <sstream>
#include <thread>

#include "core/attention_rules.h"
#include "core/numeric.h"
#include "dispatch/backends.h"

namespace flashlane::bench {

// ---------------------------------------------------------------------------------------------
// ProblemSpec

int64_t ProblemSpec::total_q() const {
  if (!varlen()) return batch * seqlen_q;
  int64_t t = 0;
  for (int32_t s : seqlens_q) t += s;
  return t;
}
int64_t ProblemSpec::total_k() const {
  if (!varlen()) return batch * seqlen_k;
  int64_t t = 0;
  for (int32_t s : seqlens_k) t += s;
  return t;
}
int64_t ProblemSpec::max_seqlen_q() const {
  if (!varlen()) return seqlen_q;
  int64_t m = 0;
  for (int32_t s : seqlens_q) m = std::max<int64_t>(m, s);
  return m;
}
int64_t ProblemSpec::max_seqlen_k() const {
  if (!varlen()) return seqlen_k;
  int64_t m = 0;
  for (int32_t s : seqlens_k) m = std::max<int64_t>(m, s);
  return m;
}

double ProblemSpec::score_pairs() const {
  double pairs = 0;
  for (int64_t b = 0; b < num_batches(); ++b) {
    const double sq = varlen() ? seqlens_q[b] : seqlen_q;
    const double sk = varlen() ? seqlens_k[b] : seqlen_k;
    pairs += sq * sk;
  }
  return pairs * static_cast<double>(heads_q);
}

double ProblemSpec::visible_pairs() const {
  MaskRule rule;
  rule.bottom_right = mask != MaskType::kCausal;
  rule.window_left = window_left;
  rule.window_right = mask != MaskType::kNoMask ? 0 : window_right;
  double pairs = 0;
  for (int64_t b = 0; b < num_batches(); ++b) {
    const int64_t sq = varlen() ? seqlens_q[b] : seqlen_q;
    int64_t sk = varlen() ? seqlens_k[b] : seqlen_k;
    if (!seqused_k.empty() && b < static_cast<int64_t>(seqused_k.size())) sk = seqused_k[b];
    for (int64_t i = 0; i < sq; ++i) {
      int64_t first = 0, last = 0;
      rule.key_range(i, sq, sk, &first, &last);
      if (last > first) pairs += static_cast<double>(last - first);
    }
  }
  return pairs * static_cast<double>(heads_q);
}

bool ProblemSpec::check(std::string* why) const {
  auto fail = [&](const std::string& m) { if (why) *why = m; return false; };
  if (varlen()) {
    if (seqlens_k.size() != seqlens_q.size())
      return fail("varlen: " + std::to_string(seqlens_q.size()) + " query lengths but " +
                  std::to_string(seqlens_k.size()) + " key lengths");
    for (size_t i = 0; i < seqlens_q.size(); ++i)
      if (seqlens_q[i] < 0 || seqlens_k[i] < 0) return fail("varlen: negative length");
    if (total_q() <= 0 || total_k() <= 0) return fail("varlen: empty batch");
  } else {
    if (batch <= 0 || seqlen_q <= 0 || seqlen_k <= 0)
      return fail("batch, seqlen_q and seqlen_k must be positive");
  }
  if (heads_q <= 0 || heads_kv <= 0 || head_dim <= 0 || dv() <= 0)
    return fail("heads and head dims must be positive");
  if (!seqused_k.empty() && static_cast<int64_t>(seqused_k.size()) != num_batches())
    return fail("seqused_k has " + std::to_string(seqused_k.size()) + " entries, batch is " +
                std::to_string(num_batches()));
  if (!learnable_sink.empty() && static_cast<int64_t>(learnable_sink.size()) != heads_q)
    return fail("learnable_sink has " + std::to_string(learnable_sink.size()) +
                " entries, heads_q is " + std::to_string(heads_q));
  return true;
}

std::string ProblemSpec::describe() const {
  std::ostringstream s;
  if (varlen()) {
    s << "varlen b" << num_batches() << " total_q" << total_q() << " total_k" << total_k();
  } else {
    s << "b" << batch << " sq" << seqlen_q << " sk" << seqlen_k;
  }
  s << " hq" << heads_q << " hkv" << heads_kv << " d" << head_dim;
  if (dv() != head_dim) s << " dv" << dv();
  s << " " << dtype_name(dtype) << " " << mask_type_name(mask);
  if (window_left >= 0 || window_right >= 0) s << " window(" << window_left << "," << window_right << ")";
  if (softcap > 0) s << " softcap" << softcap;
  if (!seqused_k.empty()) s << " seqused_k";
  if (!learnable_sink.empty()) s << " sinks";
  return s.str();
}

nlohmann::json spec_to_json(const ProblemSpec& s) {
  nlohmann::json j;
  j["batch"] = s.num_batches();
  j["seqlen_q"] = s.max_seqlen_q();
  j["seqlen_k"] = s.max_seqlen_k();
  j["heads_q"] = s.heads_q;
  j["heads_kv"] = s.heads_kv;
  j["head_dim"] = s.head_dim;
  j["head_dim_v"] = s.dv();
  j["dtype"] = dtype_name(s.dtype);
  j["mask"] = mask_type_name(s.mask);
  j["causal"] = s.mask != MaskType::kNoMask;
  j["window_left"] = s.window_left;
  j["window_right"] = s.window_right;
  j["softcap"] = s.softcap;
  j["softmax_scale"] = s.softmax_scale ? nlohmann::json(*s.softmax_scale) : nlohmann::json(nullptr);
  j["varlen"] = s.varlen();
  if (s.varlen()) {
    j["seqlens_q"] = s.seqlens_q;
    j["seqlens_k"] = s.seqlens_k;
  }
  if (!s.seqused_k.empty()) j["seqused_k"] = s.seqused_k;
  if (!s.learnable_sink.empty()) j["learnable_sink"] = s.learnable_sink;
  j["seed"] = s.seed;
  return j;
}

bool spec_from_json(const nlohmann::json& j, ProblemSpec* out, std::string* why) {
  try {
    ProblemSpec s;
    s.batch = j.at("batch").get<int64_t>();
    s.seqlen_q = j.at("seqlen_q").get<int64_t>();
    s.seqlen_k = j.at("seqlen_k").get<int64_t>();
    s.heads_q = j.at("heads_q").get<int64_t>();
    s.heads_kv = j.at("heads_kv").get<int64_t>();
    s.head_dim = j.at("head_dim").get<int64_t>();
    s.head_dim_v = j.at("head_dim_v").get<int64_t>();
    if (!parse_dtype(j.at("dtype").get<std::string>(), &s.dtype)) {
      if (why) *why = "unknown dtype";
      return false;
    }
    if (!parse_mask_type(j.at("mask").get<std::string>(), &s.mask)) {
      // Accept the three names even if the library's parser is unavailable.
      const std::string m = j.at("mask").get<std::string>();
      if (m == "no_mask") s.mask = MaskType::kNoMask;
      else if (m == "causal") s.mask = MaskType::kCausal;
      else if (m == "causal_bottom_right") s.mask = MaskType::kCausalBottomRight;
      else { if (why) *why = "unknown mask " + m; return false; }
    }
    s.window_left = j.value("window_left", int64_t{-1});
    s.window_right = j.value("window_right", int64_t{-1});
    s.softcap = j.value("softcap", 0.0);
    if (j.contains("softmax_scale") && !j["softmax_scale"].is_null())
      s.softmax_scale = j["softmax_scale"].get<double>();
    if (j.value("varlen", false)) {
      s.seqlens_q = j.at("seqlens_q").get<std::vector<int32_t>>();
      s.seqlens_k = j.at("seqlens_k").get<std::vector<int32_t>>();
    }
    if (j.contains("seqused_k")) s.seqused_k = j["seqused_k"].get<std::vector<int32_t>>();
    if (j.contains("learnable_sink")) {
      s.learnable_sink = j["learnable_sink"].get<std::vector<float>>();
    }
    s.seed = j.value("seed", uint64_t{0});
    *out = std::move(s);
    return true;
  } catch (const std::exception& e) {
    if (why) *why = std::string("problem: ") + e.what();
    return false;
  }
}

bool parse_int_list(const std::string& text, std::vector<int32_t>* out) {
  out->clear();
  if (text.empty()) return false;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, ',')) {
    if (item.empty()) return false;
    size_t used = 0;
    long long v = 0;
    try {
      v = std::stoll(item, &used);
    } catch (...) {
      return false;
    }
    if (used != item.size() || v < std::numeric_limits<int32_t>::min() ||
        v > std::numeric_limits<int32_t>::max())
      return false;
    out->push_back(static_cast<int32_t>(v));
  }
  return !out->empty();
}

bool parse_varlen_lengths(const std::string& text, std::vector<int32_t>* q, std::vector<int32_t>* k) {
  const size_t semi = text.find(';');
  if (semi == std::string::npos) return false;
  return parse_int_list(text.substr(0, semi), q) && parse_int_list(text.substr(semi + 1), k) &&
         q->size() == k->size();
}

// ---------------------------------------------------------------------------------------------
// Random inputs: a counter-based generator (splitmix64 finalizer over seed, stream and index),
// Box-Muller to normal(0, 1). Counter-based, so any split over threads gives the same values.

namespace {

uint64_t mix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

double uniform01(uint64_t bits) {  // (0, 1]
  return (static_cast<double>(bits >> 11) + 1.0) * (1.0 / 9007199254740992.0);
}

/// Runs work(begin, end) over [0, n) on up to 32 threads (one call when n is small).
template <class F>
void parallel_for(size_t n, const F& work) {
  const size_t kChunk = size_t{1} << 20;
  unsigned threads = std::max(1u, std::thread::hardware_concurrency());
  if (n < 2 * kChunk || threads == 1) {
    work(size_t{0}, n);
    return;
  }
  threads = std::min<unsigned>(threads, 32);
  std::vector<std::thread> pool;
  const size_t per = (n + threads - 1) / threads;
  for (unsigned t = 0; t < threads; ++t) {
    const size_t begin = std::min(n, t * per), end = std::min(n, begin + per);
    if (begin < end) pool.emplace_back([&work, begin, end] { work(begin, end); });
  }
  for (auto& th : pool) th.join();
}

void fill_normal(std::vector<double>* out, size_t n, uint64_t seed, uint64_t stream, DType dtype) {
  out->resize(n);
  const uint64_t base = mix64(seed ^ mix64(stream * 0x632be59bd9b4e019ull + 1));
  double* dst = out->data();
  parallel_for(n, [&](size_t begin, size_t end) {
    for (size_t i = begin; i < end; ++i) {
      const uint64_t a = mix64(base + 2 * i);
      const uint64_t b = mix64(base + 2 * i + 1);
      const double r = std::sqrt(-2.0 * std::log(uniform01(a)));
      const double value = r * std::cos(6.283185307179586 * uniform01(b));
      dst[i] = numeric::round_to(dtype, value);
    }
  });
}

/// The values stored as `dtype`, in an uninitialized buffer (every byte is written here; a
/// zero-filled vector would first touch hundreds of MiB on one thread).
std::unique_ptr<uint8_t[]> to_bytes(const std::vector<double>& values, DType dtype) {
  auto bytes = std::make_unique_for_overwrite<uint8_t[]>(std::max<size_t>(values.size() * dtype_size(dtype), 1));
  uint8_t* dst = bytes.get();
  parallel_for(values.size(), [&](size_t begin, size_t end) {
    for (size_t i = begin; i < end; ++i) numeric::store(dst, dtype, i, values[i]);
  });
  return bytes;
}

Status cuda_status(cudaError_t e, const char* what) {
  return Status(ErrorCode::kCudaError, std::string(what) + ": " + cudaGetErrorString(e));
}

}  // namespace

HostInputs make_inputs(const ProblemSpec& spec, bool with_dout) {
  HostInputs in;
  const size_t nq = static_cast<size_t>(spec.total_q() * spec.heads_q * spec.head_dim);
  const size_t nk = static_cast<size_t>(spec.total_k() * spec.heads_kv * spec.head_dim);
  const size_t nv = static_cast<size_t>(spec.total_k() * spec.heads_kv * spec.dv());
  fill_normal(&in.q, nq, spec.seed, 1, spec.dtype);
  fill_normal(&in.k, nk, spec.seed, 2, spec.dtype);
  fill_normal(&in.v, nv, spec.seed, 3, spec.dtype);
  if (with_dout) {
    const size_t no = static_cast<size_t>(spec.total_q() * spec.heads_q * spec.dv());
    fill_normal(&in.dout, no, spec.seed, 4, spec.dtype);
  }
  return in;
}

// ---------------------------------------------------------------------------------------------
// Buffer

Buffer::~Buffer() { release(); }
Buffer::Buffer(Buffer&& o) noexcept : data_(o.data_), bytes_(o.bytes_), device_(o.device_) {
  o.data_ = nullptr;
  o.bytes_ = 0;
}
Buffer& Buffer::operator=(Buffer&& o) noexcept {
  if (this != &o) {
    release();
    data_ = o.data_;
    bytes_ = o.bytes_;
    device_ = o.device_;
    o.data_ = nullptr;
    o.bytes_ = 0;
  }
  return *this;
}
void Buffer::release() {
  if (!data_) return;
  if (device_.kind == DeviceKind::kCUDA) {
    cudaFree(data_);
  } else {
    ::operator delete(data_, std::align_val_t{64});
  }
  data_ = nullptr;
  bytes_ = 0;
}
Status Buffer::allocate(size_t bytes, Device device) {
  release();
  bytes = std::max<size_t>(bytes, 16);
  device_ = device;
  if (device.kind == DeviceKind::kCUDA) {
    cudaError_t e = cudaSetDevice(device.index);
    if (e != cudaSuccess) return cuda_status(e, "cudaSetDevice");
    e = cudaMalloc(&data_, bytes);
    if (e != cudaSuccess) {
      data_ = nullptr;
      return cuda_status(e, ("cudaMalloc(" + std::to_string(bytes) + " bytes)").c_str());
    }
  } else {
    data_ = ::operator new(bytes, std::align_val_t{64});
  }
  bytes_ = bytes;
  return Status::Ok();
}
Status Buffer::fill_bytes(int value) {
  if (!data_) return Status::Ok();
  if (device_.kind == DeviceKind::kCUDA) {
    cudaError_t e = cudaMemset(data_, value, bytes_);
    if (e != cudaSuccess) return cuda_status(e, "cudaMemset");
  } else {
    std::memset(data_, value, bytes_);
  }
  return Status::Ok();
}
Status Buffer::upload(const void* host, size_t bytes) {
  if (bytes > bytes_) return Status(ErrorCode::kInternal, "Buffer::upload: too many bytes");
  if (device_.kind == DeviceKind::kCUDA) {
    cudaError_t e = cudaMemcpy(data_, host, bytes, cudaMemcpyHostToDevice);
    if (e != cudaSuccess) return cuda_status(e, "cudaMemcpy H2D");
  } else if (bytes) {
    std::memcpy(data_, host, bytes);
  }
  return Status::Ok();
}
Status Buffer::download(void* host, size_t bytes) const {
  if (bytes > bytes_) return Status(ErrorCode::kInternal, "Buffer::download: too many bytes");
  if (device_.kind == DeviceKind::kCUDA) {
    cudaError_t e = cudaMemcpy(host, data_, bytes, cudaMemcpyDeviceToHost);
    if (e != cudaSuccess) return cuda_status(e, "cudaMemcpy D2H");
  } else if (bytes) {
    std::memcpy(host, data_, bytes);
  }
  return Status::Ok();
}

// ---------------------------------------------------------------------------------------------
// ProblemTensors

namespace {

TensorView view(const Buffer& b, DType dtype, std::initializer_list<int64_t> shape, Device device) {
  return TensorView::contiguous(b.data(), dtype, shape, device);
}

}  // namespace

Status build_tensors(const ProblemSpec& spec, const HostInputs& inputs, DType dtype, Device device,
                     bool backward, ProblemTensors* t) {
  std::string why;
  if (!spec.check(&why)) return Status(ErrorCode::kInvalidArgument, why);
  t->spec = spec;
  t->dtype = dtype;
  t->device = device;
  t->backward = backward;
  t->problem = AttentionProblem{};
  const int64_t tq = spec.total_q(), tk = spec.total_k(), hq = spec.heads_q, hk = spec.heads_kv;
  const int64_t d = spec.head_dim, dv = spec.dv(), B = spec.num_batches();
  const size_t es = dtype_size(dtype);
  const size_t nq = tq * hq * d, nk = tk * hk * d, nv = tk * hk * dv, no = tq * hq * dv;
  const size_t nlse = tq * hq;
  size_t total = 0;
  auto alloc = [&](Buffer& b, size_t bytes) {
    Status s = b.allocate(bytes, device);
    total += b.bytes();
    return s;
  };
  Status s;
  if (!(s = alloc(t->q, nq * es)).ok() || !(s = alloc(t->k, nk * es)).ok() ||
      !(s = alloc(t->v, nv * es)).ok() || !(s = alloc(t->o, no * es)).ok() ||
      !(s = alloc(t->lse, nlse * 4)).ok())
    return s;
  if (!(s = t->q.upload(to_bytes(inputs.q, dtype).get(), nq * es)).ok()) return s;
  if (!(s = t->k.upload(to_bytes(inputs.k, dtype).get(), nk * es)).ok()) return s;
  if (!(s = t->v.upload(to_bytes(inputs.v, dtype).get(), nv * es)).ok()) return s;
  if (backward) {
    if (inputs.dout.size() != no) return Status(ErrorCode::kInternal, "inputs lack dout");
    if (!(s = alloc(t->dout, no * es)).ok() || !(s = alloc(t->dq, nq * es)).ok() ||
        !(s = alloc(t->dk, nk * es)).ok() || !(s = alloc(t->dv, nv * es)).ok())
      return s;
    if (!(s = t->dout.upload(to_bytes(inputs.dout, dtype).get(), no * es)).ok()) return s;
  }
  AttentionProblem& p = t->problem;
  if (spec.varlen()) {
    std::vector<int32_t> cq(B + 1, 0), ck(B + 1, 0);
    for (int64_t b = 0; b < B; ++b) {
      cq[b + 1] = cq[b] + spec.seqlens_q[b];
      ck[b + 1] = ck[b] + spec.seqlens_k[b];
    }
    if (!(s = alloc(t->cu_q, (B + 1) * 4)).ok() || !(s = alloc(t->cu_k, (B + 1) * 4)).ok()) return s;
    if (!(s = t->cu_q.upload(cq.data(), (B + 1) * 4)).ok()) return s;
    if (!(s = t->cu_k.upload(ck.data(), (B + 1) * 4)).ok()) return s;
    p.q = view(t->q, dtype, {tq, hq, d}, device);
    p.k = view(t->k, dtype, {tk, hk, d}, device);
    p.v = view(t->v, dtype, {tk, hk, dv}, device);
    p.o = view(t->o, dtype, {tq, hq, dv}, device);
    p.lse = view(t->lse, DType::kFloat32, {hq, tq}, device);
    if (backward) {
      p.dout = view(t->dout, dtype, {tq, hq, dv}, device);
      p.dq = view(t->dq, dtype, {tq, hq, d}, device);
      p.dk = view(t->dk, dtype, {tk, hk, d}, device);
      p.dv = view(t->dv, dtype, {tk, hk, dv}, device);
    }
    p.cu_seqlens_q = view(t->cu_q, DType::kInt32, {B + 1}, device);
    p.cu_seqlens_k = view(t->cu_k, DType::kInt32, {B + 1}, device);
    p.max_seqlen_q = spec.max_seqlen_q();
    p.max_seqlen_k = spec.max_seqlen_k();
  } else {
    const int64_t sq = spec.seqlen_q, sk = spec.seqlen_k;
    p.q = view(t->q, dtype, {B, sq, hq, d}, device);
    p.k = view(t->k, dtype, {B, sk, hk, d}, device);
    p.v = view(t->v, dtype, {B, sk, hk, dv}, device);
    p.o = view(t->o, dtype, {B, sq, hq, dv}, device);
    p.lse = view(t->lse, DType::kFloat32, {B, hq, sq}, device);
    if (backward) {
      p.dout = view(t->dout, dtype, {B, sq, hq, dv}, device);
      p.dq = view(t->dq, dtype, {B, sq, hq, d}, device);
      p.dk = view(t->dk, dtype, {B, sk, hk, d}, device);
      p.dv = view(t->dv, dtype, {B, sk, hk, dv}, device);
    }
  }
  if (!spec.seqused_k.empty()) {
    if (!(s = alloc(t->seqused, B * 4)).ok()) return s;
    if (!(s = t->seqused.upload(spec.seqused_k.data(), B * 4)).ok()) return s;
    p.seqused_k = view(t->seqused, DType::kInt32, {B}, device);
  }
  if (!spec.learnable_sink.empty()) {
    if (!(s = alloc(t->sink, hq * 4)).ok()) return s;
    if (!(s = t->sink.upload(spec.learnable_sink.data(), hq * 4)).ok()) return s;
    p.learnable_sink = view(t->sink, DType::kFloat32, {hq}, device);
    if (backward) {
      if (!(s = alloc(t->dsink, hq * 4)).ok()) return s;
      p.dlearnable_sink = view(t->dsink, DType::kFloat32, {hq}, device);
    }
  }
  p.softmax_scale = spec.softmax_scale;
  p.mask = spec.mask;
  p.window_left = spec.window_left;
  p.window_right = spec.window_right;
  p.softcap = spec.softcap;
  t->bytes_allocated = total;
  if (!(s = poison_outputs(t, Direction::kForward)).ok()) return s;
  if (backward && !(s = poison_outputs(t, Direction::kBackward)).ok()) return s;
  return Status::Ok();
}

Status poison_outputs(ProblemTensors* t, Direction direction) {
  Status s;
  if (direction == Direction::kForward) {
    if (!(s = t->o.fill_bytes(0xff)).ok()) return s;
    return t->lse.fill_bytes(0xff);
  }
  if (!(s = t->dq.fill_bytes(0xff)).ok()) return s;
  if (!(s = t->dk.fill_bytes(0xff)).ok()) return s;
  if (!(s = t->dsink.fill_bytes(0xff)).ok()) return s;  // no-op without sinks
  return t->dv.fill_bytes(0xff);
}

Status fetch_tensor(const Buffer& b, const TensorView& v, std::vector<double>* out) {
  const size_t n = static_cast<size_t>(v.numel());
  // Uninitialized staging (make_unique_for_overwrite): the copy writes every byte, and
  // zero-filling hundreds of MiB on one thread first costs more than the copy itself.
  const size_t nbytes = n * dtype_size(v.dtype);
  std::unique_ptr<uint8_t[]> bytes = std::make_unique_for_overwrite<uint8_t[]>(std::max<size_t>(nbytes, 1));
  Status s = b.download(bytes.get(), nbytes);
  if (!s.ok()) return s;
  out->resize(n);
  double* dst = out->data();
  const uint8_t* src = bytes.get();
  parallel_for(n, [&](size_t begin, size_t end) {
    for (size_t i = begin; i < end; ++i) dst[i] = numeric::load(src, v.dtype, i);
  });
  return Status::Ok();
}

Status fetch_outputs(const ProblemTensors& t, Direction direction, Outputs* out) {
  Status s;
  if (direction == Direction::kForward) {
    if (!(s = fetch_tensor(t.o, t.problem.o, &out->o)).ok()) return s;
    return fetch_tensor(t.lse, t.problem.lse, &out->lse);
  }
  if (!(s = fetch_tensor(t.dq, t.problem.dq, &out->dq)).ok()) return s;
  if (!(s = fetch_tensor(t.dk, t.problem.dk, &out->dk)).ok()) return s;
  if (t.problem.dlearnable_sink.defined()) {
    if (!(s = fetch_tensor(t.dsink, t.problem.dlearnable_sink, &out->dsink)).ok()) return s;
  }
  return fetch_tensor(t.dv, t.problem.dv, &out->dv);
}

Status run_reference(const AttentionProblem& problem, DType dtype, bool backward, bool on_gpu) {
  ProblemInfo info;
  Status s;
  if (!(s = validate(problem, Direction::kForward, &info)).ok()) return s;
  // 16-bit inputs: emulate the fused kernel's roundings (FlashAttention's ref_lowp), on the CPU
  // and the GPU, forward and backward (P, and dS, rounded to the input dtype).
  const bool lowp = dtype == DType::kBFloat16 || dtype == DType::kFloat16;
  const detail::ReferenceNumerics numerics =
      lowp ? detail::ReferenceNumerics::kLowPrecision : detail::ReferenceNumerics::kFloat64;
  if (on_gpu) {
    if (!(s = detail::reference_cuda_forward(problem, info, nullptr, numerics)).ok()) return s;
    cudaError_t e = cudaDeviceSynchronize();
    if (e != cudaSuccess) return cuda_status(e, "reference_cuda forward");
  } else {
    if (!(s = detail::reference_cpu_forward(problem, info, numerics)).ok()) return s;
  }
  if (!backward) return Status::Ok();
  ProblemInfo binfo;
  if (!(s = validate(problem, Direction::kBackward, &binfo)).ok()) return s;
  if (on_gpu) {
    if (!(s = detail::reference_cuda_backward(problem, binfo, nullptr, numerics)).ok()) return s;
    cudaError_t e = cudaDeviceSynchronize();
    if (e != cudaSuccess) return cuda_status(e, "reference_cuda backward");
  } else {
    if (!(s = detail::reference_cpu_backward(problem, binfo, numerics)).ok()) return s;
  }
  return Status::Ok();
}

Status reference_outputs(const ProblemSpec& spec, const HostInputs& inputs, DType dtype,
                         bool backward, bool on_gpu, Outputs* out) {
  ProblemTensors t;
  const Device device = on_gpu ? Device::cuda(0) : Device::cpu();
  Status s = build_tensors(spec, inputs, dtype, device, backward, &t);
  if (!s.ok()) return s;
  if (!(s = run_reference(t.problem, dtype, backward, on_gpu)).ok()) return s;
  if (!(s = fetch_outputs(t, Direction::kForward, out)).ok()) return s;
  if (!backward) return Status::Ok();
  return fetch_outputs(t, Direction::kBackward, out);
}

// ---------------------------------------------------------------------------------------------
// Error figures

ErrorFigure compare_tensor(const std::string& name, const std::vector<double>& out,
                           const std::vector<double>& ref64, const std::vector<double>& ref_lowp) {
  ErrorFigure f;
  f.tensor = name;
  const bool is_lse = name == "lse";
  const double inf = std::numeric_limits<double>::infinity();
  auto diff = [&](double a, double r) -> double {
    if (std::isnan(a) || std::isnan(r)) return inf;
    if (std::isinf(a) || std::isinf(r)) return (a == r) ? 0.0 : inf;
    return std::fabs(a - r);
  };
  if (out.size() != ref64.size() || ref_lowp.size() != ref64.size()) {
    f.max_abs_diff = inf;
    f.ref_max_abs_diff = 0;
    f.tolerance = kAbsTolerance;
    f.pass = false;
    return f;
  }
  f.count = static_cast<int64_t>(out.size());
  // Chunks on several threads (a canonical cell compares ~1e8 elements per row); maxima and
  // counts merge exactly, so the figures do not depend on the split.
  std::mutex merge;
  parallel_for(out.size(), [&](size_t begin, size_t end) {
    int64_t nan_count = 0;
    double max_diff = 0.0, ref_max_diff = 0.0;
    for (size_t i = begin; i < end; ++i) {
      const double a = out[i];
      if (std::isnan(a) || (std::isinf(a) && (!is_lse || a > 0))) ++nan_count;
      max_diff = std::max(max_diff, diff(a, ref64[i]));
      ref_max_diff = std::max(ref_max_diff, diff(ref_lowp[i], ref64[i]));
    }
    std::lock_guard<std::mutex> lock(merge);
    f.nan_count += nan_count;
    f.max_abs_diff = std::max(f.max_abs_diff, max_diff);
    f.ref_max_abs_diff = std::max(f.ref_max_abs_diff, ref_max_diff);
  });
  f.tolerance = 2.0 * f.ref_max_abs_diff + kAbsTolerance;
  f.pass = f.nan_count == 0 && std::isfinite(f.max_abs_diff) && f.max_abs_diff <= f.tolerance;
  return f;
}

const ErrorFigure* CheckResult::worst() const {
  // The largest max_abs_diff / tolerance ratio; a non-finite figure is worst of all.
  const ErrorFigure* w = nullptr;
  double worst_ratio = 0;
  for (const auto& f : figures) {
    double ratio = f.max_abs_diff / f.tolerance;
    if (!std::isfinite(ratio) || f.nan_count > 0) ratio = std::numeric_limits<double>::infinity();
    if (!w || ratio > worst_ratio) {
      w = &f;
      worst_ratio = ratio;
    }
  }
  return w;
}

int64_t CheckResult::nan_count() const {
  int64_t n = 0;
  for (const auto& f : figures) n += f.nan_count;
  return n;
}

CheckResult check_outputs(Direction direction, const Outputs& got, const Outputs& ref64,
                          const Outputs& ref_lowp) {
  CheckResult c;
  if (direction == Direction::kForward) {
    c.figures.push_back(compare_tensor("o", got.o, ref64.o, ref_lowp.o));
    c.figures.push_back(compare_tensor("lse", got.lse, ref64.lse, ref_lowp.lse));
  } else {
    c.figures.push_back(compare_tensor("dq", got.dq, ref64.dq, ref_lowp.dq));
    c.figures.push_back(compare_tensor("dk", got.dk, ref64.dk, ref_lowp.dk));
    c.figures.push_back(compare_tensor("dv", got.dv, ref64.dv, ref_lowp.dv));
    if (!ref64.dsink.empty()) {
      c.figures.push_back(compare_tensor("dsink", got.dsink, ref64.dsink, ref_lowp.dsink));
    }
  }
  c.pass = true;
  for (const auto& f : c.figures) c.pass = c.pass && f.pass;
  return c;
}

namespace {
nlohmann::json finite_or_null(double x) {
  return std::isfinite(x) ? nlohmann::json(x) : nlohmann::json(nullptr);
}
}  // namespace

nlohmann::json figure_to_json(const ErrorFigure& f) {
  return {{"tensor", f.tensor},
          {"max_abs_diff", finite_or_null(f.max_abs_diff)},
          {"ref_max_abs_diff", finite_or_null(f.ref_max_abs_diff)},
          {"tolerance", finite_or_null(f.tolerance)},
          {"nan_count", f.nan_count},
          {"count", f.count},
          {"pass", f.pass}};
}

nlohmann::json check_to_json(const CheckResult& c) {
  nlohmann::json figs = nlohmann::json::array();
  for (const auto& f : c.figures) figs.push_back(figure_to_json(f));
  return {{"pass", c.pass},
          {"ref64", c.ref64_method},
          {"ref_lowp", c.ref_lowp_method},
          {"rule", "max|out - ref64| <= 2 * max|ref_lowp - ref64| + 1e-5"},
          {"tensors", figs}};
}

bool cuda_present(std::string* why_not) {
  const DeviceInfo d = query_device(0);
  if (!d.cuda_available && why_not) *why_not = d.driver_error.empty() ? "no CUDA device" : d.driver_error;
  return d.cuda_available;
}

}  // namespace flashlane::bench
