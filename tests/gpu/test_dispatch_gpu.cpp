// Dispatcher on a machine with a CUDA device: auto picks the first applicable backend by
// priority, and the receipt says which one ran, on which device. Skipped without a GPU.
#include <cuda_runtime_api.h>
#include <gtest/gtest.h>

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
