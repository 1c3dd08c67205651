// tools/cmd_info.cpp: `flashlane info [--json]`: library version, commit and compiled
// architectures; the CUDA devices; and, for device 0, each registered backend (auto's order,
// then those auto never picks) available or not with its reason tag. Availability is what
// flashlane::select() answers for a strict request on a small representative problem (bf16,
// bshd [1, 128, 8, 128], no mask; on the host for backends of host tensors): select()
// validates and applies the applicability table without launching anything, so the tensors
// carry fake, 256-byte aligned pointers (bshd: no metadata is read).
#include <cuda_runtime_api.h>

#include <algorithm>
#include <cstdint>
#include <iostream>
#include <memory>
#include <vector>

#include <nlohmann/json.hpp>

#include "bench/gate.h"
#include "cli_common.h"
#include "dispatch/backend_registry.h"
#include "flashlane/flashlane.h"

namespace flashlane::cli {

namespace {

AttentionProblem representative_problem(Device device) {
  const int64_t b = 1, s = 128, h = 8, d = 128;
  auto fake = [](uintptr_t slot) { return reinterpret_cast<void*>(uintptr_t{0x10000000} * slot); };
  AttentionProblem p;
  p.q = TensorView::contiguous(fake(1), DType::kBFloat16, {b, s, h, d}, device);
  p.k = TensorView::contiguous(fake(2), DType::kBFloat16, {b, s, h, d}, device);
  p.v = TensorView::contiguous(fake(3), DType::kBFloat16, {b, s, h, d}, device);
  p.o = TensorView::contiguous(fake(4), DType::kBFloat16, {b, s, h, d}, device);
  p.lse = TensorView::contiguous(fake(5), DType::kFloat32, {b, h, s}, device);
  return p;
}

int run_info(bool as_json) {
  nlohmann::json j;
  j["library"] = {{"version", version()}, {"git_commit", git_commit()},
                  {"compiled_architectures", compiled_architectures()},
                  {"kernel_fingerprints", bench::build_kernel_fingerprints()}};
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  std::string driver_error;
  if (e != cudaSuccess) {
    driver_error = cudaGetErrorString(e);
    count = 0;
    cudaGetLastError();
  }
  int driver = 0, runtime = 0;
  cudaDriverGetVersion(&driver);
  cudaRuntimeGetVersion(&runtime);
  cudaGetLastError();
  j["cuda"] = {{"driver_version", driver}, {"runtime_version", runtime},
               {"device_count", count}, {"error", driver_error}};
  nlohmann::json devices = nlohmann::json::array();
  for (int i = 0; i < count; ++i) {
    const DeviceInfo d = query_device(i);
    devices.push_back({{"ordinal", i}, {"name", d.name}, {"sm", d.sm}, {"sm_count", d.sm_count},
                       {"available", d.cuda_available}, {"error", d.driver_error}});
  }
  j["devices"] = devices;
  const DeviceInfo d0 = query_device(0);
  nlohmann::json backends = nlohmann::json::array();
  // Every registered backend: auto's order first, then those auto never picks (sm100, cudnn).
  std::vector<Backend> listed = backend_priority();
  for (Backend b : registered_backends()) {
    if (std::find(listed.begin(), listed.end(), b) == listed.end()) listed.push_back(b);
  }
  for (Backend b : listed) {
    const detail::BackendDef* def = detail::find_backend(b);
    const Device dev = def->tensors == DeviceKind::kCPU ? Device::cpu() : Device::cuda(0);
    Plan plan;
    ProblemInfo info;
    const Status s = select(representative_problem(dev), Direction::kForward,
                            Request{b, /*strict=*/true}, &plan, &info);
    backends.push_back({{"backend", backend_name(b)},
                        {"auto", def->priority >= 0},
                        {"available", s.ok()},
                        {"tag", s.reason_tag()},
                        {"status", s.ok() ? std::string("ok") : s.to_string()}});
  }
  j["backends"] = backends;
  j["probe"] = "select(strict) of a bf16 bshd [1, 128, 8, 128] no_mask forward on device 0 "
               "(backends of host tensors, such as reference_cpu: host tensors)";

  if (as_json) {
    std::cout << j.dump(2) << std::endl;
    return kExitOk;
  }
  std::cout << "flashlane " << version() << " (commit " << git_commit() << ")\n"
            << "compiled architectures: " << compiled_architectures() << "\n"
            << "kernel fingerprints: sm90 " << kernel_fingerprint("sm90") << " (fwd "
            << kernel_fingerprint("sm90_fwd") << ", bwd " << kernel_fingerprint("sm90_bwd")
            << ", decode " << kernel_fingerprint("sm90_decode") << "), reference_cuda "
            << kernel_fingerprint("reference_cuda") << ", reference_cpu "
            << kernel_fingerprint("reference_cpu") << "\n"
            << "CUDA driver "
            << (driver > 0 ? std::to_string(driver / 1000) + "." + std::to_string((driver % 1000) / 10)
                           : std::string("none"))
            << ", runtime " << runtime / 1000 << "." << (runtime % 1000) / 10 << "\n";
  if (count == 0) {
    std::cout << "CUDA devices: none"
              << (driver_error.empty() ? std::string() : " (" + driver_error + ")") << "\n";
  } else {
    std::cout << "CUDA devices: " << count << "\n";
    for (const auto& dev : devices)
      std::cout << "  [" << dev["ordinal"].get<int>() << "] " << dev["name"].get<std::string>()
                << "  sm_" << dev["sm"].get<int>() << "  " << dev["sm_count"].get<int>()
                << " SMs\n";
  }
  std::cout << "backends on device 0 (" << (d0.cuda_available ? d0.name : std::string("no GPU"))
            << "), strict selection of a bf16 [1, 128, 8, 128] forward:\n";
  for (const auto& b : backends) {
    std::cout << "  " << b["backend"].get<std::string>() << ": "
              << (b["available"].get<bool>() ? "available" : "unavailable");
    if (!b["available"].get<bool>())
      std::cout << "  [" << b["tag"].get<std::string>() << "] " << b["status"].get<std::string>();
    std::cout << "\n";
  }
  std::cout.flush();
  return kExitOk;
}

}  // namespace

void add_info_command(CLI::App& app, int* exit_code) {
  auto json = std::make_shared<bool>(false);
  CLI::App* sub = app.add_subcommand("info", "Version, CUDA devices and backend availability");
  sub->add_flag("--json", *json, "Print as JSON");
  sub->callback([json, exit_code] { *exit_code = run_info(*json); });
}

}  // namespace flashlane::cli
