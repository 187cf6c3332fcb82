// Thread-block clusters (sm_90): a block's rank in its cluster, stores into another block's shared
// memory (distributed shared memory), and the cluster-wide barrier.
//
// A store into a peer block's shared memory goes through the generic proxy, like an ordinary
// shared store: the peer's warpgroup MMAs (wgmma.cuh) read such bytes only after a cluster barrier
// and then a proxy fence in the peer block (wgmma::fence_proxy_async(): the fence belongs in the
// block whose async proxy reads them). The barrier here is the
// arrive.release / wait.acquire pair, so every store a thread made before it is visible to every
// thread of the cluster after it; it also synchronises the block's own threads. A block must not
// exit while a peer may still store into or read its shared memory: the last cluster barrier comes
// after the last such access. Everything here compiles to a trap before sm_90.
#pragma once

#include <cstdint>

namespace prime::kernels::detail::cluster {

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define PRIME_CLUSTER_ENABLED 1
#else
#define PRIME_CLUSTER_ENABLED 0
#endif

// This block's rank in its cluster (0 .. cluster size - 1).
__device__ __forceinline__ int rank() {
#if PRIME_CLUSTER_ENABLED
  uint32_t value;
  asm volatile("mov.u32 %0, %%cluster_ctarank;\n" : "=r"(value));
  return static_cast<int>(value);
#else
  __trap();
  return 0;
#endif
}

// The shared::cluster address of the byte at `local` (this block's shared memory) in block `peer`'s
// shared memory: the same offset in the peer's window.
__device__ __forceinline__ uint32_t peer_address(const void* local, int peer) {
#if PRIME_CLUSTER_ENABLED
  const uint32_t at = static_cast<uint32_t>(__cvta_generic_to_shared(local));
  uint32_t remote;
  asm volatile("mapa.shared::cluster.u32 %0, %1, %2;\n" : "=r"(remote) : "r"(at), "r"(peer));
  return remote;
#else
  (void)local;
  (void)peer;
  __trap();
  return 0;
#endif
}

// 4 and 16 bytes into a peer block's shared memory (a peer_address, plus a byte offset).
__device__ __forceinline__ void store(uint32_t remote, uint32_t value) {
#if PRIME_CLUSTER_ENABLED
  asm volatile("st.shared::cluster.u32 [%0], %1;\n" ::"r"(remote), "r"(value) : "memory");
#else
  (void)remote;
  (void)value;
  __trap();
#endif
}
__device__ __forceinline__ void store(uint32_t remote, float4 value) {
#if PRIME_CLUSTER_ENABLED
  asm volatile("st.shared::cluster.v4.f32 [%0], {%1, %2, %3, %4};\n" ::"r"(remote), "f"(value.x), "f"(value.y),
               "f"(value.z), "f"(value.w)
               : "memory");
#else
  (void)remote;
  (void)value;
  __trap();
#endif
}

// Every thread of every block of the cluster (all of them call it, warp by warp together).
__device__ __forceinline__ void sync() {
#if PRIME_CLUSTER_ENABLED
  asm volatile(
      "barrier.cluster.arrive.release.aligned;\n"
      "barrier.cluster.wait.acquire.aligned;\n" ::
          : "memory");
#else
  __trap();
#endif
}

}  // namespace prime::kernels::detail::cluster
