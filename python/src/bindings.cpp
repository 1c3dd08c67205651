// bindings.cpp: the extension module flashlane._C (nanobind).
//
// Tensors arrive through DLPack as nb::ndarray (NumPy arrays, PyTorch tensors, or DLPack capsules
// made by the Python layer), and become flashlane::TensorViews over the same memory: no copy.
// DLPack strides are in elements, like TensorView strides. Host arrays (kDLCPU, kDLCUDAHost)
// become host views (reference_cpu runs them); kDLCUDA / kDLCUDAManaged arrays become CUDA views
// launched on the stream the caller passes as an integer (torch.cuda.current_stream().cuda_stream).
//
// The entry points never raise for a flashlane error: they return None on success or a tuple
// (code_name, code_value, message, reason_tag) that the Python layer turns into FlashlaneError.
// The receipt of the call is the C++ thread-local one (last_receipt_json(), last_receipt_dict()).
// Attention sinks (learnable_sink, dlearnable_sink: float32 [heads_q]) are passed through as
// they come; the Python layer converts other float dtypes, and validation judges the rest.
#include <nanobind/nanobind.h>
#include <nanobind/ndarray.h>
#include <nanobind/stl/optional.h>
#include <nanobind/stl/pair.h>
#include <nanobind/stl/string.h>
#include <nanobind/stl/tuple.h>
#include <nanobind/stl/vector.h>

#include <cstdint>
#include <optional>
#include <string>
#include <tuple>
#include <vector>

#include "flashlane/flashlane.h"

namespace nb = nanobind;
using namespace nb::literals;

