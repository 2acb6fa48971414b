#include "common/formats/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <limits>
#include <set>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "common/status/status_macros.h"
#include "nlohmann/json.hpp"

namespace lockstep::common {
namespace {

using json = nlohmann::json;

// Dtype strings the format defines; recognised so that the error says
// "unsupported" rather than "unknown" for them.
constexpr std::string_view kKnownUnsupportedDTypes[] = {
    "F64",     "I64",     "I32",     "I16",  "I8",
    "U64",     "U32",     "U16",     "U8",      "BOOL", "F8_E4M3",
    "F8_E5M2", "F8_E8M0", "F6_E2M3", "F6_E3M2", "F4",   "C64"};

// Abseil here is built with its own string_view (not std::string_view).
absl::string_view ToAbsl(std::string_view s) {
  return absl::string_view(s.data(), s.size());
}

std::string FileError(const std::string& path, absl::string_view what) {
  return absl::StrCat("safetensors file '", path, "': ", what);
}

std::string TensorError(const std::string& path, absl::string_view name,
                        absl::string_view what) {
  return absl::StrCat("safetensors file '", path, "', tensor '", name,
                      "': ", what);
}

absl::Status ErrnoError(int err, const std::string& what) {
  return absl::Status(absl::ErrnoToStatusCode(err),
                      absl::StrCat(what, ": ", std::strerror(err)));
}

// numel * elem_size with overflow detection (dims already known >= 0).
bool ByteSize(const std::vector<int64_t>& shape, int64_t elem_size,
              uint64_t* out) {
  uint64_t n = static_cast<uint64_t>(elem_size);
  for (int64_t d : shape) {
    if (d < 0) return false;
    if (__builtin_mul_overflow(n, static_cast<uint64_t>(d), &n)) return false;
  }
  // Keep numel() (int64) and size_t arithmetic safe too.
  if (n > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
    return false;
  }
  *out = n;
  return true;
}

// Reads a JSON integer >= 0 that fits in int64.
bool AsNonNegativeInt64(const json& j, int64_t* out) {
  if (j.is_number_unsigned()) {
    const uint64_t v = j.get<uint64_t>();
    if (v > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      return false;
    }
    *out = static_cast<int64_t>(v);
    return true;
  }
  if (j.is_number_integer()) {
    const int64_t v = j.get<int64_t>();
    if (v < 0) return false;
    *out = v;
    return true;
  }
  return false;
}

absl::StatusOr<kernels::DType> ParseDType(const std::string& path,
                                          const std::string& name,
                                          const json& j) {
  if (!j.is_string()) {
    return absl::InvalidArgumentError(
        TensorError(path, name, "\"dtype\" is not a string"));
  }
  const std::string& s = j.get_ref<const std::string&>();
  if (s == "F32") return kernels::DType::kF32;
  if (s == "BF16") return kernels::DType::kBF16;
  if (s == "F16") return kernels::DType::kF16;
  for (std::string_view known : kKnownUnsupportedDTypes) {
    if (s == known) {
      return absl::InvalidArgumentError(TensorError(
          path, name,
          absl::StrCat("unsupported dtype '", s, "' (supported: F32, BF16, F16)")));
    }
  }
  return absl::InvalidArgumentError(TensorError(
      path, name,
      absl::StrCat("unknown dtype '", s, "' (supported: F32, BF16, F16)")));
}

// Parses JSON text, noting the first key that repeats within one object
// (nlohmann keeps the last one silently, which would hide a duplicated tensor
// name): its name in `*duplicate` and its depth (1 = top level) in
// `*duplicate_depth`. Returns a discarded value for invalid JSON.
json ParseRejectingDuplicates(const char* begin, size_t n,
                              std::string* duplicate, int* duplicate_depth) {
  std::vector<std::set<std::string>> keys;
  auto callback = [&](int depth, json::parse_event_t event, json& parsed) {
    switch (event) {
      case json::parse_event_t::object_start:
        keys.emplace_back();
        break;
      case json::parse_event_t::object_end:
        if (!keys.empty()) keys.pop_back();
        break;
      case json::parse_event_t::key:
        if (!keys.empty() && duplicate->empty() &&
            !keys.back().insert(parsed.get<std::string>()).second) {
          *duplicate = parsed.get<std::string>();
          *duplicate_depth = depth;
        }
        break;
      default:
        break;
    }
    return true;
  };
  return json::parse(begin, begin + n, callback, /*allow_exceptions=*/false);
}

// Parses the header, rejecting duplicate keys in any object.
absl::StatusOr<json> ParseHeader(const std::string& path, const char* begin,
                                 size_t n) {
  std::string duplicate;
  int duplicate_depth = 0;
  json header =
      ParseRejectingDuplicates(begin, n, &duplicate, &duplicate_depth);
  if (header.is_discarded()) {
    return absl::InvalidArgumentError(
        FileError(path, "header is not valid JSON (or not valid UTF-8)"));
  }
  if (!duplicate.empty()) {
    if (duplicate_depth == 1) {
      return absl::InvalidArgumentError(
          TensorError(path, duplicate, "duplicate tensor name in header"));
    }
    return absl::InvalidArgumentError(FileError(
        path, absl::StrCat("duplicate JSON key '", duplicate, "' in header")));
  }
  if (!header.is_object()) {
    return absl::InvalidArgumentError(
        FileError(path, "header is not a JSON object"));
  }
  return header;
}

// Data region of one tensor, for the overlap check.
struct Span {
  uint64_t begin;
  uint64_t end;
  const std::string* name;
};

std::atomic<uint64_t> g_tmp_counter{0};

}  // namespace

int64_t TensorInfo::numel() const {
  int64_t n = 1;
  for (int64_t d : shape) n *= d;
  return n;
}

std::string_view SafetensorsDTypeName(kernels::DType dtype) {
  return dtype == kernels::DType::kF32    ? "F32"
         : dtype == kernels::DType::kBF16 ? "BF16"
                                          : "F16";
}

SafetensorsFile::~SafetensorsFile() {
  if (base_ != nullptr) {
    munmap(const_cast<uint8_t*>(base_), size_);
  }
}

absl::StatusOr<std::unique_ptr<SafetensorsFile>> SafetensorsFile::Open(
    const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return ErrnoError(errno, FileError(path, "cannot open"));
  }
  struct stat st;
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return ErrnoError(err, FileError(path, "cannot stat"));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(FileError(path, "not a regular file"));
  }
  const uint64_t size = static_cast<uint64_t>(st.st_size);
  if (size < 8) {
    ::close(fd);
    return absl::DataLossError(FileError(
        path, absl::StrCat("file is ", size,
                           " bytes, shorter than the 8-byte header length "
                           "(truncated?)")));
  }
  void* map = mmap(nullptr, size, PROT_READ, MAP_PRIVATE, fd, 0);
  const int map_err = errno;
  ::close(fd);  // the mapping keeps the file alive
  if (map == MAP_FAILED) {
    return ErrnoError(map_err, FileError(path, "cannot mmap"));
  }
  // From here on the destructor unmaps on every error path.
  std::unique_ptr<SafetensorsFile> file(
      new SafetensorsFile(path, static_cast<const uint8_t*>(map), size));
  const uint8_t* base = file->base_;

  uint64_t header_len = 0;
  for (int i = 7; i >= 0; --i) header_len = (header_len << 8) | base[i];
  if (header_len > kMaxSafetensorsHeaderBytes) {
    return absl::InvalidArgumentError(FileError(
        path, absl::StrCat("header length ", header_len, " exceeds the ",
                           kMaxSafetensorsHeaderBytes, "-byte limit")));
  }
  if (header_len > size - 8) {
    return absl::DataLossError(
        FileError(path, absl::StrCat("header length ", header_len,
                                     " runs past the end of the file (", size,
                                     " bytes; truncated?)")));
  }
  LOCKSTEP_ASSIGN_OR_RETURN(
      json header, ParseHeader(path, reinterpret_cast<const char*>(base + 8),
                               static_cast<size_t>(header_len)));

  const uint64_t data_start = 8 + header_len;
  const uint64_t data_size = size - data_start;
  std::vector<Span> spans;
  spans.reserve(header.size());
  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const json& entry = it.value();
    if (name == "__metadata__") {
      if (!entry.is_object()) {
        return absl::InvalidArgumentError(
            FileError(path, "\"__metadata__\" is not an object"));
      }
      for (auto m = entry.begin(); m != entry.end(); ++m) {
        if (!m.value().is_string()) {
          return absl::InvalidArgumentError(
              FileError(path, absl::StrCat("\"__metadata__\" value of '",
                                           m.key(), "' is not a string")));
        }
        file->metadata_[m.key()] = m.value().get<std::string>();
      }
      continue;
    }
    if (name.empty()) {
      return absl::InvalidArgumentError(
          FileError(path, "header has a tensor with an empty name"));
    }
    if (!entry.is_object()) {
      return absl::InvalidArgumentError(
          TensorError(path, name, "entry is not a JSON object"));
    }
    for (const char* field : {"dtype", "shape", "data_offsets"}) {
      if (!entry.contains(field)) {
        return absl::InvalidArgumentError(
            TensorError(path, name, absl::StrCat("missing \"", field, "\"")));
      }
    }
    TensorInfo info;
    info.name = name;
    LOCKSTEP_ASSIGN_OR_RETURN(info.dtype,
                              ParseDType(path, name, entry["dtype"]));

    const json& shape = entry["shape"];
    if (!shape.is_array()) {
      return absl::InvalidArgumentError(
          TensorError(path, name, "\"shape\" is not an array"));
    }
    for (const json& d : shape) {
      int64_t dim = 0;
      if (!AsNonNegativeInt64(d, &dim)) {
        return absl::InvalidArgumentError(TensorError(
            path, name,
            absl::StrCat("\"shape\" ", shape.dump(),
                         " has a dim that is not a non-negative integer")));
      }
      info.shape.push_back(dim);
    }
    uint64_t nbytes = 0;
    if (!ByteSize(info.shape, kernels::DTypeSize(info.dtype), &nbytes)) {
      return absl::InvalidArgumentError(TensorError(
          path, name, absl::StrCat("\"shape\" ", shape.dump(), " overflows")));
    }

    const json& offsets = entry["data_offsets"];
    int64_t begin = 0;
    int64_t end = 0;
    if (!offsets.is_array() || offsets.size() != 2 ||
        !AsNonNegativeInt64(offsets[0], &begin) ||
        !AsNonNegativeInt64(offsets[1], &end)) {
      return absl::InvalidArgumentError(TensorError(
          path, name,
          absl::StrCat("\"data_offsets\" ", offsets.dump(),
                       " is not two non-negative integers [begin, end]")));
    }
    if (end < begin) {
      return absl::InvalidArgumentError(TensorError(
          path, name,
          absl::StrCat("\"data_offsets\" end ", end, " < begin ", begin)));
    }
    const uint64_t span = static_cast<uint64_t>(end - begin);
    if (span != nbytes) {
      return absl::InvalidArgumentError(TensorError(
          path, name,
          absl::StrCat("shape ", shape.dump(), " of ",
                       ToAbsl(SafetensorsDTypeName(info.dtype)), " needs ",
                       nbytes, " bytes but \"data_offsets\" ", offsets.dump(),
                       " span ", span)));
    }
    if (static_cast<uint64_t>(end) > data_size) {
      return absl::DataLossError(
          TensorError(path, name,
                      absl::StrCat("\"data_offsets\" ", offsets.dump(),
                                   " run past the end of the ", data_size,
                                   "-byte data buffer (truncated?)")));
    }
    info.data = base + data_start + static_cast<uint64_t>(begin);
    info.nbytes = static_cast<size_t>(nbytes);
    file->tensors_.push_back(std::move(info));
  }

  // nlohmann's object is a std::map, so iteration was already in name order;
  // sort anyway so the contract does not hang on that.
  std::sort(
      file->tensors_.begin(), file->tensors_.end(),
      [](const TensorInfo& a, const TensorInfo& b) { return a.name < b.name; });
  for (const TensorInfo& t : file->tensors_) {
    if (t.nbytes == 0) continue;  // an empty range overlaps nothing
    const uint64_t begin = static_cast<uint64_t>(t.data - (base + data_start));
    spans.push_back({begin, begin + t.nbytes, &t.name});
  }
  std::sort(spans.begin(), spans.end(), [](const Span& a, const Span& b) {
    return a.begin != b.begin ? a.begin < b.begin : a.end < b.end;
  });
  for (size_t i = 1; i < spans.size(); ++i) {
    if (spans[i].begin < spans[i - 1].end) {
      return absl::InvalidArgumentError(TensorError(
          path, *spans[i].name,
          absl::StrCat("data [", spans[i].begin, ", ", spans[i].end,
                       ") overlaps tensor '", *spans[i - 1].name, "' [",
                       spans[i - 1].begin, ", ", spans[i - 1].end, ")")));
    }
  }
  // Bytes after the last tensor belong to nothing: the reference reader
  // refuses them, and they would hide an appended or mis-concatenated file.
  uint64_t used = 0;
  for (const Span& span : spans) used = std::max(used, span.end);
  if (used < data_size) {
    return absl::InvalidArgumentError(FileError(
        path, absl::StrCat(data_size - used,
                           " trailing bytes after the last tensor's data (the "
                           "data buffer is ",
                           data_size, " bytes, tensors end at byte ", used,
                           ")")));
  }
  return file;
}

