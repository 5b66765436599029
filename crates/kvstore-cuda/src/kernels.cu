// kvstore's device kernels, compiled by NVRTC at first use with --fmad=false so that every
// result equals the CPU backend's and the specification's bit for bit (IEEE single precision,
// no contraction, correctly rounded division and square root).
//
// Conventions: grid-stride loops; 16-byte loads and stores (float4) where the element count
// allows (8-byte float2 in the plain reduce, which measured faster), a scalar tail otherwise; every buffer starts at an allocation (256-byte aligned).
// Every formula spells out MXNet's operation order, as the CPU kernels in kvstore-cpu do.

typedef unsigned int u32;
typedef unsigned long long u64;
typedef long long i64;

#define STRIDE_LOOP(i, n) \
  for (u64 i = (u64)blockIdx.x * blockDim.x + threadIdx.x; i < (u64)(n); \
       i += (u64)blockDim.x * gridDim.x)

// The streaming kernels' shape, set by the host at compile time (-D): THREADS per block, each
// thread UNROLL items per chunk.
#ifndef THREADS
#define THREADS 256
#endif
#ifndef UNROLL
#define UNROLL 2
#endif
// STREAMING=1: loads and stores of data touched once carry the evict-first hint.
#if STREAMING
#define LD4(p, i) __ldcs((const float4*)(p) + (i))
#define ST4(p, i, v) __stcs((float4*)(p) + (i), (v))
#define LD1(p, i) __ldcs((p) + (i))
#define ST1(p, i, v) __stcs((p) + (i), (v))
#else
#define LD4(p, i) (((const float4*)(p))[i])
#define ST4(p, i, v) (((float4*)(p))[i] = (v))
#define LD1(p, i) ((p)[i])
#define ST1(p, i, v) ((p)[i] = (v))
#endif

// BODY for every item i < n. Block b takes chunk b of THREADS * UNROLL items (then every
// gridDim-th chunk after: a grid-stride loop over chunks); in round j a thread takes item
// j * THREADS + tid of the chunk, so each round's accesses are coalesced and a thread has
// UNROLL independent items in flight.
#define FOR_ITEMS(i, n, ...)                                                               \
  for (u64 base_ = (u64)blockIdx.x * (THREADS * UNROLL); base_ < (u64)(n);                 \
       base_ += (u64)gridDim.x * (THREADS * UNROLL)) {                                     \
    _Pragma("unroll") for (u32 j_ = 0; j_ < UNROLL; ++j_) {                                \
      u64 i = base_ + j_ * THREADS + threadIdx.x;                                          \
      if (i < (u64)(n)) { __VA_ARGS__ }                                                    \
    }                                                                                      \
  }

// ---------------------------------------------------------------------------------------------
// Reduce (R17): out = ((x0 + x1) + x2) + ..., list order, one rounding per addition.

#define SUM8(T, i)                                                   \
  T acc = x0[i];                                                     \
  if (k > 1) acc = acc + x1[i];                                      \
  if (k > 2) acc = acc + x2[i];                                      \
  if (k > 3) acc = acc + x3[i];                                      \
  if (k > 4) acc = acc + x4[i];                                      \
  if (k > 5) acc = acc + x5[i];                                      \
  if (k > 6) acc = acc + x6[i];                                      \
  if (k > 7) acc = acc + x7[i];

__device__ __forceinline__ float4 operator+(float4 a, float4 b) {
  return make_float4(a.x + b.x, a.y + b.y, a.z + b.z, a.w + b.w);
}

#define INPUTS8                                                                          \
  const float* __restrict__ x0, const float* __restrict__ x1, const float* __restrict__ x2, \
      const float* __restrict__ x3, const float* __restrict__ x4,                          \
      const float* __restrict__ x5, const float* __restrict__ x6,                          \
      const float* __restrict__ x7

#define ARGS8 x0, x1, x2, x3, x4, x5, x6, x7

