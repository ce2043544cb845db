// Checks the hand-written CUDA runtime declarations of cuda_api.h against the real
// headers, where they are installed: compiling this file is the check (CMakeLists.txt
// builds it with every build that finds cuda_runtime_api.h; nothing of it is linked).
// The core itself never includes CUDA headers, so that one build serves every CUDA
// version and machines without CUDA; this catches a wrong type or constant at build time
// instead of on a GPU.
#include <cuda_runtime_api.h>

#include <type_traits>

#include "cuda_api.h"

namespace flash {
namespace {

// A real CUDA type as cuda_api.h spells it: its enums as int, its handles as void*.
template <typename T>
struct Plain {
  using type = T;
};
template <typename T>
struct Plain<T*> {
  using type = typename Plain<T>::type*;
};
template <>
struct Plain<cudaError_t> {
  using type = int;
};
template <>
struct Plain<cudaMemcpyKind> {
  using type = int;
};
template <>
struct Plain<cudaStream_t> {
  using type = cudaStream;
};
template <>
struct Plain<cudaEvent_t> {
  using type = cudaEvent;
};
template <typename R, typename... Args>
struct Plain<R (*)(Args...)> {
  using type = typename Plain<R>::type (*)(typename Plain<Args>::type...);
};

// Passing an int where CUDA takes one of these enums, or a void* for a handle, is the
// same call only if they have the same size and representation.
static_assert(sizeof(cudaError_t) == sizeof(int) && sizeof(cudaMemcpyKind) == sizeof(int),
              "CUDA's enums are no longer int-sized: cuda_api.h's int stand-ins are wrong");
static_assert(sizeof(cudaStream_t) == sizeof(void*) && sizeof(cudaEvent_t) == sizeof(void*),
              "CUDA's stream or event handles are no longer pointers");

// Each slot of CudaApi has the type of the function it is bound to, and the function's
// name is not a macro (a header that renames it, as per-thread default streams do,
// would mean dlsym finds another function than the one compiled against).
#define FLASH_CHECK_CUDA_FUNCTION(slot, function)                                              \
  static_assert(std::is_same<decltype(CudaApi::slot), Plain<decltype(&::function)>::type>::value, \
                "cuda_api.h: CudaApi::" #slot " does not match " #function " in cuda_runtime_api.h");
FLASH_CHECK_CUDA_FUNCTION(SetDevice, cudaSetDevice)
FLASH_CHECK_CUDA_FUNCTION(GetDevice, cudaGetDevice)
FLASH_CHECK_CUDA_FUNCTION(StreamCreateWithFlags, cudaStreamCreateWithFlags)
FLASH_CHECK_CUDA_FUNCTION(StreamDestroy, cudaStreamDestroy)
FLASH_CHECK_CUDA_FUNCTION(StreamSynchronize, cudaStreamSynchronize)
FLASH_CHECK_CUDA_FUNCTION(EventCreateWithFlags, cudaEventCreateWithFlags)
FLASH_CHECK_CUDA_FUNCTION(EventDestroy, cudaEventDestroy)
FLASH_CHECK_CUDA_FUNCTION(EventRecord, cudaEventRecord)
FLASH_CHECK_CUDA_FUNCTION(EventSynchronize, cudaEventSynchronize)
FLASH_CHECK_CUDA_FUNCTION(MemcpyAsync, cudaMemcpyAsync)
FLASH_CHECK_CUDA_FUNCTION(HostAlloc, cudaHostAlloc)
FLASH_CHECK_CUDA_FUNCTION(FreeHost, cudaFreeHost)
FLASH_CHECK_CUDA_FUNCTION(GetErrorString, cudaGetErrorString)
FLASH_CHECK_CUDA_FUNCTION(GetLastError, cudaGetLastError)
#undef FLASH_CHECK_CUDA_FUNCTION

// The struct lists every function above and nothing else (a slot added without a check
// here would go unchecked).
static_assert(sizeof(CudaApi) == 14 * sizeof(void*), "CudaApi gained or lost a slot: check it here too");

#if defined(cudaSetDevice) || defined(cudaGetDevice) || defined(cudaStreamCreateWithFlags) ||         \
    defined(cudaStreamDestroy) || defined(cudaStreamSynchronize) || defined(cudaEventCreateWithFlags) || \
    defined(cudaEventDestroy) || defined(cudaEventRecord) || defined(cudaEventSynchronize) ||            \
    defined(cudaMemcpyAsync) || defined(cudaHostAlloc) || defined(cudaFreeHost) ||                        \
    defined(cudaGetErrorString) || defined(cudaGetLastError)
#error "cuda_runtime_api.h renames a function cuda_api.cpp looks up by its plain name"
#endif

static_assert(cudaSuccess == 0, "cuda_check() takes 0 for success");
static_assert(kMemcpyHostToDevice == cudaMemcpyHostToDevice, "kMemcpyHostToDevice != cudaMemcpyHostToDevice");
static_assert(kStreamNonBlocking == cudaStreamNonBlocking, "kStreamNonBlocking != cudaStreamNonBlocking");
static_assert(kEventDisableTiming == cudaEventDisableTiming, "kEventDisableTiming != cudaEventDisableTiming");
static_assert(kHostAllocPortable == cudaHostAllocPortable, "kHostAllocPortable != cudaHostAllocPortable");

}  // namespace
}  // namespace flash
