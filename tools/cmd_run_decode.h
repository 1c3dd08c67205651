// tools/cmd_run_decode.h: the options of `flashlane run --decode` (cmd_run_decode.cpp).
#pragma once

#include <cstdint>
#include <string>

namespace flashlane::cli {

struct DecodeOptions {
  int64_t batch = 1, seqlen_q = 1, heads_q = 4, heads_kv = 0, head_dim = 64, head_dim_v = 0;
  int64_t seqlen_cache = 256, page_size = 0, seqlen_new = 0, rotary_dim = 0, num_splits = 0;
  std::string cache_seqlens;  // "a,b,..." (default: seqlen_cache / 2 each)
  bool rotary_neox = false;   // GPT-NeoX pairs (default: interleaved, GPT-J)
  std::string dtype = "bf16", mask = "no_mask", backend = "auto";
  int64_t window_left = -1, window_right = -1;
  double softcap = 0;
  std::string learnable_sink;  // a number (every head) or "random" (cli_common.h), when given
  bool has_learnable_sink = false;
  bool strict = false, json = false;
  std::string device = "cpu";  // "cuda": the call runs on CUDA device 0 tensors (copies of the inputs)
  uint64_t seed = 0;
};

/// Runs one KV-cache call; exit code as the other subcommands (cli_common.h).
int run_decode(const DecodeOptions& o);

}  // namespace flashlane::cli