namespace {

using Array = nb::ndarray<>;      // outputs: any device, any dtype, writable
using In = nb::ndarray<nb::ro>;   // inputs: read-only views are accepted too
using ErrorTuple = std::tuple<std::string, int, std::string, std::string>;
using Result = std::optional<ErrorTuple>;

// Raised internally for arguments that cannot become a TensorView; converted into an error tuple.
struct ConversionError {
  flashlane::ErrorCode code;
  std::string message;
};

ErrorTuple to_tuple(const flashlane::Status& st) {
  return {flashlane::error_code_name(st.code()), static_cast<int>(st.code()), st.message(),
          st.reason_tag()};
}

/// Runs a library call with the GIL released; nullopt on success, else the error tuple.
template <class Call>
std::optional<ErrorTuple> call_without_gil(Call&& call) {
  flashlane::Status st;
  {
    nb::gil_scoped_release release;
    st = call();
  }
  if (st.ok()) return std::nullopt;
  return to_tuple(st);
}

flashlane::DType to_dtype(const char* name, const nb::dlpack::dtype& dt) {
  using Code = nb::dlpack::dtype_code;
  if (dt.lanes == 1) {
    if (dt.code == static_cast<uint8_t>(Code::Float)) {
      if (dt.bits == 16) return flashlane::DType::kFloat16;
      if (dt.bits == 32) return flashlane::DType::kFloat32;
      if (dt.bits == 64) return flashlane::DType::kFloat64;
    } else if (dt.code == static_cast<uint8_t>(Code::Bfloat) && dt.bits == 16) {
      return flashlane::DType::kBFloat16;
    } else if (dt.code == static_cast<uint8_t>(Code::Int) && dt.bits == 32) {
      return flashlane::DType::kInt32;
    }
  }
  throw ConversionError{flashlane::ErrorCode::kUnsupportedDType,
                        std::string(name) + ": DLPack dtype (code " + std::to_string(dt.code) +
                            ", bits " + std::to_string(dt.bits) + ", lanes " +
                            std::to_string(dt.lanes) +
                            ") is not one of float16, bfloat16, float32, float64, int32"};
}

template <typename A>
flashlane::TensorView to_view(const char* name, const A& a) {
  flashlane::TensorView t;
  const size_t rank = a.ndim();
  if (rank < 1 || rank > static_cast<size_t>(flashlane::TensorView::kMaxRank)) {
    throw ConversionError{flashlane::ErrorCode::kRankMismatch,
                          std::string(name) + ": rank " + std::to_string(rank) +
                              " (flashlane takes tensors of rank 1 to 4)"};
  }
  t.dtype = to_dtype(name, a.dtype());
  t.rank = static_cast<int>(rank);
  for (size_t i = 0; i < rank; ++i) t.shape[i] = static_cast<int64_t>(a.shape(i));
  const int64_t* strides = a.stride_ptr();
  // Strides of size-1 dimensions are meaningless (PyTorch and NumPy export arbitrary ones, often
  // 1); give them the value of a compact layout so that the alignment rules judge real strides.
  int64_t inner = 1;
  for (int i = t.rank - 1; i >= 0; --i) {
    const int64_t s = strides ? strides[i] : inner;
    t.stride[i] = (t.shape[i] == 1 && i != t.rank - 1) ? inner : s;
    inner = t.stride[i] * (t.shape[i] > 0 ? t.shape[i] : 1);
  }
  if (t.rank >= 1 && t.shape[t.rank - 1] == 1) t.stride[t.rank - 1] = 1;
  t.data = const_cast<void*>(static_cast<const void*>(a.data()));
  switch (a.device_type()) {
    case nb::device::cpu::value:
    case nb::device::cuda_host::value:
      t.device = flashlane::Device::cpu();
      break;
    case nb::device::cuda::value:
    case nb::device::cuda_managed::value:
      t.device = flashlane::Device::cuda(a.device_id());
      break;
    default:
      throw ConversionError{flashlane::ErrorCode::kDeviceMismatch,
                            std::string(name) + ": DLPack device type " +
                                std::to_string(a.device_type()) +
                                " is neither the host (CPU) nor CUDA"};
  }
  return t;
}

flashlane::TensorView opt_view(const char* name, const std::optional<In>& a) {
  return a ? to_view(name, *a) : flashlane::TensorView{};
}

flashlane::Request to_request(const std::string& backend, bool strict) {
  flashlane::Request r;
  if (!flashlane::parse_backend(backend, &r.backend)) {
    throw ConversionError{flashlane::ErrorCode::kInvalidArgument,
                          "backend = '" + backend +
                              "' (expected auto, sm90, reference_cuda, reference_cpu, sm100, cudnn)"};
  }
  r.strict = strict;
  return r;
}

flashlane::MaskType to_mask(const std::string& mask) {
  flashlane::MaskType m;
  if (!flashlane::parse_mask_type(mask, &m)) {
    throw ConversionError{flashlane::ErrorCode::kInvalidArgument,
                          "mask = '" + mask + "' (expected no_mask, causal, causal_bottom_right)"};
  }
  return m;
}

struct Options {
  std::optional<In> cu_seqlens_q, cu_seqlens_k, seqused_k;
  int64_t max_seqlen_q = 0, max_seqlen_k = 0;
  std::optional<double> softmax_scale;
  std::string mask = "no_mask";
  int64_t window_left = -1, window_right = -1;
  double softcap = 0.0;
  bool check_metadata_values = true;
};

void fill_common(flashlane::AttentionProblem& p, const Options& o) {
  p.cu_seqlens_q = opt_view("cu_seqlens_q", o.cu_seqlens_q);
  p.cu_seqlens_k = opt_view("cu_seqlens_k", o.cu_seqlens_k);
  p.seqused_k = opt_view("seqused_k", o.seqused_k);
  p.max_seqlen_q = o.max_seqlen_q;
  p.max_seqlen_k = o.max_seqlen_k;
  p.softmax_scale = o.softmax_scale;
  p.mask = to_mask(o.mask);
  p.window_left = o.window_left;
  p.window_right = o.window_right;
  p.softcap = o.softcap;
  p.check_metadata_values = o.check_metadata_values;
}

cudaStream_t to_stream(uintptr_t stream) { return reinterpret_cast<cudaStream_t>(stream); }

Result forward(const In& q, const In& k, const In& v, const Array& o,
               const std::optional<Array>& lse, const std::optional<In>& cu_seqlens_q,
               const std::optional<In>& cu_seqlens_k, const std::optional<In>& seqused_k,
               const std::optional<In>& learnable_sink, int64_t max_seqlen_q,
               int64_t max_seqlen_k, std::optional<double> softmax_scale,
               const std::string& mask, int64_t window_left, int64_t window_right, double softcap,
               const std::string& backend, bool strict, uintptr_t stream,
               bool check_metadata_values) {
  flashlane::AttentionProblem p;
  flashlane::Request request;
  try {
    p.q = to_view("q", q);
    p.k = to_view("k", k);
    p.v = to_view("v", v);
    p.o = to_view("o", o);
    if (lse) p.lse = to_view("lse", *lse);
    p.learnable_sink = opt_view("learnable_sink", learnable_sink);
    fill_common(p, Options{cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q, max_seqlen_k,
                           softmax_scale, mask, window_left, window_right, softcap,
                           check_metadata_values});
    request = to_request(backend, strict);
  } catch (const ConversionError& e) {
    return to_tuple(flashlane::Status(e.code, e.message));
  }
  return call_without_gil([&] { return flashlane::forward(p, request, to_stream(stream)); });
}

Result backward(const In& q, const In& k, const In& v, const In& o, const In& lse,
                const In& dout, const Array& dq, const Array& dk, const Array& dv,
                const std::optional<In>& cu_seqlens_q, const std::optional<In>& cu_seqlens_k,
                const std::optional<In>& seqused_k, const std::optional<In>& learnable_sink,
                const std::optional<Array>& dlearnable_sink, int64_t max_seqlen_q,
                int64_t max_seqlen_k, std::optional<double> softmax_scale,
                const std::string& mask, int64_t window_left, int64_t window_right,
                double softcap, bool deterministic,
                const std::string& backend, bool strict, uintptr_t stream,
                bool check_metadata_values) {
  flashlane::AttentionProblem p;
  flashlane::Request request;
  try {
    p.q = to_view("q", q);
    p.k = to_view("k", k);
    p.v = to_view("v", v);
    p.o = to_view("o", o);
    p.lse = to_view("lse", lse);
    p.dout = to_view("dout", dout);
    p.dq = to_view("dq", dq);
    p.dk = to_view("dk", dk);
    p.dv = to_view("dv", dv);
    p.learnable_sink = opt_view("learnable_sink", learnable_sink);
    if (dlearnable_sink) p.dlearnable_sink = to_view("dlearnable_sink", *dlearnable_sink);
    fill_common(p, Options{cu_seqlens_q, cu_seqlens_k, seqused_k, max_seqlen_q, max_seqlen_k,
                           softmax_scale, mask, window_left, window_right, softcap,
                           check_metadata_values});
    p.deterministic = deterministic;
    request = to_request(backend, strict);
  } catch (const ConversionError& e) {
    return to_tuple(flashlane::Status(e.code, e.message));
  }
  return call_without_gil([&] { return flashlane::backward(p, request, to_stream(stream)); });
}

Result forward_kvcache(const In& q, const Array& k_cache, const Array& v_cache, const Array& o,
                       const std::optional<Array>& lse, const std::optional<In>& cache_seqlens,
                       const std::optional<In>& cache_batch_idx,
                       const std::optional<In>& page_table, const std::optional<In>& k_new,
                       const std::optional<In>& v_new, const std::optional<In>& rotary_cos,
                       const std::optional<In>& rotary_sin,
                       const std::optional<In>& learnable_sink, bool rotary_interleaved,
                       std::optional<double> softmax_scale, const std::string& mask,
                       int64_t window_left, int64_t window_right, double softcap,
                       int64_t num_splits, const std::string& backend, bool strict,
                       uintptr_t stream, bool check_metadata_values) {
  flashlane::KvCacheProblem p;
  flashlane::Request request;
  try {
    p.q = to_view("q", q);
    p.k_cache = to_view("k_cache", k_cache);
    p.v_cache = to_view("v_cache", v_cache);
    p.o = to_view("o", o);
    if (lse) p.lse = to_view("lse", *lse);
    p.cache_seqlens = opt_view("cache_seqlens", cache_seqlens);
    p.cache_batch_idx = opt_view("cache_batch_idx", cache_batch_idx);
    p.page_table = opt_view("page_table", page_table);
    p.k_new = opt_view("k_new", k_new);
    p.v_new = opt_view("v_new", v_new);
    p.rotary_cos = opt_view("rotary_cos", rotary_cos);
    p.rotary_sin = opt_view("rotary_sin", rotary_sin);
    p.learnable_sink = opt_view("learnable_sink", learnable_sink);
    p.rotary_interleaved = rotary_interleaved;
    p.softmax_scale = softmax_scale;
    p.mask = to_mask(mask);
    p.window_left = window_left;
    p.window_right = window_right;
    p.softcap = softcap;
    p.num_splits = num_splits;
    p.check_metadata_values = check_metadata_values;
    request = to_request(backend, strict);
  } catch (const ConversionError& e) {
    return to_tuple(flashlane::Status(e.code, e.message));
  }
  return call_without_gil(
      [&] { return flashlane::forward_kvcache(p, request, to_stream(stream)); });
}

/// ServingPlan::create over plain values: (None, plan JSON) or (error tuple, "").
std::pair<Result, std::string> serving_plan(
    const std::string& prefill_backend, const std::string& decode_backend, bool prefill_varlen,
    const std::string& kv_layout, int64_t page_size, const std::string& dtype, int64_t head_dim,
    int64_t head_dim_v, int64_t heads_q, int64_t heads_kv, bool causal, int64_t window_left,
    int64_t window_right, double softcap, bool append, int64_t rotary_dim, bool learnable_sink,
    bool check_device, int device_ordinal) {
  flashlane::ServingConfig c;
  try {
    c.prefill_backend = to_request(prefill_backend, true).backend;
    c.decode_backend = to_request(decode_backend, true).backend;
  } catch (const ConversionError& e) {
    return {to_tuple(flashlane::Status(e.code, e.message)), ""};
  }
  if (kv_layout == "dense") {
    c.kv_layout = flashlane::KvLayout::kDense;
  } else if (kv_layout == "paged") {
    c.kv_layout = flashlane::KvLayout::kPaged;
  } else {
    return {to_tuple(flashlane::Status(flashlane::ErrorCode::kInvalidArgument,
                                       "kv_layout = '" + kv_layout + "' (expected dense or paged)")),
            ""};
  }
  if (!flashlane::parse_dtype(dtype, &c.dtype)) {
    return {to_tuple(flashlane::Status(flashlane::ErrorCode::kUnsupportedDType,
                                       "dtype = '" + dtype + "'")),
            ""};
  }
  c.prefill_varlen = prefill_varlen;
  c.page_size = page_size;
  c.head_dim = head_dim;
  c.head_dim_v = head_dim_v;
  c.heads_q = heads_q;
  c.heads_kv = heads_kv;
  c.causal = causal;
  c.window_left = window_left;
  c.window_right = window_right;
  c.softcap = softcap;
  c.append = append;
  c.rotary_dim = rotary_dim;
  c.learnable_sink = learnable_sink;
  c.check_device = check_device;
  c.device_ordinal = device_ordinal;
  flashlane::ServingPlan plan;
  const flashlane::Status st = flashlane::ServingPlan::create(c, &plan);
  if (!st.ok()) return {to_tuple(st), ""};
  return {std::nullopt, plan.to_json()};
}

// The receipt as the dict json.loads(receipt_to_json(r)) gives (same keys, values, types and
// key order: nlohmann's objects are sorted by key), without printing and parsing JSON: the
// Python layer makes one per call while a receipt_log() block is open.
nb::dict receipt_dict(const flashlane::Receipt& r) {
  nb::dict device;
  device["name"] = r.device_name;
  device["sm"] = r.sm;
  nb::list skipped;
  for (const auto& s : r.skipped) {
    nb::dict entry;
    entry["backend"] = s.backend;
    entry["reason"] = s.reason;
    skipped.append(entry);
  }
  nb::dict out;
  out["actual_backend"] = r.actual_backend;
  out["deterministic"] = r.deterministic;
  out["device"] = device;
  out["error_reason"] = r.error_reason;
  out["fallback_reason"] = r.fallback_reason;
  out["kernel_fingerprint"] = r.kernel_fingerprint;
  out["requested_backend"] = r.requested_backend;
  out["runtime_mode"] = r.runtime_mode;
  out["skipped"] = skipped;
  out["status"] = r.status;
  out["strict"] = r.strict;
  out["surface"] = r.surface;
  out["variant"] = r.variant;
  return out;
}

nb::dict device_info(int ordinal) {
  const flashlane::DeviceInfo d = flashlane::query_device(ordinal);
  nb::dict out;
  out["cuda_available"] = d.cuda_available;
  out["ordinal"] = d.ordinal;
  out["sm"] = d.sm;
  out["sm_count"] = d.sm_count;
  out["name"] = d.name;
  out["driver_error"] = d.driver_error;
  return out;
}

std::vector<std::pair<std::string, int>> error_codes() {
  using E = flashlane::ErrorCode;
  std::vector<std::pair<std::string, int>> out;
  for (E c : {E::kOk, E::kNullPointer, E::kUnsupportedDType, E::kDTypeMismatch, E::kRankMismatch,
              E::kShapeMismatch, E::kHeadsNotDivisible, E::kHeadDimInvalid, E::kNotContiguous,
              E::kMisaligned, E::kCuSeqlensInvalid, E::kSequsedInvalid, E::kWindowInvalid,
              E::kSoftmaxScaleInvalid, E::kSoftcapInvalid, E::kDeviceMismatch,
              E::kDropoutUnsupported, E::kInvalidArgument, E::kCacheSeqlensInvalid,
              E::kCacheOverflow, E::kPageTableInvalid, E::kCacheBatchIdxInvalid,
              E::kRotaryInvalid, E::kBackendInapplicable,
              E::kNoApplicableBackend, E::kCudaError, E::kCudaErrorPending, E::kInternal}) {
    out.emplace_back(flashlane::error_code_name(c), static_cast<int>(c));
  }
  return out;
}

}  // namespace

