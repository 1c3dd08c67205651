// bench/device_fill.cu: seeded normal(0, 1) fills of device buffers (device_fill.h).
#include "bench/device_fill.h"

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <string>

namespace flashlane::bench {

namespace {

__host__ __device__ inline uint64_t splitmix64(uint64_t x) {
  x += 0x9e3779b97f4a7c15ull;
  x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
  x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
  return x ^ (x >> 31);
}

// Box-Muller on two 24-bit uniforms in (0, 1] and [0, 1) taken from one 64-bit hash.
__host__ __device__ inline float normal_from_hash(uint64_t h) {
  const float u1 = (static_cast<float>(h >> 40) + 1.0f) * (1.0f / 16777216.0f);
  const float u2 = static_cast<float>((h >> 16) & 0xffffffull) * (1.0f / 16777216.0f);
  return sqrtf(-2.0f * logf(u1)) * cospif(2.0f * u2);
}

template <class T>
__device__ inline T convert(float x);
template <>
__device__ inline float convert<float>(float x) { return x; }
template <>
__device__ inline __half convert<__half>(float x) { return __float2half_rn(x); }
template <>
__device__ inline __nv_bfloat16 convert<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

template <class T>
__global__ void fill_normal_kernel(T* data, size_t count, uint64_t seed) {
  const uint64_t key = splitmix64(seed);
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    data[i] = convert<T>(normal_from_hash(splitmix64(key ^ i)));
}

/// Reads every 16-byte word of the buffer; the XOR of the words is stored only if it equals a
/// value no sane buffer produces, so the loads cannot be removed and nothing is written.
__global__ void read_flush_kernel(const uint4* data, size_t words, unsigned* sink) {
  uint4 acc = make_uint4(0, 0, 0, 0);
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < words;
       i += size_t(gridDim.x) * blockDim.x) {
    const uint4 v = __ldcg(data + i);
    acc.x ^= v.x;
    acc.y ^= v.y;
    acc.z ^= v.z;
    acc.w ^= v.w;
  }
  if ((acc.x & acc.y & acc.z & acc.w) == 0xdeadbeefu) *sink = acc.x;
}

}  // namespace

Status flush_l2_by_reading(const void* data, size_t bytes, cudaStream_t stream) {
  const size_t words = bytes / sizeof(uint4);
  if (words == 0) return Status::Ok();
  // The sink is the first word of the buffer itself: never written in practice.
  read_flush_kernel<<<1024, 256, 0, stream>>>(static_cast<const uint4*>(data), words,
                                              const_cast<unsigned*>(static_cast<const unsigned*>(data)));
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    return Status(ErrorCode::kCudaError, std::string("read_flush_kernel: ") + cudaGetErrorString(e));
  return Status::Ok();
}

float normal_at(uint64_t seed, uint64_t index) {
  const uint64_t key = splitmix64(seed);
  const uint64_t h = splitmix64(key ^ index);
  const float u1 = (static_cast<float>(h >> 40) + 1.0f) * (1.0f / 16777216.0f);
  const float u2 = static_cast<float>((h >> 16) & 0xffffffull) * (1.0f / 16777216.0f);
  return std::sqrt(-2.0f * std::log(u1)) * std::cos(2.0f * static_cast<float>(M_PI) * u2);
}

Status fill_normal_device(void* data, DType dtype, size_t count, uint64_t seed, cudaStream_t stream) {
  if (count == 0) return Status::Ok();
  const int threads = 256;
  const size_t want = (count + threads - 1) / threads;
  const unsigned blocks = static_cast<unsigned>(want < 65536 ? want : 65536);
  switch (dtype) {
    case DType::kBFloat16:
      fill_normal_kernel<<<blocks, threads, 0, stream>>>(static_cast<__nv_bfloat16*>(data), count, seed);
      break;
    case DType::kFloat16:
      fill_normal_kernel<<<blocks, threads, 0, stream>>>(static_cast<__half*>(data), count, seed);
      break;
    case DType::kFloat32:
      fill_normal_kernel<<<blocks, threads, 0, stream>>>(static_cast<float*>(data), count, seed);
      break;
    default:
      return Status(ErrorCode::kUnsupportedDType,
                    std::string("fill_normal_device: ") + dtype_name(dtype) + " is not bf16, fp16 or fp32");
  }
  const cudaError_t e = cudaGetLastError();
  if (e != cudaSuccess)
    return Status(ErrorCode::kCudaError, std::string("fill_normal_kernel: ") + cudaGetErrorString(e));
  return Status::Ok();
}

}  // namespace flashlane::bench