absl::StatusOr<const TensorInfo*> SafetensorsFile::Get(
    std::string_view name) const {
  auto it = std::lower_bound(
      tensors_.begin(), tensors_.end(), name,
      [](const TensorInfo& t, std::string_view n) { return t.name < n; });
  if (it == tensors_.end() || it->name != name) {
    return absl::NotFoundError(
        TensorError(path_, ToAbsl(name), "no such tensor in the file"));
  }
  return &*it;
}

// ---------------------------------------------------------------------------
// Checkpoint directories (one file, or an index and its shards).

namespace {

std::string IndexError(const std::string& path, absl::string_view what) {
  return absl::StrCat("safetensors index '", path, "': ", what);
}

std::string JoinPath(const std::string& dir, std::string_view name) {
  if (!dir.empty() && dir.back() == '/') return absl::StrCat(dir, ToAbsl(name));
  return absl::StrCat(dir, "/", ToAbsl(name));
}

// True unless stat() says the path does not exist; other failures (e.g.
// EACCES) count as present so that opening the file reports them.
bool PathExists(const std::string& path) {
  struct stat st;
  if (::stat(path.c_str(), &st) == 0) return true;
  return errno != ENOENT && errno != ENOTDIR;
}

// A shard name must stay inside the checkpoint directory: a plain file name,
// not "." or "..", without '/' (which also rules out absolute paths) and
// without NUL (which JSON can carry and would truncate the path).
bool IsPlainFileName(const std::string& name) {
  return !name.empty() && name != "." && name != ".." &&
         name.find('/') == std::string::npos &&
         name.find('\0') == std::string::npos;
}

absl::StatusOr<std::string> ReadIndexFile(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return ErrnoError(errno, IndexError(path, "cannot open"));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    const int err = errno;
    ::close(fd);
    return ErrnoError(err, IndexError(path, "cannot stat"));
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    return absl::InvalidArgumentError(IndexError(path, "not a regular file"));
  }
  if (static_cast<uint64_t>(st.st_size) > kMaxSafetensorsIndexBytes) {
    ::close(fd);
    return absl::InvalidArgumentError(IndexError(
        path, absl::StrCat("file is ", st.st_size, " bytes, over the ",
                           kMaxSafetensorsIndexBytes, "-byte limit")));
  }
  std::string text(static_cast<size_t>(st.st_size), '\0');
  size_t done = 0;
  while (done < text.size()) {
    const ssize_t r = ::read(fd, text.data() + done, text.size() - done);
    if (r < 0) {
      if (errno == EINTR) continue;
      const int err = errno;
      ::close(fd);
      return ErrnoError(err, IndexError(path, "read failed"));
    }
    if (r == 0) break;  // shrank meanwhile; the parse below will judge
    done += static_cast<size_t>(r);
  }
  ::close(fd);
  text.resize(done);
  return text;
}

