#include "output.hpp"

#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "json.hpp"

namespace {

constexpr size_t kReadBlockBytes = 64 * 1024;

}  // namespace

void AppendSuccessEntry(const std::string& key, const std::string& value_json, std::string* out) {
  out->append("{\"key\":");
  AppendJsonString(key, out);
  out->append(",\"value\":").append(value_json).push_back('}');
}

std::string ErrorEntry(const std::string& key, long status, const std::string& message,
                       const std::string& body, int attempts) {
  std::string entry = "{\"key\":";
  AppendJsonString(key, &entry);
  entry.append(",\"error\":{\"status\":").append(std::to_string(status));
  entry.append(",\"message\":");
  AppendJsonString(message, &entry);
  if (!body.empty()) {
    entry.append(",\"body\":");
    AppendJsonString(body, &entry);
  }
  entry.append("},\"attempts\":").append(std::to_string(attempts)).push_back('}');
  return entry;
}

OutputReader::OutputReader(int fd, uint64_t begin, uint64_t skip, uint64_t count, Format format)
    : fd_(fd), pos_(begin), skip_(skip), remaining_(count), format_(format) {}

OutputReader::~OutputReader() { close(fd_); }

bool OutputReader::Fill() {
  buffer_.resize(kReadBlockBytes);
  ssize_t n;
  do {
    n = pread(fd_, &buffer_[0], buffer_.size(), static_cast<off_t>(pos_));
  } while (n < 0 && errno == EINTR);
  if (n <= 0) {
    buffer_.clear();
    return false;
  }
  buffer_.resize(static_cast<size_t>(n));
  buffer_pos_ = 0;
  pos_ += static_cast<uint64_t>(n);
  return true;
}

bool OutputReader::Next(std::string* chunk, bool* failed) {
  chunk->clear();
  *failed = false;
  if (finished_) return false;
  if (!started_) {
    started_ = true;
    if (format_ == kArray) chunk->append(remaining_ == 0 ? "[" : "[\n");
  }
  while (remaining_ > 0 && chunk->size() < kReadBlockBytes) {
    if (buffer_pos_ == buffer_.size() && !Fill()) {
      // The file ended before the entries it was known to hold.
      *failed = true;
      finished_ = true;
      return false;
    }
    const char* start = buffer_.data() + buffer_pos_;
    size_t avail = buffer_.size() - buffer_pos_;
    const char* newline = static_cast<const char*>(memchr(start, '\n', avail));
    size_t len = newline ? static_cast<size_t>(newline - start) + 1 : avail;
    buffer_pos_ += len;
    if (skip_ > 0) {
      if (newline) --skip_;
      continue;
    }
    if (!newline) {
      chunk->append(start, len);
      continue;
    }
    --remaining_;
    if (format_ == kNdjson) {
      chunk->append(start, len);
    } else {
      chunk->append(start, len - 1);
      chunk->append(remaining_ > 0 ? ",\n" : "\n");
    }
  }
  if (remaining_ == 0) {
    if (format_ == kArray) chunk->append("]\n");
    finished_ = true;
  }
  return true;
}
