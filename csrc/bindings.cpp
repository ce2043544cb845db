// The Python module flashtensors._C: the only file that knows about Python.
// Plans arrive as lists of tuples of plain integers (addresses included), so the
// core never sees a torch object and never links libtorch.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <map>
#include <optional>
#include <string_view>
#include <tuple>

#include "crc32c.h"
#include "cuda_api.h"
#include "data_file.h"
#include "errors.h"
#include "file_tee.h"
#include "flash_index.h"
#include "http_protocol.h"
#include "hf_weight_index.h"
#include "host_memory.h"
#include "http_source.h"
#include "load_plan.h"
#include "loader.h"
#include "origin_credentials.h"
#include "pinned_pool.h"
#include "region_writer.h"
#include "safetensors_header.h"

namespace py = pybind11;
using OpTuple = std::tuple<uint32_t, uint64_t, uint64_t, uint64_t, int32_t>;
using TeeList = std::optional<std::vector<std::shared_ptr<flash::FileTee>>>;
using flash::LoadPlan;
using flash::TensorTable;

namespace {

// Names are stored as UTF-8, with escaped lone surrogates kept as WTF-8, which
// "surrogatepass" turns back into the str Python's json would have given.
py::str to_str(std::string_view s) {
  PyObject* o = PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "surrogatepass");
  if (!o) throw py::error_already_set();
  return py::reinterpret_steal<py::str>(o);
}

// Memory kept alive by tensors: a reference to a Python object, dropped under the GIL
// whichever thread frees the last tensor.
std::shared_ptr<void> python_owner(const py::object& obj) {
  PyObject* o = obj.inc_ref().ptr();
  return std::shared_ptr<void>(o, [](void* p) {
    if (!Py_IsInitialized()) return;  // the interpreter is gone, and with it the object
    PyGILState_STATE state = PyGILState_Ensure();
    Py_DECREF(static_cast<PyObject*>(p));
    PyGILState_Release(state);
  });
}

flash::Memory to_memory(const std::tuple<uint64_t, py::object>& m) {
  return {std::get<0>(m), python_owner(std::get<1>(m))};
}

// A DLPack capsule, as torch.from_dlpack takes it; freed here unless torch consumed it.
py::object capsule(DLManagedTensor* managed) {
  PyObject* cap = PyCapsule_New(managed, "dltensor", [](PyObject* c) {
    if (PyCapsule_IsValid(c, "dltensor")) {
      auto* m = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(c, "dltensor"));
      if (m && m->deleter) m->deleter(m);
    }
  });
  if (!cap) {
    managed->deleter(managed);
    throw py::error_already_set();
  }
  return py::reinterpret_steal<py::object>(cap);
}

py::tuple entry_tuple(const flash::TensorInfo& t) {
  py::object strides = py::none();
  if (t.has_strides) strides = py::tuple(py::cast(t.strides));
  return py::make_tuple(to_str(t.name), t.dtype, py::tuple(py::cast(t.shape)), strides, t.file, t.offset, t.length,
                        t.has_crc32c ? py::object(py::int_(t.crc32c)) : py::object(py::none()));
}

flash::FlashIndexRules flash_rules(const py::dict& d) {
  flash::FlashIndexRules r;
  r.format_name = d["format_name"].cast<std::string>();
  r.version = d["version"].cast<int64_t>();
  r.alignment = d["alignment"].cast<int64_t>();
  r.checksum = d["checksum"].cast<std::string>();
  r.data_suffix = d["data_suffix"].cast<std::string>();
  r.max_tensors = d["max_tensors"].cast<uint64_t>();
  r.max_files = d["max_files"].cast<uint64_t>();
  r.max_ndim = d["max_ndim"].cast<uint64_t>();
  r.max_tensor_bytes = d["max_tensor_bytes"].cast<uint64_t>();
  r.max_name_bytes = d["max_name_bytes"].cast<uint64_t>();
  for (const auto& [name, size] : d["dtypes"].cast<std::vector<std::pair<std::string, uint32_t>>>()) {
    r.dtypes.names.push_back(name);
    r.dtypes.sizes.push_back(size);
  }
  return r;
}

