#include "cuda_api.h"

#include <dlfcn.h>
#include <link.h>

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

// Finds a libcudart already mapped into the process (the one torch loaded).
int find_loaded_cudart(struct dl_phdr_info* info, size_t, void* out) {
  const char* name = info->dlpi_name;
  if (name && std::strstr(name, "libcudart.so")) {
    *static_cast<std::string*>(out) = name;
    return 1;
  }
  return 0;
}

void* open_runtime(std::string& path) {
  // An explicit override first (used by tests and unusual installs).
  if (const char* env = std::getenv("FLASHTENSORS_CUDART")) {
    path = env;
    return dlopen(env, RTLD_NOW | RTLD_LOCAL);
  }
  std::string loaded;
  dl_iterate_phdr(find_loaded_cudart, &loaded);
  if (!loaded.empty()) {
    path = loaded;
    return dlopen(loaded.c_str(), RTLD_NOW | RTLD_NOLOAD);
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
  void* lib = open_runtime(out.path);
  if (!lib) {
    out.error = "no CUDA runtime (libcudart) could be loaded";
    if (!out.path.empty()) out.error += std::string(" from ") + out.path + ": " + dlerror();
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

const Loaded& loaded() {
  static std::once_flag once;
  static Loaded state;
  std::call_once(once, [] { state = load(); });
  return state;
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