// The weight_map of an index: tensor name -> shard file name.
absl::StatusOr<std::map<std::string, std::string>> ParseIndex(
    const std::string& path, const std::string& text) {
  std::string duplicate;
  int duplicate_depth = 0;
  const json index = ParseRejectingDuplicates(text.data(), text.size(),
                                              &duplicate, &duplicate_depth);
  if (index.is_discarded()) {
    return absl::InvalidArgumentError(
        IndexError(path, "not valid JSON (or not valid UTF-8)"));
  }
  if (!duplicate.empty()) {
    return absl::InvalidArgumentError(
        IndexError(path, absl::StrCat("duplicate JSON key '", duplicate, "'")));
  }
  if (!index.is_object()) {
    return absl::InvalidArgumentError(IndexError(path, "not a JSON object"));
  }
  if (index.contains("metadata") && !index["metadata"].is_object()) {
    return absl::InvalidArgumentError(
        IndexError(path, "\"metadata\" is not an object"));
  }
  if (!index.contains("weight_map")) {
    return absl::InvalidArgumentError(
        IndexError(path, "missing \"weight_map\""));
  }
  const json& map = index["weight_map"];
  if (!map.is_object()) {
    return absl::InvalidArgumentError(
        IndexError(path, "\"weight_map\" is not an object"));
  }
  if (map.empty()) {
    return absl::InvalidArgumentError(
        IndexError(path, "\"weight_map\" lists no tensors"));
  }
  std::map<std::string, std::string> out;
  for (auto it = map.begin(); it != map.end(); ++it) {
    if (it.key().empty()) {
      return absl::InvalidArgumentError(
          IndexError(path, "\"weight_map\" has an empty tensor name"));
    }
    if (!it.value().is_string()) {
      return absl::InvalidArgumentError(IndexError(
          path, absl::StrCat("\"weight_map\" value of tensor '", it.key(),
                             "' is not a string: ", it.value().dump())));
    }
    const std::string& shard = it.value().get_ref<const std::string&>();
    if (!IsPlainFileName(shard)) {
      return absl::InvalidArgumentError(IndexError(
          path,
          absl::StrCat("\"weight_map\" maps tensor '", it.key(), "' to shard ",
                       it.value().dump(),
                       ", which is not a plain file name in the checkpoint "
                       "directory")));
    }
    out.emplace(it.key(), shard);
  }
  return out;
}