// The sum of the first K inputs at float4 item i. K is a compile-time constant, so all K
// loads are issued before the first addition (a runtime count would keep them apart).
template <u32 K>
__device__ __forceinline__ float4 sum4(u64 i, INPUTS8) {
  float4 v[K];
  v[0] = LD4(x0, i);
  if (K > 1) v[1 % K] = LD4(x1, i);
  if (K > 2) v[2 % K] = LD4(x2, i);
  if (K > 3) v[3 % K] = LD4(x3, i);
  if (K > 4) v[4 % K] = LD4(x4, i);
  if (K > 5) v[5 % K] = LD4(x5, i);
  if (K > 6) v[6 % K] = LD4(x6, i);
  if (K > 7) v[7 % K] = LD4(x7, i);
  float4 acc = v[0];
#pragma unroll
  for (u32 j = 1; j < K; ++j) acc = acc + v[j];
  return acc;
}

// Calls F<k>(...) for the launch's input count k (1..8): one specialised body per count.
#define DISPATCH_K(F, ...)                    \
  switch (k) {                                \
    case 1: F<1>(__VA_ARGS__); break;         \
    case 2: F<2>(__VA_ARGS__); break;         \
    case 3: F<3>(__VA_ARGS__); break;         \
    case 4: F<4>(__VA_ARGS__); break;         \
    case 5: F<5>(__VA_ARGS__); break;         \
    case 6: F<6>(__VA_ARGS__); break;         \
    case 7: F<7>(__VA_ARGS__); break;         \
    default: F<8>(__VA_ARGS__); break;        \
  }

__device__ __forceinline__ float2 operator+(float2 a, float2 b) {
  return make_float2(a.x + b.x, a.y + b.y);
}

// sum4 at float2 item i. The plain reduce and its pull use 8-byte items: on an H200 at 64 Mi
// f32 and K = 4 they measured 0.4-0.6% faster than float4 items, in every interleaved round
// (tools/gpu/shape_probe.py), and level with torch.compile's Triton kernel, which also moves
// two floats per thread.
template <u32 K>
__device__ __forceinline__ float2 sum2(u64 i, INPUTS8) {
  float2 v[K];
  v[0] = ((const float2*)x0)[i];
  if (K > 1) v[1 % K] = ((const float2*)x1)[i];
  if (K > 2) v[2 % K] = ((const float2*)x2)[i];
  if (K > 3) v[3 % K] = ((const float2*)x3)[i];
  if (K > 4) v[4 % K] = ((const float2*)x4)[i];
  if (K > 5) v[5 % K] = ((const float2*)x5)[i];
  if (K > 6) v[6 % K] = ((const float2*)x6)[i];
  if (K > 7) v[7 % K] = ((const float2*)x7)[i];
  float2 acc = v[0];
#pragma unroll
  for (u32 j = 1; j < K; ++j) acc = acc + v[j];
  return acc;
}

// out = sum of the first k (1..8) inputs. Unused input slots repeat x0 and are not read.
template <u32 K>
__device__ __forceinline__ void reduce_items(float* __restrict__ out, u64 n2, INPUTS8) {
  FOR_ITEMS(i, n2, ((float2*)out)[i] = sum2<K>(i, ARGS8);)
}

// The host launches one thread per float2 item (n / 2 items, a chunk per block).
extern "C" __global__ void reduce8(float* __restrict__ out, u64 n, u32 k, INPUTS8) {
  u64 n2 = n / 2;
  DISPATCH_K(reduce_items, out, n2, ARGS8)
  STRIDE_LOOP(t, n - n2 * 2) {
    u64 i = n2 * 2 + t;
    SUM8(float, i)
    out[i] = acc;
  }
}

// pushpull without an updater: the sum becomes the value and is pulled in the same pass.
template <u32 K>
__device__ __forceinline__ void reduce_pull_items(float* __restrict__ out,
                                                  float* __restrict__ pulled, u64 n2, INPUTS8) {
  FOR_ITEMS(i, n2, float2 acc = sum2<K>(i, ARGS8); ((float2*)out)[i] = acc;
            ((float2*)pulled)[i] = acc;)
}

