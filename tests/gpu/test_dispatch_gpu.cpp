// Dispatcher on a machine with a CUDA device: auto picks the first applicable backend by
// priority, and the receipt says which one ran, on which device; a CUDA error the caller left
// pending is refused as kCudaErrorPending and left pending, never reported as flashlane's own.
// Skipped without a GPU.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

#include <cstdint>
#include <string>
#include <vector>

#include "flashlane/flashlane.h"

namespace fl = flashlane;

TEST(DispatchGpu, AutoReceiptNamesTheBackendThatRan) {
  const fl::DeviceInfo dev = fl::query_device(0);
  if (!dev.cuda_available) GTEST_SKIP() << "no CUDA device: " << dev.driver_error;
  const int b = 1, s = 64, h = 2, d = 128;
  const size_t n = size_t(b) * s * h * d;
  std::vector<uint16_t> host(n);
  for (size_t i = 0; i < n; ++i) host[i] = static_cast<uint16_t>(0x3c00 + (i * 7919) % 512);  // fp16 ~[1,2)
  void *q, *k, *v, *o;
  ASSERT_EQ(cudaMalloc(&q, n * 2), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&k, n * 2), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&v, n * 2), cudaSuccess);
  ASSERT_EQ(cudaMalloc(&o, n * 2), cudaSuccess);
  for (void* ptr : {q, k, v}) cudaMemcpy(ptr, host.data(), n * 2, cudaMemcpyHostToDevice);
  fl::AttentionProblem p;
  auto cuda = fl::Device::cuda(0);
  p.q = fl::TensorView::contiguous(q, fl::DType::kFloat16, {b, s, h, d}, cuda);
  p.k = fl::TensorView::contiguous(k, fl::DType::kFloat16, {b, s, h, d}, cuda);
  p.v = fl::TensorView::contiguous(v, fl::DType::kFloat16, {b, s, h, d}, cuda);
  p.o = fl::TensorView::contiguous(o, fl::DType::kFloat16, {b, s, h, d}, cuda);
  fl::Status st = fl::forward(p);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  ASSERT_TRUE(st.ok()) << st.to_string();
  const fl::Receipt& r = fl::last_receipt();
  EXPECT_EQ(r.device_name, dev.name);
  EXPECT_EQ(r.sm, dev.sm);
  if (dev.sm == 90 && r.skipped.empty()) {
    EXPECT_EQ(r.actual_backend, "sm90");
  } else {
    EXPECT_EQ(r.actual_backend, "reference_cuda");
    ASSERT_FALSE(r.skipped.empty());
    EXPECT_EQ(r.skipped[0].backend, "sm90");
  }
  for (void* ptr : {q, k, v, o}) cudaFree(ptr);
}

namespace {

/// An fp16 forward problem [1, 64, 2, 64] on CUDA device 0 with owned buffers; o poisoned.
struct CudaProblem {
  static constexpr int b = 1, s = 64, h = 2, d = 64;
  static constexpr size_t n = size_t(b) * s * h * d;
  void *q = nullptr, *k = nullptr, *v = nullptr, *o = nullptr;
  fl::AttentionProblem p;
  CudaProblem() {
    std::vector<uint16_t> host(n, 0x3c00);  // 1.0 in fp16
    for (void** ptr : {&q, &k, &v, &o}) {
      EXPECT_EQ(cudaMalloc(ptr, n * 2), cudaSuccess);
      EXPECT_EQ(cudaMemcpy(*ptr, host.data(), n * 2, cudaMemcpyHostToDevice), cudaSuccess);
    }
    EXPECT_EQ(cudaMemset(o, 0xff, n * 2), cudaSuccess);  // poison (NaN)
    auto cuda = fl::Device::cuda(0);
    p.q = fl::TensorView::contiguous(q, fl::DType::kFloat16, {b, s, h, d}, cuda);
    p.k = fl::TensorView::contiguous(k, fl::DType::kFloat16, {b, s, h, d}, cuda);
    p.v = fl::TensorView::contiguous(v, fl::DType::kFloat16, {b, s, h, d}, cuda);
    p.o = fl::TensorView::contiguous(o, fl::DType::kFloat16, {b, s, h, d}, cuda);
  }
  ~CudaProblem() {
    for (void* ptr : {q, k, v, o}) cudaFree(ptr);
  }
  bool output_untouched() const {
    std::vector<uint16_t> host(n);
    if (cudaMemcpy(host.data(), o, n * 2, cudaMemcpyDeviceToHost) != cudaSuccess) return false;
    for (uint16_t x : host)
      if (x != 0xffff) return false;
    return true;
  }
};

/// Leaves a non-sticky CUDA error pending on this thread, as a caller's bad launch would: a
/// kernel launch the runtime refuses (this file is C++ and has no kernel of its own: the
/// "kernel" is a host function, refused as cudaErrorInvalidResourceHandle on CUDA 13 / H200;
/// its 4096 threads per block would be cudaErrorInvalidConfiguration). Returns the error.
cudaError_t leave_launch_error_pending() {
  void* args[] = {nullptr};
  const cudaError_t launched = cudaLaunchKernel(reinterpret_cast<const void*>(&cudaFree),
                                                dim3(1), dim3(4096), args, 0, nullptr);
  (void)launched;
  return cudaPeekAtLastError();
}

}  // namespace