// Replaces `path` by `text` through a temporary file, fsync and rename.
absl::Status WriteFileAtomically(const std::string& path,
                                 const std::string& text) {
  const std::string tmp =
      absl::StrCat(path, ".tmp.", getpid(), ".", g_tmp_counter.fetch_add(1));
  const int fd = ::open(
      tmp.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) {
    return ErrnoError(errno, absl::StrCat("cannot create '", tmp, "'"));
  }
  const char* p = text.data();
  size_t left = text.size();
  int err = 0;
  while (left > 0 && err == 0) {
    const ssize_t r = ::write(fd, p, left);
    if (r < 0) {
      if (errno != EINTR) err = errno;
      continue;
    }
    p += r;
    left -= static_cast<size_t>(r);
  }
  if (err == 0 && ::fsync(fd) != 0) err = errno;
  if (::close(fd) != 0 && err == 0) err = errno;
  if (err == 0 && ::rename(tmp.c_str(), path.c_str()) != 0) err = errno;
  if (err != 0) {
    ::unlink(tmp.c_str());
    return ErrnoError(err, absl::StrCat("cannot write '", path, "'"));
  }
  return absl::OkStatus();
}

}  // namespace

SafetensorsCheckpoint::~SafetensorsCheckpoint() = default;

absl::StatusOr<std::unique_ptr<SafetensorsCheckpoint>>
SafetensorsCheckpoint::Open(const std::string& dir) {
  if (dir.empty()) {
    return absl::InvalidArgumentError(
        "safetensors checkpoint: empty directory path");
  }
  struct stat st;
  if (::stat(dir.c_str(), &st) != 0) {
    return ErrnoError(errno, absl::StrCat("safetensors checkpoint directory '",
                                          dir, "': cannot stat"));
  }
  if (!S_ISDIR(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(
        "safetensors checkpoint directory '", dir, "': not a directory"));
  }
  const std::string single = JoinPath(dir, kSafetensorsFileName);
  if (PathExists(single)) {
    LOCKSTEP_ASSIGN_OR_RETURN(auto file, SafetensorsFile::Open(single));
    std::unique_ptr<SafetensorsCheckpoint> checkpoint(
        new SafetensorsCheckpoint(single, /*sharded=*/false));
    checkpoint->tensors_ = file->tensors();
    checkpoint->files_.push_back(std::move(file));
    return checkpoint;
  }
  const std::string index = JoinPath(dir, kSafetensorsIndexFileName);
  if (!PathExists(index)) {
    return absl::NotFoundError(absl::StrCat(
        "safetensors checkpoint directory '", dir, "' holds neither ",
        kSafetensorsFileName, " nor ", kSafetensorsIndexFileName));
  }
  std::unique_ptr<SafetensorsCheckpoint> checkpoint(
      new SafetensorsCheckpoint(index, /*sharded=*/true));
  LOCKSTEP_RETURN_IF_ERROR(OpenShards(dir, checkpoint.get()));
  return checkpoint;
}