NB_MODULE(_C, m) {
  m.doc() = "flashlane extension: DLPack tensors in, flashlane::forward/backward, receipts out";

  m.def("forward", &forward, "q"_a, "k"_a, "v"_a, "o"_a, "lse"_a.none(), "cu_seqlens_q"_a.none(),
        "cu_seqlens_k"_a.none(), "seqused_k"_a.none(), "learnable_sink"_a.none(),
        "max_seqlen_q"_a, "max_seqlen_k"_a, "softmax_scale"_a.none(), "mask"_a, "window_left"_a,
        "window_right"_a, "softcap"_a, "backend"_a, "strict"_a, "stream"_a,
        "check_metadata_values"_a,
        "flashlane::forward over DLPack tensors. Returns None, or (code, value, message, tag).");
  m.def("backward", &backward, "q"_a, "k"_a, "v"_a, "o"_a, "lse"_a, "dout"_a, "dq"_a, "dk"_a,
        "dv"_a, "cu_seqlens_q"_a.none(), "cu_seqlens_k"_a.none(), "seqused_k"_a.none(),
        "learnable_sink"_a.none(), "dlearnable_sink"_a.none(), "max_seqlen_q"_a,
        "max_seqlen_k"_a, "softmax_scale"_a.none(), "mask"_a, "window_left"_a, "window_right"_a,
        "softcap"_a, "deterministic"_a, "backend"_a, "strict"_a, "stream"_a,
        "check_metadata_values"_a,
        "flashlane::backward over DLPack tensors. Returns None, or (code, value, message, tag).");
  m.def("forward_kvcache", &forward_kvcache, "q"_a, "k_cache"_a, "v_cache"_a, "o"_a, "lse"_a.none(),
        "cache_seqlens"_a.none(), "cache_batch_idx"_a.none(), "page_table"_a.none(),
        "k_new"_a.none(), "v_new"_a.none(), "rotary_cos"_a.none(), "rotary_sin"_a.none(),
        "learnable_sink"_a.none(), "rotary_interleaved"_a, "softmax_scale"_a.none(), "mask"_a,
        "window_left"_a, "window_right"_a, "softcap"_a, "num_splits"_a, "backend"_a, "strict"_a,
        "stream"_a, "check_metadata_values"_a,
        "flashlane::forward_kvcache over DLPack tensors (k_cache / v_cache written when k_new "
        "is given). Returns None, or (code, value, message, tag).");
  m.def("serving_plan", &serving_plan, "prefill_backend"_a, "decode_backend"_a,
        "prefill_varlen"_a, "kv_layout"_a, "page_size"_a, "dtype"_a, "head_dim"_a,
        "head_dim_v"_a, "heads_q"_a, "heads_kv"_a, "causal"_a, "window_left"_a,
        "window_right"_a, "softcap"_a, "append"_a, "rotary_dim"_a, "learnable_sink"_a,
        "check_device"_a,
        "device_ordinal"_a,
        "flashlane::ServingPlan::create: (None, plan JSON) or ((code, value, message, tag), '').");
  m.def("last_receipt_json",
        []() { return flashlane::receipt_to_json(flashlane::last_receipt()); },
        "This thread's last receipt as one JSON line (receipt_to_json).");
  m.def("last_receipt_dict", []() { return receipt_dict(flashlane::last_receipt()); },
        "This thread's last receipt as a dict: json.loads(last_receipt_json()), made directly.");
  m.def("receipt_roundtrip",
        [](const std::string& json) -> std::optional<std::string> {
          flashlane::Receipt r;
          if (!flashlane::receipt_from_json(json, &r)) return std::nullopt;
          return flashlane::receipt_to_json(r);
        },
        "json"_a, "Parses a receipt with receipt_from_json and prints it again (None if malformed).");
  m.def("version", []() { return std::string(flashlane::version()); });
  m.def("git_commit", []() { return std::string(flashlane::git_commit()); });
  m.def("kernel_fingerprint",
        [](const std::string& backend, const std::string& runtime_mode) {
          // An empty mode belongs to no family: the backend's fingerprint (kernel_family).
          return std::string(flashlane::kernel_fingerprint(backend.c_str(), runtime_mode.c_str()));
        },
        "backend"_a, "runtime_mode"_a = "",
        "The build's kernel fingerprint of a backend, or with a runtime_mode of the kernel family "
        "that serves it (\"\" when it has no kernel sources).");
  m.def("surface_ids", []() { return flashlane::surface_ids(); },
        "The surface catalog's ids, in its order (receipts' `surface`, bench rows, the gate, status).");
  m.def("compiled_architectures", []() { return std::string(flashlane::compiled_architectures()); });
  m.def("backend_priority", []() {
    std::vector<std::string> out;
    for (flashlane::Backend b : flashlane::backend_priority()) out.emplace_back(flashlane::backend_name(b));
    return out;
  });
  m.def("backend_names", []() {
    std::vector<std::string> out;
    for (flashlane::Backend b : flashlane::registered_backends()) out.emplace_back(flashlane::backend_name(b));
    return out;
  }, "Every registered backend's name (not \"auto\"), in the applicability table's order.");
  m.def("device_info", &device_info, "ordinal"_a = 0);
  m.def("error_codes", &error_codes);
}