TEST(DispatchGpu, PendingCudaErrorOfTheCallerIsNotAttributedToFlashlane) {
  const fl::DeviceInfo dev = fl::query_device(0);
  if (!dev.cuda_available) GTEST_SKIP() << "no CUDA device: " << dev.driver_error;
  CudaProblem cp;
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);

  const cudaError_t pending = leave_launch_error_pending();
  ASSERT_NE(pending, cudaSuccess) << "the invalid launch left no error pending";
  for (const fl::Request req : {fl::Request{}, fl::Request{fl::Backend::kReferenceCuda, true},
                                fl::Request{fl::Backend::kSm90, false}}) {
    const fl::Status st = fl::forward(cp.p, req);
    EXPECT_EQ(st.code(), fl::ErrorCode::kCudaErrorPending) << st.to_string();
    EXPECT_NE(st.message().find(cudaGetErrorName(pending)), std::string::npos) << st.message();
    EXPECT_TRUE(st.reason_tag().empty()) << st.reason_tag();
    const fl::Receipt& r = fl::last_receipt();
    EXPECT_EQ(r.status, "cuda_error_pending");
    EXPECT_EQ(r.requested_backend, fl::backend_name(req.backend));
    EXPECT_TRUE(r.actual_backend.empty());
    EXPECT_TRUE(r.error_reason.empty());
    // The error is still the caller's to read.
    EXPECT_EQ(cudaPeekAtLastError(), pending);
  }
  // A host problem never touches the CUDA runtime's error state.
  {
    std::vector<uint16_t> hq(CudaProblem::n, 0x3c00), ho(CudaProblem::n, 0xffff);
    fl::AttentionProblem hp;
    const int64_t b = CudaProblem::b, s = CudaProblem::s, h = CudaProblem::h, d = CudaProblem::d;
    hp.q = fl::TensorView::contiguous(hq.data(), fl::DType::kFloat16, {b, s, h, d}, fl::Device::cpu());
    hp.k = hp.q;
    hp.v = hp.q;
    hp.o = fl::TensorView::contiguous(ho.data(), fl::DType::kFloat16, {b, s, h, d}, fl::Device::cpu());
    const fl::Status st = fl::forward(hp, fl::Request{fl::Backend::kReferenceCpu, true});
    EXPECT_TRUE(st.ok()) << st.to_string();
    EXPECT_EQ(cudaPeekAtLastError(), pending);
  }
  ASSERT_EQ(cudaGetLastError(), pending);  // the caller clears it
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_TRUE(cp.output_untouched()) << "a call refused for a pending error wrote the output";

  // Once the caller cleared it, the same call runs.
  const fl::Status st = fl::forward(cp.p);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  ASSERT_TRUE(st.ok()) << st.to_string();
  EXPECT_EQ(fl::last_receipt().status, "ok");
  EXPECT_FALSE(cp.output_untouched());
}

TEST(DispatchGpu, PendingCudaErrorRefusesTheBackwardToo) {
  const fl::DeviceInfo dev = fl::query_device(0);
  if (!dev.cuda_available) GTEST_SKIP() << "no CUDA device: " << dev.driver_error;
  CudaProblem cp;
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const cudaError_t pending = leave_launch_error_pending();
  ASSERT_NE(pending, cudaSuccess);
  // Checked before validation: the incomplete backward problem is not looked at.
  const fl::Status st = fl::backward(cp.p);
  EXPECT_EQ(st.code(), fl::ErrorCode::kCudaErrorPending) << st.to_string();
  EXPECT_EQ(fl::last_receipt().status, "cuda_error_pending");
  EXPECT_EQ(fl::last_receipt().runtime_mode, "bwd");
  EXPECT_EQ(cudaGetLastError(), pending);
}