absl::Status SafetensorsCheckpoint::OpenShards(
    const std::string& dir, SafetensorsCheckpoint* checkpoint) {
  const std::string& index_path = checkpoint->path_;
  LOCKSTEP_ASSIGN_OR_RETURN(const std::string text, ReadIndexFile(index_path));
  LOCKSTEP_ASSIGN_OR_RETURN(const auto weight_map,
                            ParseIndex(index_path, text));
  std::set<std::string> shard_names;
  for (const auto& [tensor, shard] : weight_map) shard_names.insert(shard);

  // Which shard holds each tensor; a tensor in two shards is ambiguous
  // whatever the index says.
  std::map<std::string, const std::string*> holder;
  for (const std::string& shard : shard_names) {
    absl::StatusOr<std::unique_ptr<SafetensorsFile>> file =
        SafetensorsFile::Open(JoinPath(dir, shard));
    if (!file.ok()) {
      return absl::Status(
          file.status().code(),
          IndexError(index_path, absl::StrCat("shard '", shard,
                                              "': ", file.status().message())));
    }
    for (const TensorInfo& t : (*file)->tensors()) {
      auto [it, inserted] = holder.emplace(t.name, &shard);
      if (!inserted) {
        return absl::InvalidArgumentError(IndexError(
            index_path,
            absl::StrCat("tensor '", t.name, "' is in shard '", *it->second,
                         "' and in shard '", shard, "'")));
      }
    }
    checkpoint->files_.push_back(*std::move(file));
  }
  for (const auto& [tensor, shard] : weight_map) {
    auto it = holder.find(tensor);
    if (it == holder.end() || *it->second != shard) {
      return absl::InvalidArgumentError(IndexError(
          index_path,
          absl::StrCat(
              "\"weight_map\" maps tensor '", tensor, "' to shard '", shard,
              "', which does not hold it",
              it == holder.end()
                  ? std::string(" (no listed shard does)")
                  : absl::StrCat(" (shard '", *it->second, "' does)"))));
    }
  }
  for (const auto& [tensor, shard] : holder) {
    auto it = weight_map.find(tensor);
    if (it == weight_map.end()) {
      return absl::InvalidArgumentError(
          IndexError(index_path,
                     absl::StrCat("shard '", *shard, "' holds tensor '", tensor,
                                  "', which \"weight_map\" does "
                                  "not list")));
    }
  }
  // Each tensor was checked to be in exactly the shard the index names.
  for (const auto& file : checkpoint->files_) {
    checkpoint->tensors_.insert(checkpoint->tensors_.end(),
                                file->tensors().begin(), file->tensors().end());
  }
  std::sort(
      checkpoint->tensors_.begin(), checkpoint->tensors_.end(),
      [](const TensorInfo& a, const TensorInfo& b) { return a.name < b.name; });
  return absl::OkStatus();
}

