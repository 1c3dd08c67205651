// serving_plan.cpp: ServingPlan::create (flashlane/serving.h): a configuration judged by the
// applicability table before the first call, through synthetic ProblemInfos of one prefill and
// one decode call.
#include "flashlane/serving.h"

#include <cmath>
#include <nlohmann/json.hpp>

#include "dispatch/applicability.h"
#include "dispatch/backend_registry.h"
#include "dispatch/surfaces.h"
#include "flashlane/kvcache.h"

namespace flashlane {
namespace {

Status fail(ErrorCode code, std::string message) { return Status(code, std::move(message)); }
std::string str(int64_t v) { return std::to_string(v); }

bool valid_head_dim(int64_t d) { return d > 0 && d <= 256 && d % 8 == 0; }

ProblemInfo base_info(const ServingConfig& c, const detail::BackendDef& def) {
  ProblemInfo info;
  info.dtype = c.dtype;
  info.device = def.tensors == DeviceKind::kCPU ? Device::cpu() : Device::cuda(c.device_ordinal);
  info.batch = 1;
  info.seqlen_q = 1;
  info.seqlen_k = 1;
  info.total_q = 1;
  info.total_k = 1;
  info.heads_q = c.heads_q;
  info.heads_kv = c.heads_kv;
  info.head_dim = c.head_dim;
  info.head_dim_v = c.head_dim_v > 0 ? c.head_dim_v : c.head_dim;
  info.softmax_scale = 1.0 / std::sqrt(static_cast<double>(c.head_dim));
  info.softcap = c.softcap;
  info.has_sink = c.learnable_sink;
  info.mask = c.causal ? MaskType::kCausalBottomRight : MaskType::kNoMask;
  info.bottom_right = true;
  info.window_left = c.window_left;
  info.window_right = c.causal ? 0 : c.window_right;
  return info;
}

Status judge(const char* role, Backend backend, const ProblemInfo& info, const ServingConfig& c,
             bool decode) {
  const detail::BackendDef* def = detail::find_backend(backend);
  const DeviceInfo device = c.check_device ? query_device(c.device_ordinal) : DeviceInfo{};
  const detail::RuleContext ctx{info, device};
  if (const detail::Rule* r = detail::first_failing_rule(backend, ctx, !c.check_device)) {
    return Status(ErrorCode::kBackendInapplicable,
                  std::string("serving plan: ") + role + " backend " + def->name + " refused: " +
                      r->description + " does not hold",
                  r->tag);
  }
  if ((decode ? def->decode != nullptr : def->forward != nullptr)) return Status::Ok();
  return Status(ErrorCode::kInternal, std::string("serving plan: ") + role + " backend " +
                                          def->name + " passed its rules but has no " +
                                          (decode ? "decode" : "forward") + " code");
}

}  // namespace

Status ServingPlan::create(const ServingConfig& c, ServingPlan* out) {
  const struct {
    const char* role;
    Backend b;
  } named[] = {{"prefill_backend", c.prefill_backend}, {"decode_backend", c.decode_backend}};
  for (const auto& n : named) {
    if (n.b == Backend::kAuto) {
      return fail(ErrorCode::kInvalidArgument,
                  std::string(n.role) + " = auto: a serving plan names a concrete backend");
    }
    if (detail::find_backend(n.b) == nullptr) {
      return fail(ErrorCode::kInvalidArgument, std::string(n.role) + " = " +
                                                   str(static_cast<int>(n.b)) +
                                                   " names no registered backend");
    }
  }
  if (c.kv_layout != KvLayout::kDense && c.kv_layout != KvLayout::kPaged) {
    return fail(ErrorCode::kInvalidArgument,
                std::string("kv_layout = ") + kv_layout_name(c.kv_layout) +
                    ": a KV cache is dense or paged");
  }
  if (c.kv_layout == KvLayout::kPaged && c.page_size < 1) {
    return fail(ErrorCode::kPageTableInvalid,
                "page_size = " + str(c.page_size) + ": a page holds at least one key");
  }
  if (c.dtype != DType::kFloat16 && c.dtype != DType::kBFloat16 && c.dtype != DType::kFloat32 &&
      c.dtype != DType::kFloat64) {
    return fail(ErrorCode::kUnsupportedDType, std::string("dtype = ") + dtype_name(c.dtype) +
                                                  " (float16, bfloat16, float32 or float64)");
  }
  const int64_t dv = c.head_dim_v > 0 ? c.head_dim_v : c.head_dim;
  if (!valid_head_dim(c.head_dim) || !valid_head_dim(dv)) {
    return fail(ErrorCode::kHeadDimInvalid, "head_dim = " + str(c.head_dim) + ", head_dim_v = " +
                                                str(dv) + ": each a multiple of 8 in [8, 256]");
  }
  if (c.heads_kv < 1 || c.heads_q < 1 || c.heads_q % c.heads_kv != 0) {
    return fail(ErrorCode::kHeadsNotDivisible, "heads_q = " + str(c.heads_q) + ", heads_kv = " +
                                                   str(c.heads_kv) +
                                                   ": heads_q must be a positive multiple of "
                                                   "heads_kv >= 1");
  }
  if (c.window_left < -1 || c.window_right < -1 ||
      (c.causal && c.window_right != -1 && c.window_right != 0)) {
    return fail(ErrorCode::kWindowInvalid,
                "window = (" + str(c.window_left) + ", " + str(c.window_right) +
                    "): each -1 or >= 0, and right -1 or 0 when causal");
  }
  if (!std::isfinite(c.softcap) || c.softcap < 0.0) {
    return fail(ErrorCode::kSoftcapInvalid, "softcap must be finite and >= 0");
  }
  if (c.rotary_dim != 0 &&
      (!c.append || c.rotary_dim < 2 || c.rotary_dim % 2 != 0 || c.rotary_dim > c.head_dim)) {
    return fail(ErrorCode::kRotaryInvalid,
                "rotary_dim = " + str(c.rotary_dim) +
                    ": even, in [2, head_dim], and only for plans whose decode calls append");
  }

  ProblemInfo prefill = base_info(c, *detail::find_backend(c.prefill_backend));
  prefill.direction = Direction::kForward;
  prefill.varlen = c.prefill_varlen;
  prefill.kv_layout = c.prefill_varlen ? KvLayout::kVarlenPacked : KvLayout::kDense;
  if (Status st = judge("prefill", c.prefill_backend, prefill, c, false); !st.ok()) return st;

  ProblemInfo decode = base_info(c, *detail::find_backend(c.decode_backend));
  decode.direction = Direction::kDecode;
  decode.kv_layout = c.kv_layout;
  const bool paged = c.kv_layout == KvLayout::kPaged;
  decode.page_size = paged ? c.page_size : 0;
  decode.num_pages = paged ? 1 : 0;
  decode.max_pages_per_seq = paged ? 1 : 0;
  decode.batch_cache = paged ? 0 : 1;
  decode.cache_capacity = paged ? c.page_size : 1;
  decode.has_cache_seqlens = true;
  decode.has_append = c.append;
  decode.seqlen_new = c.append ? 1 : 0;
  decode.rotary_dim = c.rotary_dim;
  if (Status st = judge("decode", c.decode_backend, decode, c, true); !st.ok()) return st;

  ServingPlan plan;
  plan.config_ = c;
  // As the dispatcher names them (attention_runtime_mode, kvcache_runtime_mode): sinks change
  // the forward's mode, never a KV-cache call's.
  plan.prefill_mode_ =
      detail::attention_runtime_mode(Direction::kForward, c.prefill_varlen, c.learnable_sink);
  plan.decode_mode_ = kvcache_runtime_mode(c.append, paged);
  *out = std::move(plan);
  return Status::Ok();
}

std::string ServingPlan::to_json() const {
  const ServingConfig& c = config_;
  nlohmann::json j = {
      {"prefill_backend", backend_name(c.prefill_backend)},
      {"decode_backend", backend_name(c.decode_backend)},
      {"prefill_mode", prefill_mode_},
      {"decode_mode", decode_mode_},
      {"kv_layout", kv_layout_name(c.kv_layout)},
      {"page_size", c.kv_layout == KvLayout::kPaged ? c.page_size : 0},
      {"dtype", dtype_name(c.dtype)},
      {"head_dim", c.head_dim},
      {"head_dim_v", c.head_dim_v > 0 ? c.head_dim_v : c.head_dim},
      {"heads_q", c.heads_q},
      {"heads_kv", c.heads_kv},
      {"causal", c.causal},
      {"window", {c.window_left, c.window_right}},
      {"softcap", c.softcap},
      {"rotary_dim", c.rotary_dim},
      {"learnable_sink", c.learnable_sink},
      {"device_checked", c.check_device},
  };
  return j.dump();
}

}  // namespace flashlane
