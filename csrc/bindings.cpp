// The Python module flashtensors._C: the only file that knows about Python.
// Plans arrive as lists of tuples of plain integers (addresses included), so the
// core never sees a torch object and never links libtorch.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <tuple>

#include "crc32c.h"
#include "cuda_api.h"
#include "errors.h"
#include "loader.h"
#include "pinned_pool.h"

namespace py = pybind11;
using OpTuple = std::tuple<uint32_t, uint64_t, uint64_t, uint64_t, int32_t>;

namespace {

std::vector<flash::ReadOp> to_ops(const std::vector<OpTuple>& tuples) {
  std::vector<flash::ReadOp> ops;
  ops.reserve(tuples.size());
  for (const auto& t : tuples)
    ops.push_back({std::get<0>(t), std::get<1>(t), std::get<2>(t), std::get<3>(t), std::get<4>(t)});
  return ops;
}

flash::IoMode parse_io(const std::string& io) {
  if (io == "auto") return flash::IoMode::Auto;
  if (io == "buffered") return flash::IoMode::Buffered;
  if (io == "direct") return flash::IoMode::Direct;
  throw std::invalid_argument("io must be 'auto', 'buffered' or 'direct', not '" + io + "'");
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "flashtensors native core: plan execution, checksums, CUDA runtime lookup.";
  // Read failures surface as OSError subclasses, CUDA failures as RuntimeError ones.
  py::register_exception<flash::IoError>(m, "IoError", PyExc_OSError);
  py::register_exception<flash::CudaError>(m, "CudaError", PyExc_RuntimeError);

  m.def(
      "execute_plan",
      [](const std::vector<std::string>& paths, const std::vector<OpTuple>& ops, int threads,
         uint64_t chunk_bytes, const std::string& io) {
        flash::LoadOptions options;
        options.threads = threads;
        options.chunk_bytes = chunk_bytes;
        options.io = parse_io(io);
        auto plan = to_ops(ops);
        py::gil_scoped_release nogil;
        flash::execute_plan(paths, plan, options);
      },
      py::arg("paths"), py::arg("ops"), py::arg("threads"), py::arg("chunk_bytes"), py::arg("io") = "auto",
      "Read each (file, offset, length, dest_address, device) op; device -1 is host memory.");

  m.def(
      "checksum_ranges",
      [](const std::vector<std::string>& paths, const std::vector<std::tuple<uint32_t, uint64_t, uint64_t>>& ranges,
         int threads) {
        std::vector<flash::ReadOp> ops;
        ops.reserve(ranges.size());
        for (const auto& r : ranges) ops.push_back({std::get<0>(r), std::get<1>(r), std::get<2>(r), 0, -1});
        py::gil_scoped_release nogil;
        return flash::checksum_ranges(paths, ops, threads);
      },
      py::arg("paths"), py::arg("ranges"), py::arg("threads"),
      "CRC-32C of each (file, offset, length) range.");

  m.def(
      "crc32c",
      [](uint64_t address, uint64_t length, uint32_t crc) {
        py::gil_scoped_release nogil;
        return flash::crc32c_extend(crc, reinterpret_cast<const void*>(address), length);
      },
      py::arg("address"), py::arg("length"), py::arg("crc") = 0,
      "CRC-32C of `length` bytes of host memory at `address`, extending `crc`.");

  m.def(
      "resident_fraction",
      [](const std::string& path) {
        flash::DataFile file(path, flash::IoMode::Auto);
        return file.resident_fraction(0, file.size());
      },
      py::arg("path"), "Fraction of the file's pages in the page cache (1.0 where it cannot be told).");

  m.def("cuda_runtime_available", &flash::cuda_runtime_available,
        "Whether a CUDA runtime can be loaded (does not initialise CUDA).");
  m.def("cuda_runtime_path", &flash::cuda_runtime_path, "The CUDA runtime library in use, or ''.");
  m.def(
      "pinned_bytes", [] { return flash::PinnedPool::instance().pinned_bytes(); },
      "Bytes of pinned staging memory held by this process.");
  m.def(
      "release_pinned", [] { flash::PinnedPool::instance().trim(); },
      "Free the idle pinned staging buffers.");
}