absl::StatusOr<const TensorInfo*> SafetensorsCheckpoint::Get(
    std::string_view name) const {
  auto it = std::lower_bound(
      tensors_.begin(), tensors_.end(), name,
      [](const TensorInfo& t, std::string_view n) { return t.name < n; });
  if (it == tensors_.end() || it->name != name) {
    return absl::NotFoundError(absl::StrCat("safetensors checkpoint '", path_,
                                            "': no tensor '", ToAbsl(name),
                                            "'"));
  }
  return &*it;
}

std::string SafetensorsShardName(int k, int n) {
  return absl::StrFormat("model-%05d-of-%05d.safetensors", k, n);
}

absl::Status WriteSafetensorsIndex(
    const std::string& path,
    const std::map<std::string, std::string>& weight_map, uint64_t total_size) {
  if (weight_map.empty()) {
    return absl::InvalidArgumentError(
        IndexError(path, "cannot write an empty weight_map"));
  }
  json map = json::object();
  for (const auto& [tensor, shard] : weight_map) {
    if (tensor.empty() || !IsPlainFileName(shard)) {
      return absl::InvalidArgumentError(
          IndexError(path, absl::StrCat("cannot map tensor '", tensor,
                                        "' to shard '", shard, "'")));
    }
    map[tensor] = shard;
  }
  const json index = {{"metadata", {{"total_size", total_size}}},
                      {"weight_map", std::move(map)}};
  return WriteFileAtomically(path, index.dump(2) + "\n");
}

