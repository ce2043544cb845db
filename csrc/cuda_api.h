// The few CUDA runtime functions the loader needs, looked up at run time.
//
// We never link libcudart: the runtime torch's own CUDA library (libc10_cuda) resolves to
// is found in the process, whatever its file name (pip wheels may carry hash-renamed
// copies, libcudart-<hash>.so.12), and never a second runtime beside it; without torch's
// CUDA library, a runtime already mapped, else one dlopen'ed by its usual names. So one
// build of the extension serves every torch/CUDA version and machines without CUDA.
#pragma once
#include <cstddef>

namespace flash {

using cudaStream = void*;
using cudaEvent = void*;

struct CudaApi {
  int (*SetDevice)(int);
  int (*GetDevice)(int*);
  int (*StreamCreateWithFlags)(cudaStream*, unsigned);
  int (*StreamDestroy)(cudaStream);
  int (*StreamSynchronize)(cudaStream);
  int (*EventCreateWithFlags)(cudaEvent*, unsigned);
  int (*EventDestroy)(cudaEvent);
  int (*EventRecord)(cudaEvent, cudaStream);
  int (*EventSynchronize)(cudaEvent);
  int (*MemcpyAsync)(void*, const void*, size_t, int, cudaStream);
  int (*HostAlloc)(void**, size_t, unsigned);
  int (*FreeHost)(void*);
  const char* (*GetErrorString)(int);
  int (*GetLastError)();
};

constexpr int kMemcpyHostToDevice = 1;
constexpr unsigned kStreamNonBlocking = 1;
constexpr unsigned kEventDisableTiming = 2;
constexpr unsigned kHostAllocPortable = 1;  // pinned for every device's context

// The runtime's function table; throws CudaError naming what is missing.
const CudaApi& cuda_api();

// True when a CUDA runtime can be found (does not initialise CUDA).
bool cuda_runtime_available();

// The path of the runtime library in use ("" when none): torch's, as the dynamic linker
// named it.
const char* cuda_runtime_path();

// Throws CudaError("<what>: <cuda message>") when status is not cudaSuccess.
void cuda_check(int status, const char* what);

}  // namespace flash