// Launched as reduce8: one thread per float2 item.
extern "C" __global__ void reduce8_pull(float* __restrict__ out, float* __restrict__ pulled, u64 n,
                                        u32 k, INPUTS8) {
  u64 n2 = n / 2;
  DISPATCH_K(reduce_pull_items, out, pulled, n2, ARGS8)
  STRIDE_LOOP(t, n - n2 * 2) {
    u64 i = n2 * 2 + t;
    SUM8(float, i)
    out[i] = acc;
    pulled[i] = acc;
  }
}

// out = ((out + x0) + x1) + ...: the continuation of a sum of more than eight inputs.
extern "C" __global__ void accumulate8(float* __restrict__ out, u64 n, u32 k, INPUTS8) {
  STRIDE_LOOP(i, n) {
    float acc = out[i];
    acc = acc + x0[i];
    if (k > 1) acc = acc + x1[i];
    if (k > 2) acc = acc + x2[i];
    if (k > 3) acc = acc + x3[i];
    if (k > 4) acc = acc + x4[i];
    if (k > 5) acc = acc + x5[i];
    if (k > 6) acc = acc + x6[i];
    if (k > 7) acc = acc + x7[i];
    out[i] = acc;
  }
}

// ---------------------------------------------------------------------------------------------
// Gradient compression (R38-R41). One thread per output byte: 4 elements (2-bit) or 8 (1-bit).
// Byte b of the little-endian word stream holds elements 4b..4b+3 (2-bit; the first in the two
// most significant bits) or 8b..8b+7 (1-bit; the first in the most significant bit).

__device__ __forceinline__ u32 code2(float& r, float g, float t) {
  r = r + g;
  if (r >= t) {
    r = r - t;
    return 3u;
  } else if (r <= -t) {
    r = r + t;
    return 2u;
  }
  return 0u;
}

__device__ __forceinline__ u32 code1(float& r, float g, float t) {
  r = r + g;
  if (r > t) {
    r = r - 1.0f;
    return 1u;
  }
  r = r + 1.0f;
  return 0u;
}

extern "C" __global__ void quantize_2bit(const float* __restrict__ g, float* __restrict__ r,
                                         unsigned char* __restrict__ bytes, u64 n, u64 nbytes,
                                         float t) {
  FOR_ITEMS(b, nbytes, {
    u64 e = b * 4;
    u32 byte = 0;
    if (e + 4 <= n) {
      float4 gv = LD4(g, b);
      float4 rv = LD4(r, b);
      byte = (code2(rv.x, gv.x, t) << 6) | (code2(rv.y, gv.y, t) << 4) |
             (code2(rv.z, gv.z, t) << 2) | code2(rv.w, gv.w, t);
      ST4(r, b, rv);
    } else {
      for (u32 j = 0; j < 4; ++j) {
        if (e + j < n) {
          float rr = r[e + j];
          byte |= code2(rr, g[e + j], t) << (6 - 2 * j);
          r[e + j] = rr;
        }
      }
    }
    ST1(bytes, b, (unsigned char)byte);
  })
}

extern "C" __global__ void quantize_1bit(const float* __restrict__ g, float* __restrict__ r,
                                         unsigned char* __restrict__ bytes, u64 n, u64 nbytes,
                                         float t) {
  FOR_ITEMS(b, nbytes, {
    u64 e = b * 8;
    u32 byte = 0;
    if (e + 8 <= n) {
      float4 g0 = LD4(g, 2 * b), g1 = LD4(g, 2 * b + 1);
      float4 r0 = LD4(r, 2 * b), r1 = LD4(r, 2 * b + 1);
      byte = (code1(r0.x, g0.x, t) << 7) | (code1(r0.y, g0.y, t) << 6) |
             (code1(r0.z, g0.z, t) << 5) | (code1(r0.w, g0.w, t) << 4) |
             (code1(r1.x, g1.x, t) << 3) | (code1(r1.y, g1.y, t) << 2) |
             (code1(r1.z, g1.z, t) << 1) | code1(r1.w, g1.w, t);
      ST4(r, 2 * b, r0);
      ST4(r, 2 * b + 1, r1);
    } else {
      for (u32 j = 0; j < 8; ++j) {
        if (e + j < n) {
          float rr = r[e + j];
          byte |= code1(rr, g[e + j], t) << (7 - j);
          r[e + j] = rr;
        }
      }
    }
    ST1(bytes, b, (unsigned char)byte);
  })
}

