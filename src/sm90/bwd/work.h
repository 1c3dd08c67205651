// work.h: the iteration space of one CTA of the WGMMA backward, shared by its three roles
// (TMA producer, consumers, dQ writer) so that they walk the same (query head, query tile)
// sequence in the same order and their pipeline states stay in step.
//
// A CTA owns key tile n_block of one KV head and batch entry. It visits, for every query head of
// the KV head's GQA group in turn, the query tiles that can see some key of the tile. Both ends
// of a query row's visible key range are non-decreasing in the row (MaskRule), so the visiting
// tiles are one contiguous range; masked-out tiles are never loaded.
//
// Deterministic mode changes two things, both here (see key_tiles_before and deterministic_tile):
// the query tiles are visited in descending order, and a CTA's key tile comes from a ticket.
#pragma once

#include "core/attention_rules.h"
#include "sm90/bwd/params.h"
#include "sm90/common/seqlen.h"

namespace flashlane::sm90::bwd {

struct KeyTileWork {
  int b = 0, h_kv = 0, n_block = 0;
  int n0 = 0;           // first key of the tile
  int64_t q_start = 0;  // first row of the sequence (packed row in varlen, 0 in bshd)
  int64_t k_start = 0;
  int len_q = 0, len_k = 0, used_k = 0;
  int64_t tile_base = 0;  // workspace tile of the sequence's query tile 0
  int group = 1;          // query heads per KV head
  int m_begin = 0, m_end = 0;  // visiting query tiles
  int count = 0;               // group * (m_end - m_begin) iterations
  bool descending = false;     // query tiles from m_end - 1 down (deterministic mode)

  __device__ int head_q(int t) const { return h_kv * group + t / (m_end - m_begin); }
  __device__ int m_block(int t) const {
    const int i = t % (m_end - m_begin);
    return descending ? m_end - 1 - i : m_begin + i;
  }
};

/// Query tiles [m_begin, m_end) of kBlockM rows that see some key of [n0, n0 + rows_used):
/// visible(i, j) needs j - shift - window_right <= i <= j - shift + window_left.
template <int kBlockM>
__device__ inline void visiting_query_tiles(const MaskRule& mask, int len_q, int used_k, int n0,
                                            int rows_used, int* m_begin, int* m_end) {
  const int64_t shift = mask.diagonal_shift(len_q, used_k);
  int64_t i_lo = 0, i_end = rows_used > 0 ? len_q : 0;
  if (mask.window_right >= 0) i_lo = max(int64_t(0), n0 - shift - mask.window_right);
  if (mask.window_left >= 0) {
    i_end = min(i_end, int64_t(n0) + rows_used - 1 - shift + mask.window_left + 1);
  }
  *m_begin = int(i_lo / kBlockM);
  *m_end = i_end > i_lo ? int((i_end + kBlockM - 1) / kBlockM) : *m_begin;
}

template <int kBlockM, int kBlockN>
__device__ inline KeyTileWork key_tile_work(const BwdParams& p, int n_block, int h_kv, int b) {
  KeyTileWork w;
  w.b = b;
  w.h_kv = h_kv;
  w.n_block = n_block;
  w.n0 = n_block * kBlockN;
  const SeqInfo seq = SeqInfo::load(p, b);
  w.q_start = seq.offset_q;
  w.k_start = seq.offset_k;
  w.len_q = seq.len_q;
  w.len_k = seq.len_k;
  w.used_k = seq.used_k;
  w.tile_base = q_tile_base(p, b);
  w.group = p.heads_q / p.heads_kv;
  w.descending = p.deterministic;
  if (w.n0 >= w.len_k) return w;  // no key of this sequence in the tile: nothing at all
  const int rows_used = max(0, min(kBlockN, w.used_k - w.n0));
  visiting_query_tiles<kBlockM>(p.mask, w.len_q, w.used_k, w.n0, rows_used, &w.m_begin,
                                &w.m_end);
  w.count = w.group * (w.m_end - w.m_begin);
  return w;
}

/// Deterministic dQ: how many key tiles add into query tile m before key tile n_block, i.e. the
/// key tiles below n_block whose visiting range contains m (the same function that decides the
/// visits, so the count can never disagree with what runs). Called by the 32 lanes of a warp,
/// which split the key tiles and sum their counts: one lane alone takes about 50 cycles per
/// lower key tile, which at 16k keys (128 tiles) is longer than the consumers' work per visit.
///
/// Why the visits descend: the key tiles of one (KV head, batch entry) that run at the same time
/// add into each query tile one after another, each after the one below it. In ascending order
/// with a causal mask, key tile n's first query tile is one that tile n - 1 reaches only after
/// kBlockN / kBlockM visits, so a chain of k resident tiles waits about k times that many visits
/// before its last tile starts. Descending, every tile's first visit is to the last query tile,
/// which the tile below also visits first: each link of the chain waits for one add to land.
template <int kBlockM, int kBlockN>
__device__ inline int key_tiles_before(const BwdParams& p, const KeyTileWork& w, int m,
                                       int lane) {
  int before = 0;
  for (int n = lane; n < w.n_block; n += 32) {
    const int n0 = n * kBlockN;
    const int rows_used = max(0, min(kBlockN, w.used_k - n0));
    int lo, hi;
    visiting_query_tiles<kBlockM>(p.mask, w.len_q, w.used_k, n0, rows_used, &lo, &hi);
    before += (lo <= m && m < hi) ? 1 : 0;
  }
  return __reduce_add_sync(0xffffffffu, before);
}

struct KeyTileCoord {
  int n_block, h_kv, b;
};

/// Deterministic mode: the key tile of the CTA that took `ticket` (0, 1, ... in the order the
/// CTAs started; one atomicAdd per CTA). Key tiles are dealt in chunks: the first `chunk` key
/// tiles of every (KV head, batch entry), then the next chunk of every pair, and so on; within a
/// chunk the key tiles of one pair are consecutive tickets.
///
/// A CTA only waits for lower key tiles of its own pair (key_tiles_before), and those hold lower
/// tickets, so they were taken by CTAs that are running or done: the waits always end, whatever
/// order the hardware starts CTAs in. The chunks bound the chains of waiting tiles: the tiles of
/// one pair that start together are at most `chunk`, and the chunk below was dealt earlier, so it
/// is ahead. Within a chunk the resident tiles of a pair share each Q/dO tile and each dQ
/// accumulator tile in the L2, as in the atomic mode's order (launch.h picks the chunk).
__device__ inline KeyTileCoord deterministic_tile(int ticket, int n_tiles, int heads_kv,
                                                  int batch, int chunk) {
  const int pairs = heads_kv * batch;
  const int full_chunks = n_tiles / chunk;
  const int full_tickets = full_chunks * chunk * pairs;
  int k, within, width;
  if (ticket < full_tickets) {
    k = ticket / (chunk * pairs);
    within = ticket - k * chunk * pairs;
    width = chunk;
  } else {  // the last, narrower chunk
    k = full_chunks;
    within = ticket - full_tickets;
    width = n_tiles - full_chunks * chunk;
  }
  const int pair = within / width;
  return {k * chunk + within % width, pair % heads_kv, pair / heads_kv};
}

}  // namespace flashlane::sm90::bwd