flash::SafetensorsRules safetensors_rules(const py::dict& d) {
  flash::SafetensorsRules r;
  r.max_header_bytes = d["max_header_bytes"].cast<uint64_t>();
  r.max_ndim = d["max_ndim"].cast<uint64_t>();
  r.max_tensors = d["max_tensors"].cast<uint64_t>();
  for (const auto& [name, dtype, per_item] : d["dtypes"].cast<std::vector<std::tuple<std::string, uint32_t, uint32_t>>>())
    r.dtypes.push_back({name, dtype, per_item});
  r.vocabulary.sizes = d["sizes"].cast<std::vector<uint32_t>>();
  return r;
}

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

flash::LoadOptions load_options(int threads, uint64_t chunk_bytes, const std::string& io, double timeout,
                                const TeeList& tees, int connections = 0) {
  flash::LoadOptions options;
  options.threads = threads;
  options.connections = connections;
  options.chunk_bytes = chunk_bytes;
  options.source.io = parse_io(io);
  options.source.timeout_s = timeout;
  if (tees) options.tees = *tees;
  return options;
}

}  // namespace

PYBIND11_MODULE(_C, m) {
  m.doc() = "flashtensors native core: plan execution, checksums, CUDA runtime lookup.";
  // Read failures surface as OSError subclasses, CUDA failures as RuntimeError ones.
  static py::exception<flash::IoError> io_error(m, "IoError", PyExc_OSError);
  // RemoteError(message) with .status (HTTP, or 0), .url and .offset: a remote source failed.
  static py::exception<flash::RemoteError> remote_error(m, "RemoteError", io_error.ptr());
  py::register_exception<flash::CudaError>(m, "CudaError", PyExc_RuntimeError);
  // FormatError(message, tensor or None): an invalid index or header.
  static py::exception<flash::FormatError> format_error(m, "FormatError", PyExc_ValueError);
  static py::exception<flash::UncoveredTensor> uncovered(m, "UncoveredTensor", PyExc_LookupError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const flash::FormatError& e) {
      py::object tensor = e.has_tensor() ? py::object(to_str(e.tensor())) : py::object(py::none());
      PyErr_SetObject(format_error.ptr(), py::make_tuple(e.what(), tensor).ptr());
    } catch (const flash::RemoteError& e) {
      py::object error = py::reinterpret_borrow<py::object>(remote_error.ptr())(to_str(e.what()));
      error.attr("status") = e.status();
      error.attr("url") = to_str(e.url());
      error.attr("offset") = e.offset();
      PyErr_SetObject(remote_error.ptr(), error.ptr());
    } catch (const flash::IoError& e) {
      PyErr_SetString(io_error.ptr(), e.what());
    } catch (const flash::UncoveredTensor& e) {
      PyErr_SetObject(uncovered.ptr(), to_str(e.what()).ptr());
    }
  });

  py::class_<flash::FlashIndexRules>(m, "FlashIndexRules", "The flash format's constants and limits.")
      .def(py::init(&flash_rules), py::arg("rules"));

  py::class_<flash::SafetensorsRules>(m, "SafetensorsRules", "safetensors' dtypes (as spec dtype numbers) and limits.")
      .def(py::init(&safetensors_rules), py::arg("rules"));

  py::class_<TensorTable, std::shared_ptr<TensorTable>>(
      m, "TensorTable", "Every tensor of a checkpoint: name, dtype, shape, strides, file, offset, length, crc32c.")
      .def(py::init<>(), "An empty table, to fill with add_safetensors() and then index_names().")
      .def(
          "add_safetensors",
          [](TensorTable& t, const std::string& file_name, const py::bytes& header, uint64_t file_size,
             const flash::SafetensorsRules& rules) {
            std::string_view bytes = header;
            py::gil_scoped_release nogil;
            flash::add_safetensors_file(t, file_name, bytes.data(), bytes.size(), file_size, rules);
          },
          py::arg("file_name"), py::arg("header"), py::arg("file_size"), py::arg("rules"),
          "Appends a safetensors file's tensors as the next data file (raises FormatError).")
      .def(
          "index_names",
          [](TensorTable& t) {
            std::string duplicate;
            if (!t.index_names(&duplicate)) throw flash::FormatError("tensor listed twice", duplicate, true);
          },
          "Indexes the names once the table is complete (raises FormatError on a repeated name).")
      .def_static(
          "from_flash_index",
          [](const py::bytes& raw, const flash::FlashIndexRules& rules) {
            std::string_view bytes = raw;
            py::gil_scoped_release nogil;
            return std::make_shared<TensorTable>(flash::parse_flash_index(bytes.data(), bytes.size(), rules));
          },
          py::arg("raw"), py::arg("rules"), "Parses and validates a flash index (raises FormatError).")
      .def("__len__", [](const TensorTable& t) { return t.tensors.size(); })
      .def_readonly("version", &TensorTable::version)
      .def(
          "names",
          [](const TensorTable& t) {
            py::list out(t.tensors.size());
            for (size_t i = 0; i < t.tensors.size(); ++i) out[i] = to_str(t.tensors[i].name);
            return out;
          },
          "Tensor names in table order.")
      .def(
          "entries",
          [](const TensorTable& t) {
            py::list out(t.tensors.size());
            for (size_t i = 0; i < t.tensors.size(); ++i) out[i] = entry_tuple(t.tensors[i]);
            return out;
          },
          "(name, dtype index, shape, strides or None, file, offset, length, crc32c or None) per tensor.")
      .def("entry", [](const TensorTable& t, size_t i) { return entry_tuple(t.tensors.at(i)); })
      .def("fingerprint", &TensorTable::fingerprint,
           "A 64-bit hash of the files and every tensor's name, dtype, shape and place: equal tables, equal hashes.")
      .def(
          "files",
          [](const TensorTable& t) {
            py::list out;
            for (const auto& f : t.files) out.append(py::make_tuple(to_str(f.name), f.size));
            return out;
          },
          "(name, size) of each data file.")
      .def(
          "metadata",
          [](const TensorTable& t) {
            py::dict out;
            for (size_t i = 0; i < t.metadata.size(); ++i) {
              const auto [k, v] = t.metadata[i];
              out[to_str(k)] = to_str(v);
            }
            return out;
          })
      .def("find", [](const TensorTable& t, const std::string& name) { return t.find(name); },
           "Position of the named tensor, or -1.");

  py::class_<LoadPlan>(m, "LoadPlan", "Which bytes of which file land where, and the tensors as views.")
      .def(py::init([](std::shared_ptr<TensorTable> table, std::optional<std::vector<uint32_t>> selection,
                       const std::vector<std::pair<std::string, int32_t>>& device_map) {
             std::vector<uint32_t> chosen;
             if (selection) {
               chosen = std::move(*selection);
             } else {
               chosen.resize(table->tensors.size());
               for (uint32_t i = 0; i < chosen.size(); ++i) chosen[i] = i;
             }
             auto devices = flash::assign_devices(*table, chosen, device_map);
             return std::make_unique<LoadPlan>(std::move(table), std::move(chosen), std::move(devices));
           }),
           py::arg("table"), py::arg("selection"), py::arg("device_map"),
           "Places the selected tensors (all for None) by a device map of (prefix, device) pairs, "
           "device -1 being the host; raises UncoveredTensor(name).")
      .def("__len__", [](const LoadPlan& p) { return p.selection().size(); })
      .def(
          "names",
          [](const LoadPlan& p) {
            py::list out(p.selection().size());
            for (uint32_t i = 0; i < p.selection().size(); ++i) out[i] = to_str(p.tensor(i).name);
            return out;
          },
          "Names of the selected tensors, in order.")
      .def("entry", [](const LoadPlan& p, uint32_t i) { return entry_tuple(p.tensor(i)); })
      .def("device", &LoadPlan::device, py::arg("position"), "Device code of a selected tensor (-1: host).")
      .def("files_used", &LoadPlan::files_used, py::arg("host_only"))
      .def("layout", &LoadPlan::layout, py::arg("mapped_files"), py::arg("alignment"),
           "Builds the regions; returns (device, buffer bytes) per device in order of first use.")
      .def(
          "read_ops",
          [](const LoadPlan& p, const std::vector<uint64_t>& bases) {
            std::vector<OpTuple> out;
            for (const auto& op : p.read_ops(bases)) out.emplace_back(op.file, op.offset, op.length, op.dest, op.device);
            return out;
          },
          py::arg("bases"), "The reads execute() would do: (file, offset, length, dest address, device).")
      .def(
          "execute",
          [](const LoadPlan& p, const std::vector<std::string>& paths, const std::vector<uint64_t>& bases,
             int threads, uint64_t chunk_bytes, const std::string& io, double timeout, const TeeList& tees,
             int connections) {
            const flash::LoadOptions options = load_options(threads, chunk_bytes, io, timeout, tees, connections);
            auto ops = p.read_ops(bases);
            py::gil_scoped_release nogil;
            flash::execute_plan(paths, ops, options);
          },
          py::arg("paths"), py::arg("bases"), py::arg("threads"), py::arg("chunk_bytes"), py::arg("io") = "auto",
          py::arg("timeout") = 30.0, py::arg("tees") = py::none(), py::arg("connections") = 0,
          "Reads every unmapped region into the device buffers at `bases`. Paths may be http(s) URLs; "
          "`timeout`: seconds a remote piece may go without a byte, retries included; `tees`: per path, "
          "a FileTee each piece read is also written to, or None; `connections`: remote requests in "
          "flight (0: $FLASHTENSORS_CONNECTIONS, else 32).")
      .def(
          "views",
          [](const LoadPlan& p, const std::vector<std::tuple<uint64_t, py::object>>& buffers,
             const std::map<uint32_t, std::tuple<uint64_t, py::object>>& mappings,
             const std::vector<std::optional<std::pair<uint8_t, uint8_t>>>& dtypes) {
            std::vector<flash::Memory> bufs;
            for (const auto& b : buffers) bufs.push_back(to_memory(b));
            std::vector<flash::Memory> maps(p.table().files.size());
            for (const auto& [file, m] : mappings)
              if (file < maps.size()) maps[file] = to_memory(m);
            std::vector<flash::DlpackDtype> dl;
            for (const auto& d : dtypes) dl.push_back(d ? flash::DlpackDtype{d->first, d->second} : flash::DlpackDtype{});
            flash::TensorViews views = p.views(bufs, maps, dl);
            py::list direct(views.direct.size());
            for (size_t i = 0; i < views.direct.size(); ++i)
              direct[i] = views.direct[i] ? capsule(views.direct[i]) : py::none();
            py::list grouped;
            for (auto& [region, members] : views.grouped) grouped.append(py::make_tuple(capsule(region), members));
            return py::make_tuple(direct, grouped);
          },
          py::arg("buffers"), py::arg("mappings"), py::arg("dtypes"),
          "DLPack capsules: one per selected tensor (None if empty or grouped), and (region capsule, "
          "[(position, byte offset)]) for regions handed back as bytes.");

  m.def(
      "execute_plan",
      [](const std::vector<std::string>& paths, const std::vector<OpTuple>& ops, int threads,
         uint64_t chunk_bytes, const std::string& io, double timeout, const TeeList& tees, int connections) {
        const flash::LoadOptions options = load_options(threads, chunk_bytes, io, timeout, tees, connections);
        auto plan = to_ops(ops);
        py::gil_scoped_release nogil;
        flash::execute_plan(paths, plan, options);
      },
      py::arg("paths"), py::arg("ops"), py::arg("threads"), py::arg("chunk_bytes"), py::arg("io") = "auto",
      py::arg("timeout") = 30.0, py::arg("tees") = py::none(), py::arg("connections") = 0,
      "Read each (file, offset, length, dest_address, device) op; device -1 is host memory. Paths may be "
      "http(s) URLs; `tees` and `connections` as for LoadPlan.execute.");

  py::class_<flash::FileTee, std::shared_ptr<flash::FileTee>>(
      m, "FileTee",
      "A new local file of `size` bytes that every piece read from a path is also written to (pass it in "
      "`tees`); it records which bytes were written.")
      .def(py::init<std::string, uint64_t>(), py::arg("path"), py::arg("size"))
      .def_property_readonly("path", &flash::FileTee::path)
      .def_property_readonly("size", &flash::FileTee::size)
      .def("missing", &flash::FileTee::missing, "The (offset, length) ranges not written yet, in order.")
      .def("written", &flash::FileTee::written, "Bytes written so far, each counted once.")
      .def("error", &flash::FileTee::error, "The first write error ('' if none); writes stop after one.")
      .def(
          "write",
          [](flash::FileTee& t, uint64_t address, uint64_t offset, uint64_t length) {
            py::gil_scoped_release nogil;
            t.write(reinterpret_cast<const void*>(address), offset, length);
          },
          py::arg("address"), py::arg("offset"), py::arg("length"),
          "Writes `length` bytes of host memory at `address` at `offset` (bytes a load received some other "
          "way, such as from its group); never raises: a failure shows in error().")
      .def(
          "close",
          [](flash::FileTee& t, bool sync) {
            py::gil_scoped_release nogil;
            t.close(sync);
          },
          py::arg("sync") = true, "fdatasync (when `sync`) and close; OSError if flushing fails.");

  m.def(
      "checksum_ranges",
      [](const std::vector<std::string>& paths, const std::vector<std::tuple<uint32_t, uint64_t, uint64_t>>& ranges,
         int threads, double timeout) {
        std::vector<flash::ReadOp> ops;
        ops.reserve(ranges.size());
        for (const auto& r : ranges) ops.push_back({std::get<0>(r), std::get<1>(r), std::get<2>(r), 0, -1});
        py::gil_scoped_release nogil;
        return flash::checksum_ranges(paths, ops, threads, timeout);
      },
      py::arg("paths"), py::arg("ranges"), py::arg("threads"), py::arg("timeout") = 30.0,
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
        return flash::resident_fraction(path);
      },
      py::arg("path"), "Fraction of the file's pages in the page cache (1.0 where it cannot be told).");

  m.def(
      "write_regions",
      [](int fd, const std::vector<std::pair<uint64_t, uint64_t>>& regions,
         const std::vector<std::tuple<uint32_t, uint64_t, uint64_t>>& ranges, uint64_t alignment) {
        std::vector<flash::MemoryRegion> rs;
        rs.reserve(regions.size());
        for (const auto& [address, length] : regions) rs.push_back({address, length});
        std::vector<flash::ChecksumRange> cs;
        cs.reserve(ranges.size());
        for (const auto& [region, offset, length] : ranges) cs.push_back({region, offset, length});
        py::gil_scoped_release nogil;
        return flash::write_regions(fd, rs, cs, alignment);
      },
      py::arg("fd"), py::arg("regions"), py::arg("ranges"), py::arg("alignment"),
      "Appends (address, length) host regions to fd, each padded with zeros to `alignment`; "
      "returns the CRC-32C of each (region, offset, length) range.");
  m.def(
      "advise_huge_pages",
      [](uint64_t address, uint64_t length) { return flash::advise_huge_pages(address, length); },
      py::arg("address"), py::arg("length"),
      "Marks the whole 2 MiB pages inside a host range MADV_HUGEPAGE; returns the bytes advised.");
  m.def(
      "release_idle_connections",
      []() {
        py::gil_scoped_release nogil;
        return flash::release_idle_connections();
      },
      "Closes the keep-alive connections remote reads kept for later reads of this process; returns how many "
      "(every load calls it when it ends).");
  m.def(
      "touch_pages",
      [](const std::vector<std::pair<uint64_t, uint64_t>>& ranges) {
        py::gil_scoped_release nogil;
        return flash::touch_missing_pages(ranges);
      },
      py::arg("ranges"),
      "Reads one byte of each page of the (address, length) host ranges not yet mapped in; returns how many "
      "(benchmarks: fault lazy mappings in, as a user's first read would).");
  m.def(
      "hf_weight_files",
      [](const py::bytes& raw, uint64_t max_files) {
        std::string_view bytes = raw;
        std::vector<std::string> files;
        {
          py::gil_scoped_release nogil;
          files = flash::hf_weight_files(bytes.data(), bytes.size(), max_files);
        }
        py::list out;
        for (const auto& f : files) out.append(to_str(f));
        return out;
      },
      py::arg("raw"), py::arg("max_files"),
      "The distinct files a Hugging Face weight index maps tensors to, in first-use order (raises FormatError).");
  m.def(
      "dlpack_dtype",
      [](const py::capsule& cap) {
        auto* managed = static_cast<DLManagedTensor*>(PyCapsule_GetPointer(cap.ptr(), "dltensor"));
        if (!managed) throw py::error_already_set();
        return std::make_pair(managed->dl_tensor.dtype.code, managed->dl_tensor.dtype.bits);
      },
      py::arg("capsule"), "(code, bits) of an unconsumed DLPack capsule's dtype (to learn torch's codes).");
  m.def("cuda_runtime_available", &flash::cuda_runtime_available,
        "Whether a CUDA runtime can be loaded (does not initialise CUDA).");
  m.def("cuda_runtime_path", &flash::cuda_runtime_path, "The CUDA runtime library in use, or ''.");
  m.def(
      "pinned_bytes", [] { return flash::PinnedPool::instance().pinned_bytes(); },
      "Bytes of pinned staging memory held by this process.");
  m.def(
      "release_pinned", [] { flash::PinnedPool::instance().trim(); },
      "Free the idle pinned staging buffers.");

  // The HTTP protocol pieces of the native reader: the Python small-object client asks
  // the same proxy question, and the fuzz tests feed the parser what a server might send.
  m.def(
      "proxy_for",
      [](const std::string& url) {
        const flash::Proxy p = flash::choose_proxy(flash::parse_url(url), flash::ProxyEnv::from_environment());
        return p.use ? std::make_tuple(p.host, p.port, p.authorization) : std::make_tuple(std::string(),
                                                                                        std::string(), std::string());
      },
      py::arg("url"),
      "(host, port, Proxy-Authorization) of the proxy an http(s) URL goes through under the environment's "
      "http_proxy/https_proxy/all_proxy/no_proxy, as the native reader chooses it; empty strings for none.");
  m.def(
      "http_plan_body",
      [](py::bytes head, uint64_t offset, uint64_t length, const std::string& etag) {
        const flash::ResponseHead h = flash::parse_response_head(std::string_view(head));
        const flash::BodyPlan p = flash::plan_body(h, offset, length, etag);
        static const char* kinds[] = {"body", "retry", "redirect", "fatal"};
        return py::make_tuple(kinds[p.kind], p.want, p.close_after, p.problem, h.status, py::bytes(h.location),
                              py::bytes(h.etag), p.wait_s);
      },
      py::arg("head"), py::arg("offset"), py::arg("length"), py::arg("etag") = "",
      "(kind, want, close_after, problem, status, location, etag, wait_s) for response headers `head` (the bytes "
      "before the blank line) answering the GET of `length` bytes at `offset` (fuzz tests).");
  m.def(
      "http_redirect",
      [](const std::string& url, py::bytes location) {
        const flash::Url u = flash::redirect_target(flash::parse_url(url), std::string(location));
        return u.origin() + u.target;
      },
      py::arg("url"), py::arg("location"), "Where a redirect to `location` from `url` leads (fuzz tests).");

  // The retry policy, for the Python client's tests to hold its own copy equal to.
  m.attr("HTTP_MAX_REDIRECTS") = flash::kMaxRedirects;
  m.def("http_retryable_status", &flash::retryable_status, py::arg("status"),
        "Whether the native reader asks again after an HTTP `status` (5xx, 408, 429).");

  // Credentials per origin, shared by the native reader and the Python client.
  m.def(
      "authorize_origin",
      [](const std::string& origin, const std::string& authorization) {
        flash::authorize_origin(origin, authorization);
      },
      py::arg("origin"), py::arg("authorization"),
      "Sends `authorization` as the Authorization header of every request to `origin` (scheme://host[:port]) "
      "and to no other host, not even one its redirects lead to; '' forgets it. Process-wide. "
      "Example: authorize_origin('https://huggingface.co', 'Bearer hf_...').");
  m.def(
      "origin_authorization",
      [](const std::string& url) {
        try {
          return flash::origin_authorization(flash::parse_url(url));
        } catch (const flash::IoError&) {
          return std::string();  // not an http(s) URL: no origin given a credential
        }
      },
      py::arg("url"), "The Authorization value authorize_origin gave `url`'s origin, or '' (also for a non-URL).");
}