// ---------------------------------------------------------------------------
// Writing.

absl::StatusOr<std::unique_ptr<SafetensorsWriter>> SafetensorsWriter::Create(
    const std::string& path, std::vector<TensorSpec> specs,
    const std::map<std::string, std::string>& metadata) {
  json header = json::object();
  if (!metadata.empty()) {
    json meta = json::object();
    for (const auto& [k, v] : metadata) meta[k] = v;
    header["__metadata__"] = std::move(meta);
  }
  uint64_t offset = 0;
  for (const TensorSpec& spec : specs) {
    if (spec.name.empty() || spec.name == "__metadata__") {
      return absl::InvalidArgumentError(
          absl::StrCat("safetensors writer '", path, "': invalid tensor name '",
                       spec.name, "'"));
    }
    if (header.contains(spec.name)) {
      return absl::InvalidArgumentError(
          TensorError(path, spec.name, "duplicate tensor name"));
    }
    uint64_t nbytes = 0;
    if (!ByteSize(spec.shape, kernels::DTypeSize(spec.dtype), &nbytes)) {
      return absl::InvalidArgumentError(TensorError(
          path, spec.name,
          absl::StrCat("invalid shape [", absl::StrJoin(spec.shape, ", "),
                       "] (negative dim or overflow)")));
    }
    if (nbytes >
        static_cast<uint64_t>(std::numeric_limits<int64_t>::max()) - offset) {
      return absl::InvalidArgumentError(
          TensorError(path, spec.name, "total data size overflows"));
    }
    header[spec.name] = {
        {"dtype", std::string(SafetensorsDTypeName(spec.dtype))},
        {"shape", spec.shape},
        {"data_offsets", {offset, offset + nbytes}}};
    offset += nbytes;
  }
  std::string text = header.dump();
  // The format allows trailing spaces; pad so the data buffer starts on an
  // 8-byte boundary (it then sits aligned in an mmap).
  text.append((8 - (text.size() % 8)) % 8, ' ');

  std::unique_ptr<SafetensorsWriter> w(new SafetensorsWriter());
  w->path_ = path;
  w->total_ = offset;
  w->data_start_ = 8 + text.size();
  w->tmp_path_ =
      absl::StrCat(path, ".tmp.", getpid(), ".", g_tmp_counter.fetch_add(1));
  w->fd_ = ::open(w->tmp_path_.c_str(),
                  O_WRONLY | O_CREAT | O_EXCL | O_TRUNC | O_CLOEXEC, 0644);
  if (w->fd_ < 0) {
    return ErrnoError(errno, absl::StrCat("safetensors writer: cannot create '",
                                          w->tmp_path_, "'"));
  }
  uint8_t len_bytes[8];
  uint64_t n = text.size();
  for (int i = 0; i < 8; ++i) len_bytes[i] = static_cast<uint8_t>(n >> (8 * i));
  absl::Status s = w->WriteAll(len_bytes, 8);
  if (s.ok()) s = w->WriteAll(text.data(), text.size());
  if (!s.ok()) {
    w->Abandon();
    return s;
  }
  return w;
}

SafetensorsWriter::~SafetensorsWriter() {
  if (!finished_) Abandon();
}