__device__ __forceinline__ float value2(u32 code, float t) {
  return code == 3u ? t : (code == 2u ? -t : 0.0f);
}

__device__ __forceinline__ float value1(u32 bit) { return bit ? 1.0f : -1.0f; }

// out = decode(bytes) (accumulate = 0) or out = out + decode(bytes) (accumulate = 1). The
// flag is a template parameter of the body, so the load of `out` is issued with the code's.
template <bool ACC>
__device__ __forceinline__ void dequantize_2bit_items(const unsigned char* __restrict__ bytes,
                                                      float* __restrict__ out, u64 n, float t) {
  u64 nb = (n + 3) / 4;
  FOR_ITEMS(b, nb, {
    u64 e = b * 4;
    if (e + 4 <= n) {
      float4 o = ACC ? LD4(out, b) : make_float4(0.f, 0.f, 0.f, 0.f);
      u32 byte = LD1(bytes, b);
      float4 v = make_float4(value2((byte >> 6) & 3u, t), value2((byte >> 4) & 3u, t),
                             value2((byte >> 2) & 3u, t), value2(byte & 3u, t));
      ST4(out, b, ACC ? o + v : v);
    } else {
      u32 byte = LD1(bytes, b);
      for (u32 j = 0; e + j < n; ++j) {
        float v = value2((byte >> (6 - 2 * j)) & 3u, t);
        out[e + j] = ACC ? out[e + j] + v : v;
      }
    }
  })
}

extern "C" __global__ void dequantize_2bit(const unsigned char* __restrict__ bytes,
                                           float* __restrict__ out, u64 n, float t,
                                           u32 accumulate) {
  if (accumulate) dequantize_2bit_items<true>(bytes, out, n, t);
  else dequantize_2bit_items<false>(bytes, out, n, t);
}

template <bool ACC>
__device__ __forceinline__ void dequantize_1bit_items(const unsigned char* __restrict__ bytes,
                                                      float* __restrict__ out, u64 n) {
  u64 nb = (n + 7) / 8;
  FOR_ITEMS(b, nb, {
    u64 e = b * 8;
    if (e + 8 <= n) {
      float4 o0 = ACC ? LD4(out, 2 * b) : make_float4(0.f, 0.f, 0.f, 0.f);
      float4 o1 = ACC ? LD4(out, 2 * b + 1) : make_float4(0.f, 0.f, 0.f, 0.f);
      u32 byte = LD1(bytes, b);
      float4 v0 = make_float4(value1((byte >> 7) & 1u), value1((byte >> 6) & 1u),
                              value1((byte >> 5) & 1u), value1((byte >> 4) & 1u));
      float4 v1 = make_float4(value1((byte >> 3) & 1u), value1((byte >> 2) & 1u),
                              value1((byte >> 1) & 1u), value1(byte & 1u));
      ST4(out, 2 * b, ACC ? o0 + v0 : v0);
      ST4(out, 2 * b + 1, ACC ? o1 + v1 : v1);
    } else {
      u32 byte = LD1(bytes, b);
      for (u32 j = 0; e + j < n; ++j) {
        float v = value1((byte >> (7 - j)) & 1u);
        out[e + j] = ACC ? out[e + j] + v : v;
      }
    }
  })
}

