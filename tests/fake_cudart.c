/* A stand-in CUDA runtime for machines without a GPU: "device" memory is host memory
 * and cudaMemcpyAsync is memcpy. It lets the tests drive the native core's CUDA path
 * (pinned ring, per-thread streams, events, error propagation) on a CPU-only machine.
 * The real path runs on the GPU tests. Built by tests/test_native_cuda_path.py. */
#include <stdlib.h>
#include <string.h>

static int host_allocs = 0, copies = 0, fail_after = -1;

int fake_host_allocs(void) { return __atomic_load_n(&host_allocs, __ATOMIC_SEQ_CST); }
int fake_copies(void) { return __atomic_load_n(&copies, __ATOMIC_SEQ_CST); }  /* workers copy concurrently */
void fake_fail_copies_after(int n) { fail_after = n; }

int cudaSetDevice(int d) { return d == 0 || d == 1 ? 0 : 101; /* two devices; else cudaErrorInvalidDevice */ }
int cudaGetDevice(int* d) { *d = 0; return 0; }
int cudaStreamCreateWithFlags(void** s, unsigned f) { (void)f; *s = malloc(1); return 0; }
int cudaStreamDestroy(void* s) { free(s); return 0; }
int cudaStreamSynchronize(void* s) { (void)s; return 0; }
int cudaEventCreateWithFlags(void** e, unsigned f) { (void)f; *e = malloc(1); return 0; }
int cudaEventDestroy(void* e) { free(e); return 0; }
int cudaEventRecord(void* e, void* s) { (void)e; (void)s; return 0; }
int cudaEventSynchronize(void* e) { (void)e; return 0; }
int cudaMemcpyAsync(void* dst, const void* src, size_t n, int kind, void* s) {
  (void)s;
  if (kind != 1) return 21; /* cudaErrorInvalidMemcpyDirection */
  if (fail_after >= 0 && __atomic_load_n(&copies, __ATOMIC_SEQ_CST) >= fail_after) return 700; /* cudaErrorIllegalAddress */
  memcpy(dst, src, n);
  __atomic_fetch_add(&copies, 1, __ATOMIC_SEQ_CST);
  return 0;
}
int cudaHostAlloc(void** p, size_t n, unsigned f) {
  (void)f;
  __atomic_fetch_add(&host_allocs, 1, __ATOMIC_SEQ_CST);
  return posix_memalign(p, 4096, n) == 0 ? 0 : 2; /* cudaErrorMemoryAllocation */
}
int cudaFreeHost(void* p) { free(p); return 0; }
const char* cudaGetErrorString(int e) { return e == 700 ? "an illegal memory access was encountered" : "fake error"; }