void SafetensorsWriter::Abandon() {
  if (fd_ >= 0) {
    ::close(fd_);
    fd_ = -1;
  }
  if (!tmp_path_.empty()) {
    ::unlink(tmp_path_.c_str());
    tmp_path_.clear();
  }
  finished_ = true;
}

absl::Status SafetensorsWriter::WriteAll(const void* data, size_t nbytes) {
  const char* p = static_cast<const char*>(data);
  while (nbytes > 0) {
    const ssize_t r = ::write(fd_, p, std::min<size_t>(nbytes, 1u << 30));
    if (r < 0) {
      if (errno == EINTR) continue;
      return ErrnoError(errno, absl::StrCat("safetensors writer: write to '",
                                            tmp_path_, "' failed"));
    }
    p += r;
    nbytes -= static_cast<size_t>(r);
  }
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::Append(const void* data, size_t nbytes) {
  if (finished_ || fd_ < 0) {
    return absl::FailedPreconditionError(absl::StrCat(
        "safetensors writer '", path_, "': Append after Finish or failure"));
  }
  if (nbytes > total_ - written_) {
    return absl::FailedPreconditionError(
        absl::StrCat("safetensors writer '", path_, "': Append of ", nbytes,
                     " bytes exceeds the declared data size (", written_,
                     " of ", total_, " written)"));
  }
  if (nbytes == 0) return absl::OkStatus();
  absl::Status s = WriteAll(data, nbytes);
  if (!s.ok()) {
    Abandon();
    return s;
  }
  written_ += nbytes;
  return absl::OkStatus();
}

absl::Status SafetensorsWriter::Finish() {
  if (finished_ || fd_ < 0) {
    return absl::FailedPreconditionError(
        absl::StrCat("safetensors writer '", path_,
                     "': Finish called twice or after failure"));
  }
  if (written_ != total_) {
    const uint64_t written = written_;
    Abandon();
    return absl::FailedPreconditionError(
        absl::StrCat("safetensors writer '", path_, "': only ", written, " of ",
                     total_, " data bytes were written"));
  }
  if (::fsync(fd_) != 0) {
    const int err = errno;
    Abandon();
    return ErrnoError(err, absl::StrCat("safetensors writer: fsync of '",
                                        tmp_path_, "' failed"));
  }
  if (::close(fd_) != 0) {
    const int err = errno;
    fd_ = -1;
    Abandon();
    return ErrnoError(err, absl::StrCat("safetensors writer: close of '",
                                        tmp_path_, "' failed"));
  }
  fd_ = -1;
  if (::rename(tmp_path_.c_str(), path_.c_str()) != 0) {
    const int err = errno;
    Abandon();
    return ErrnoError(err, absl::StrCat("safetensors writer: rename to '",
                                        path_, "' failed"));
  }
  tmp_path_.clear();
  finished_ = true;
  return absl::OkStatus();
}

absl::Status WriteSafetensors(
    const std::string& path, const std::vector<TensorInfo>& tensors,
    const std::map<std::string, std::string>& metadata) {
  std::vector<TensorSpec> specs;
  specs.reserve(tensors.size());
  for (const TensorInfo& t : tensors) {
    specs.push_back({t.name, t.dtype, t.shape});
  }
  LOCKSTEP_ASSIGN_OR_RETURN(
      auto writer, SafetensorsWriter::Create(path, std::move(specs), metadata));
  // Create() validated the shapes, so numel() is safe here.
  for (const TensorInfo& t : tensors) {
    const uint64_t want = static_cast<uint64_t>(t.numel()) *
                          static_cast<uint64_t>(kernels::DTypeSize(t.dtype));
    if (t.nbytes != want) {
      return absl::InvalidArgumentError(
          TensorError(path, t.name,
                      absl::StrCat("nbytes ", t.nbytes, " != ", want,
                                   " implied by shape and dtype")));
    }
    if (t.data == nullptr && t.nbytes > 0) {
      return absl::InvalidArgumentError(
          TensorError(path, t.name, "data is null"));
    }
  }
  for (const TensorInfo& t : tensors) {
    LOCKSTEP_RETURN_IF_ERROR(writer->Append(t.data, t.nbytes));
  }
  return writer->Finish();
}

}  // namespace lockstep::common