extern "C" __global__ void dequantize_1bit(const unsigned char* __restrict__ bytes,
                                           float* __restrict__ out, u64 n, u32 accumulate) {
  if (accumulate) dequantize_1bit_items<true>(bytes, out, n);
  else dequantize_1bit_items<false>(bytes, out, n);
}

// ---------------------------------------------------------------------------------------------
// Rows (R30-R32, R17 for row_sparse sums). `pos[k]` is the row of `table` that output row k
// copies, or -1 for a row of zeros (a row_sparse value that does not hold it).

extern "C" __global__ void gather_rows(const float* table, const i64* pos, float* out, u64 nrows,
                                       u64 row_len) {
  if (row_len % 4 == 0) {
    u64 q = row_len / 4;
    const float4* t4 = (const float4*)table;
    float4* o4 = (float4*)out;
    STRIDE_LOOP(i, nrows * q) {
      u64 k = i / q, c = i - k * q;
      i64 p = pos[k];
      o4[i] = p < 0 ? make_float4(0.f, 0.f, 0.f, 0.f) : t4[(u64)p * q + c];
    }
  } else {
    STRIDE_LOOP(i, nrows * row_len) {
      u64 k = i / row_len, c = i - k * row_len;
      i64 p = pos[k];
      out[i] = p < 0 ? 0.0f : table[(u64)p * row_len + c];
    }
  }
}

// For each wanted id, its index in the sorted list `have`, or -1.
extern "C" __global__ void locate_rows(const i64* have, u64 nhave, const i64* want, u64 nwant,
                                       i64* pos) {
  STRIDE_LOOP(k, nwant) {
    i64 id = want[k];
    u64 lo = 0, hi = nhave;
    while (lo < hi) {
      u64 mid = (lo + hi) / 2;
      if (have[mid] < id) lo = mid + 1; else hi = mid;
    }
    pos[k] = (lo < nhave && have[lo] == id) ? (i64)lo : -1;
  }
}

// out[pos[k]] = out[pos[k]] + rows[k] (accumulate = 1) or out[pos[k]] = rows[k] (0). The ids of
// one launch are distinct, so no two threads write one element; launches in list order give
// the sum's order.
extern "C" __global__ void scatter_rows(float* out, const i64* pos, const float* rows, u64 nrows,
                                        u64 row_len, u32 accumulate) {
  STRIDE_LOOP(i, nrows * row_len) {
    u64 k = i / row_len, c = i - k * row_len;
    u64 at = (u64)pos[k] * row_len + c;
    out[at] = accumulate ? out[at] + rows[i] : rows[i];
  }
}

// ---------------------------------------------------------------------------------------------
// Id sort and dedup (R31): ids -> a bitmap over the table's rows -> the sorted unique ids.
// bad counts ids outside [0, rows).

extern "C" __global__ void mark_ids(const i64* ids, u64 n, u32* bitmap, u64 rows, u32* bad) {
  STRIDE_LOOP(k, n) {
    i64 id = ids[k];
    if (id < 0 || (u64)id >= rows) {
      atomicAdd(bad, 1u);
    } else {
      atomicOr(&bitmap[(u64)id >> 5], 1u << ((u64)id & 31u));
    }
  }
}

#define SCAN_THREADS 256
#define WORDS_PER_THREAD 8
#define WORDS_PER_BLOCK (SCAN_THREADS * WORDS_PER_THREAD)

// Exclusive prefix sum of one value per thread of a SCAN_THREADS block; returns the block total.
__device__ u32 block_exclusive_scan(u32 v, u32* out) {
  __shared__ u32 s[SCAN_THREADS];
  u32 tid = threadIdx.x;
  s[tid] = v;
  __syncthreads();
  for (u32 off = 1; off < SCAN_THREADS; off <<= 1) {
    u32 add = tid >= off ? s[tid - off] : 0u;
    __syncthreads();
    s[tid] += add;
    __syncthreads();
  }
  u32 total = s[SCAN_THREADS - 1];
  *out = s[tid] - v;
  __syncthreads();
  return total;
}

