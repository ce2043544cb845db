#include "cuda_api.h"

#include <dlfcn.h>
#include <link.h>
#include <pthread.h>

#include <atomic>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <string>

#include "errors.h"

namespace flash {
namespace {

struct Loaded {
  CudaApi api{};
  std::string path;
  std::string error;  // why loading failed, if it did
  bool ok = false;
};

bool is_cudart(const char* path) {  // libcudart.so.12, or a hash-renamed copy (libcudart-1a2b3c4d.so.12)
  const char* base = std::strrchr(path, '/');
  base = base ? base + 1 : path;
  return std::strncmp(base, "libcudart.so", 12) == 0 || std::strncmp(base, "libcudart-", 10) == 0;
}

// Torch's CUDA libraries, which link the runtime torch uses (whatever its file name).
bool is_torch_cuda(const char* path) {
  const char* base = std::strrchr(path, '/');
  base = base ? base + 1 : path;
  return std::strncmp(base, "libc10_cuda.so", 14) == 0 || std::strncmp(base, "libtorch_cuda.so", 16) == 0;
}

struct Mapped {
  std::string torch_cuda;  // the first of torch's CUDA libraries mapped, if any
  std::string cudart;      // the first runtime mapped, if any
};

int find_mapped(struct dl_phdr_info* info, size_t, void* out) {
  auto& m = *static_cast<Mapped*>(out);
  const char* name = info->dlpi_name;
  if (!name || !*name) return 0;
  if (m.torch_cuda.empty() && is_torch_cuda(name)) m.torch_cuda = name;
  if (m.cudart.empty() && is_cudart(name)) m.cudart = name;
  return 0;
}

// The runtime torch's CUDA library resolves cudaGetDevice to: dlsym through its handle
// searches it and its dependencies only, so another runtime mapped first (CuPy's, JAX's)
// is not taken; dladdr names the library (hash-renamed or not) that holds the function.
void* runtime_of(const std::string& torch_cuda, std::string& path, std::string& why) {
  void* torch = dlopen(torch_cuda.c_str(), RTLD_NOW | RTLD_NOLOAD);
  void* fn = torch ? dlsym(torch, "cudaGetDevice") : nullptr;
  Dl_info info{};
  if (!fn || !dladdr(fn, &info) || !info.dli_fname) {
    why = "torch's CUDA library " + torch_cuda + " exports no cudaGetDevice of a runtime it links (a runtime "
          "linked statically); set FLASHTENSORS_CUDART to the libcudart to use";
    return nullptr;
  }
  path = info.dli_fname;
  return dlopen(info.dli_fname, RTLD_NOW | RTLD_NOLOAD);  // the one mapped, never a second copy
}

void* open_runtime(std::string& path, std::string& why) {
  // An explicit override first (used by tests and unusual installs).
  if (const char* env = std::getenv("FLASHTENSORS_CUDART")) {
    path = env;
    return dlopen(env, RTLD_NOW | RTLD_LOCAL);
  }
  Mapped mapped;
  dl_iterate_phdr(find_mapped, &mapped);
  if (!mapped.torch_cuda.empty()) return runtime_of(mapped.torch_cuda, path, why);
  if (!mapped.cudart.empty()) {  // no torch CUDA library: the one runtime somebody mapped
    path = mapped.cudart;
    return dlopen(path.c_str(), RTLD_NOW | RTLD_NOLOAD);
  }
  for (const char* name : {"libcudart.so.13", "libcudart.so.12", "libcudart.so.11.0", "libcudart.so"}) {
    if (void* h = dlopen(name, RTLD_NOW | RTLD_LOCAL)) {
      path = name;
      return h;
    }
  }
  return nullptr;
}

template <typename Fn>
bool bind(void* lib, const char* symbol, Fn& slot, std::string& error) {
  slot = reinterpret_cast<Fn>(dlsym(lib, symbol));
  if (!slot) error = std::string("symbol ") + symbol + " not found in the CUDA runtime";
  return slot != nullptr;
}

Loaded load() {
  Loaded out;
  std::string why;
  void* lib = open_runtime(out.path, why);
  if (!lib) {
    out.error = !why.empty() ? why : "no CUDA runtime (libcudart) could be loaded";
    if (why.empty() && !out.path.empty()) out.error += std::string(" from ") + out.path + ": " + dlerror();
    return out;
  }
  CudaApi& a = out.api;
  out.ok = bind(lib, "cudaSetDevice", a.SetDevice, out.error) &&
           bind(lib, "cudaGetDevice", a.GetDevice, out.error) &&
           bind(lib, "cudaStreamCreateWithFlags", a.StreamCreateWithFlags, out.error) &&
           bind(lib, "cudaStreamDestroy", a.StreamDestroy, out.error) &&
           bind(lib, "cudaStreamSynchronize", a.StreamSynchronize, out.error) &&
           bind(lib, "cudaEventCreateWithFlags", a.EventCreateWithFlags, out.error) &&
           bind(lib, "cudaEventDestroy", a.EventDestroy, out.error) &&
           bind(lib, "cudaEventRecord", a.EventRecord, out.error) &&
           bind(lib, "cudaEventSynchronize", a.EventSynchronize, out.error) &&
           bind(lib, "cudaMemcpyAsync", a.MemcpyAsync, out.error) &&
           bind(lib, "cudaHostAlloc", a.HostAlloc, out.error) &&
           bind(lib, "cudaFreeHost", a.FreeHost, out.error) &&
           bind(lib, "cudaGetErrorString", a.GetErrorString, out.error) &&
           bind(lib, "cudaGetLastError", a.GetLastError, out.error);
  return out;
}

// The runtime, looked up on first use. Not a std::call_once: a child forked while another
// thread was looking it up would wait on that lookup forever. The child starts with a
// fresh lock (a lookup the parent finished stays valid: the library is mapped there too).
std::mutex* lookup_lock = [] {
  pthread_atfork(nullptr, nullptr, [] { lookup_lock = new std::mutex; });  // the old one is left as it was
  return new std::mutex;
}();
std::atomic<const Loaded*> looked_up{nullptr};

const Loaded& loaded() {
  if (const Loaded* l = looked_up.load(std::memory_order_acquire)) return *l;
  std::lock_guard<std::mutex> lock(*lookup_lock);
  if (!looked_up.load(std::memory_order_relaxed)) looked_up.store(new Loaded(load()), std::memory_order_release);
  return *looked_up.load(std::memory_order_relaxed);  // never freed: used until exit
}

}  // namespace

const CudaApi& cuda_api() {
  const Loaded& l = loaded();
  if (!l.ok) throw CudaError(l.error);
  return l.api;
}

bool cuda_runtime_available() { return loaded().ok; }

const char* cuda_runtime_path() { return loaded().ok ? loaded().path.c_str() : ""; }

void cuda_check(int status, const char* what) {
  if (status == 0) return;
  const char* msg = loaded().ok ? loaded().api.GetErrorString(status) : "unknown error";
  throw CudaError(std::string(what) + " failed: " + msg + " (cudaError " + std::to_string(status) + ")");
}

}  // namespace flash
