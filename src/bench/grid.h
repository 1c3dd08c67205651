// bench/grid.h: the benchmark grids of `flashlane bench` (BENCHMARKS.md "The canonical grid").
//
//   canonical: bf16, model dim 2048 (heads = 2048 / head_dim), 16384 tokens per batch
//              (batch = 16384 / seqlen), head_dim {64, 128, 256}, causal {no, yes},
//              seqlen {512, 1k, 2k, 4k, 8k, 16k}: 36 problems.
//   smoke:     the canonical shapes at head_dim {64, 128}, seqlen {512, 2k}, causal {no, yes}:
//              8 problems, a quick GPU check of the whole path.
//   varlen:    packed varlen batches of the canonical model dim: 5 sequences of 512, 1536, 2048,
//              4096 and 8192 tokens (16384 in all, cu_seqlens), bf16, head_dim {64, 128, 256},
//              causal {no, yes}: 6 problems, the rows of the varlen_fwd / varlen_bwd surfaces.
//   cpu:       what runs where no GPU is: [1, 256, 4, 64] bf16, no_mask and causal.
#pragma once

#include <string>
#include <vector>

#include "bench/harness.h"

namespace flashlane::bench {

std::vector<ProblemSpec> canonical_grid();
std::vector<ProblemSpec> smoke_grid();
std::vector<ProblemSpec> cpu_grid();
std::vector<ProblemSpec> varlen_grid();
/// The grid of a preset name ("canonical", "smoke", "varlen", "cpu"); false on an unknown name.
bool grid_for_preset(const std::string& name, std::vector<ProblemSpec>* out);

}  // namespace flashlane::bench