// block_counts[b] = the number of set bits in block b's WORDS_PER_BLOCK words.
extern "C" __global__ void count_bits(const u32* bitmap, u64 nwords, u32* block_counts) {
  u64 base = (u64)blockIdx.x * WORDS_PER_BLOCK + (u64)threadIdx.x * WORDS_PER_THREAD;
  u32 c = 0;
  for (u32 j = 0; j < WORDS_PER_THREAD; ++j) {
    if (base + j < nwords) c += __popc(bitmap[base + j]);
  }
  u32 ignored;
  u32 total = block_exclusive_scan(c, &ignored);
  if (threadIdx.x == 0) block_counts[blockIdx.x] = total;
}

// One block: block_counts becomes its exclusive prefix sum; total[0] the sum.
extern "C" __global__ void scan_counts(u32* block_counts, u64 nblocks, u32* total) {
  u32 carry = 0;
  for (u64 start = 0; start < nblocks; start += SCAN_THREADS) {
    u64 i = start + threadIdx.x;
    u32 v = i < nblocks ? block_counts[i] : 0u;
    u32 before;
    u32 sum = block_exclusive_scan(v, &before);
    if (i < nblocks) block_counts[i] = carry + before;
    carry += sum;
  }
  if (threadIdx.x == 0) total[0] = carry;
}

// Writes the set bits' row numbers in increasing order, from each block's offset.
extern "C" __global__ void emit_ids(const u32* bitmap, u64 nwords, const u32* block_offsets,
                                    i64* out) {
  u64 base = (u64)blockIdx.x * WORDS_PER_BLOCK + (u64)threadIdx.x * WORDS_PER_THREAD;
  u32 c = 0;
  for (u32 j = 0; j < WORDS_PER_THREAD; ++j) {
    if (base + j < nwords) c += __popc(bitmap[base + j]);
  }
  u32 before;
  block_exclusive_scan(c, &before);
  u64 at = (u64)block_offsets[blockIdx.x] + before;
  for (u32 j = 0; j < WORDS_PER_THREAD; ++j) {
    if (base + j >= nwords) break;
    u32 w = bitmap[base + j];
    while (w) {
      u32 bit = __ffs(w) - 1;
      out[at++] = (i64)((base + j) * 32 + bit);
      w &= w - 1;
    }
  }
}

// ---------------------------------------------------------------------------------------------
// SGD (R45, R46): MXNet's kernel order, as kvstore-cpu's sgd.rs.
struct Sgd {
  float lr, lr_rescale, rescale, clip, lr_wd, decay, mu;
  u32 has_clip;
};

__device__ __forceinline__ float clamp_keep_nan(float x, float lo, float hi) {
  x = x < lo ? lo : x;
  return x > hi ? hi : x;
}

__device__ __forceinline__ float sgd_step(const Sgd& p, float g) {
  return p.has_clip ? p.lr * clamp_keep_nan(p.rescale * g, -p.clip, p.clip) : p.lr_rescale * g;
}

// Dense gradient, no momentum: w += -(lr*wd*w) - lr*g'.
__device__ __forceinline__ void sgd_plain(const Sgd& p, float& w, float g) {
  w = w + (-(p.lr_wd * w) - sgd_step(p, g));
}
// Row_sparse gradient, no momentum: w = (1 - lr*wd)*w - lr*g'.
__device__ __forceinline__ void sgd_sparse(const Sgd& p, float& w, float g) {
  w = p.decay * w - sgd_step(p, g);
}
__device__ __forceinline__ void sgd_momentum(const Sgd& p, float& w, float& m, float g) {
  m = (p.mu * m - p.lr_wd * w) - sgd_step(p, g);
  w = w + m;
}

extern "C" __global__ void sgd_dense(Sgd p, float* w, const float* g, u64 n) {
  STRIDE_LOOP(i, n) {
    float x = w[i];
    sgd_plain(p, x, g[i]);
    w[i] = x;
  }
}

extern "C" __global__ void sgd_dense_momentum(Sgd p, float* w, float* m, const float* g, u64 n) {
  STRIDE_LOOP(i, n) {
    float x = w[i], y = m[i];
    sgd_momentum(p, x, y, g[i]);
    w[i] = x;
    m[i] = y;
  }
}

extern "C" __global__ void sgd_rows(Sgd p, float* w, const i64* ids, const float* rows, u64 nrows,
                                    u64 row_len) {
  STRIDE_LOOP(i, nrows * row_len) {
    u64 k = i / row_len, c = i - k * row_len;
    u64 at = (u64)ids[k] * row_len + c;
    float x = w[at];
    sgd_sparse(p, x, rows[i]);
    w[at] = x;
  }
}

extern "C" __global__ void sgd_rows_momentum(Sgd p, float* w, float* m, const i64* ids,
                                             const float* rows, u64 nrows, u64 row_len) {
  STRIDE_LOOP(i, nrows * row_len) {
    u64 k = i / row_len, c = i - k * row_len;
    u64 at = (u64)ids[k] * row_len + c;
    float x = w[at], y = m[at];
    sgd_momentum(p, x, y, rows[i]);
    w[at] = x;
    m[at] = y;
  }
}

// The merge fused with the update: the sum of k (1..8) gradients, then the dense SGD step, in
// one pass (the sum is the one reduce8 computes).
template <u32 K>
__device__ __forceinline__ void reduce_sgd_items(const Sgd& p, float* __restrict__ w,
                                                 float* __restrict__ m, u32 has_momentum,
                                                 u64 n4, INPUTS8) {
  FOR_ITEMS(i, n4, {
    float4 acc = sum4<K>(i, ARGS8);
    float4 x = ((float4*)w)[i];
    if (has_momentum) {
      float4 y = ((float4*)m)[i];
      sgd_momentum(p, x.x, y.x, acc.x);
      sgd_momentum(p, x.y, y.y, acc.y);
      sgd_momentum(p, x.z, y.z, acc.z);
      sgd_momentum(p, x.w, y.w, acc.w);
      ((float4*)m)[i] = y;
    } else {
      sgd_plain(p, x.x, acc.x);
      sgd_plain(p, x.y, acc.y);
      sgd_plain(p, x.z, acc.z);
      sgd_plain(p, x.w, acc.w);
    }
    ((float4*)w)[i] = x;
  })
}

extern "C" __global__ void reduce8_sgd(Sgd p, float* __restrict__ w, float* __restrict__ m,
                                       u32 has_momentum, u64 n, u32 k, INPUTS8) {
  u64 n4 = n / 4;
  DISPATCH_K(reduce_sgd_items, p, w, m, has_momentum, n4, ARGS8)
  STRIDE_LOOP(t, n - n4 * 4) {
    u64 i = n4 * 4 + t;
    SUM8(float, i)
    float x = w[i];
    if (has_momentum) {
      float y = m[i];
      sgd_momentum(p, x, y, acc);
      m[i] = y;
    } else {
      sgd_plain(p, x, acc);
    }
    w[i] = x;
  }
}

// ---------------------------------------------------------------------------------------------
// Adam (R73): MXNet's kernel order, as kvstore-cpu's adam.rs.
struct Adam {
  float lr, wd, rescale, clip, b1, b2, one_b1, one_b2, eps;
};

__device__ __forceinline__ float clip_bound(float x, float c) {
  return x > c ? c : (x < -c ? -c : x);
}

template <bool SQUARE_FIRST>
__device__ __forceinline__ void adam_step(const Adam& p, float& w, float gr, float& mean,
                                          float& var) {
  gr = clip_bound(gr, p.clip);
  mean = p.b1 * mean + p.one_b1 * gr;
  var = SQUARE_FIRST ? p.b2 * var + p.one_b2 * (gr * gr) : p.b2 * var + (p.one_b2 * gr) * gr;
  w = w - (p.lr * mean) / (sqrtf(var) + p.eps);
}

__device__ __forceinline__ float adam_present(const Adam& p, float w, float g) {
  return g * p.rescale + w * p.wd;
}

extern "C" __global__ void adam_dense(Adam p, float* w, const float* g, float* mean, float* var,
                                      u64 n) {
  STRIDE_LOOP(i, n) {
    float x = w[i], m = mean[i], v = var[i];
    adam_step<false>(p, x, adam_present(p, x, g[i]), m, v);
    w[i] = x;
    mean[i] = m;
    var[i] = v;
  }
}

// Lazy update: only the gradient's rows. square_first: MXNet's sparse kernel with clipping.
extern "C" __global__ void adam_rows_lazy(Adam p, u32 square_first, float* w, const i64* ids,
                                          const float* rows, float* mean, float* var, u64 nrows,
                                          u64 row_len) {
  STRIDE_LOOP(i, nrows * row_len) {
    u64 k = i / row_len, c = i - k * row_len;
    u64 at = (u64)ids[k] * row_len + c;
    float x = w[at], m = mean[at], v = var[at];
    float gr = adam_present(p, x, rows[i]);
    if (square_first) adam_step<true>(p, x, gr, m, v); else adam_step<false>(p, x, gr, m, v);
    w[at] = x;
    mean[at] = m;
    var[at] = v;
  }
}

// Every row: rows the gradient holds (`pos[r]` >= 0, its index in `rows`) step with it, the
// others with the weight decay alone. Squares first, as MXNet's non-lazy sparse kernel.
extern "C" __global__ void adam_rows_all(Adam p, float* w, const i64* pos, const float* rows,
                                         float* mean, float* var, u64 wrows, u64 row_len) {
  STRIDE_LOOP(i, wrows * row_len) {
    u64 r = i / row_len, c = i - r * row_len;
    i64 k = pos[r];
    float x = w[i], m = mean[i], v = var[i];
    float gr = k >= 0 ? adam_present(p, x, rows[(u64)k * row_len + c]) : x * p.wd;
    adam_step<true>(p, x, gr, m, v);
    w[i] = x;
    mean[i] = m;
    var[i] = v;
  }
}

// The merge fused with a dense Adam step.
template <u32 K>
__device__ __forceinline__ void reduce_adam_items(const Adam& p, float* __restrict__ w,
                                                  float* __restrict__ mean,
                                                  float* __restrict__ var, u64 n4, INPUTS8) {
  FOR_ITEMS(i, n4, {
    float4 acc = sum4<K>(i, ARGS8);
    float4 x = ((float4*)w)[i], m = ((float4*)mean)[i], v = ((float4*)var)[i];
    adam_step<false>(p, x.x, adam_present(p, x.x, acc.x), m.x, v.x);
    adam_step<false>(p, x.y, adam_present(p, x.y, acc.y), m.y, v.y);
    adam_step<false>(p, x.z, adam_present(p, x.z, acc.z), m.z, v.z);
    adam_step<false>(p, x.w, adam_present(p, x.w, acc.w), m.w, v.w);
    ((float4*)w)[i] = x;
    ((float4*)mean)[i] = m;
    ((float4*)var)[i] = v;
  })
}

extern "C" __global__ void reduce8_adam(Adam p, float* __restrict__ w, float* __restrict__ mean,
                                        float* __restrict__ var, u64 n, u32 k, INPUTS8) {
  u64 n4 = n / 4;
  DISPATCH_K(reduce_adam_items, p, w, mean, var, n4, ARGS8)
  STRIDE_LOOP(t, n - n4 * 4) {
    u64 i = n4 * 4 + t;
    SUM8(float, i)
    float x = w[i], m = mean[i], v = var[i];
    adam_step<false>(p, x, adam_present(p, x, acc), m, v);
    w[i] = x;
    mean[i] = m;
    var[i] = v;
  }
}
