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

bool IsSuccessEntry(const char* line, size_t n) {
  // Every line starts {"key":"...", written by the functions above.
  static const char kStart[] = "{\"key\":\"";
  static const char kValue[] = ",\"value\":";
  size_t i = sizeof(kStart) - 1;
  if (n < i || memcmp(line, kStart, i) != 0) return false;
  while (i < n && line[i] != '"') i += line[i] == '\\' ? 2 : 1;
  ++i;  // past the key's closing quote
  return i + sizeof(kValue) - 1 <= n && memcmp(line + i, kValue, sizeof(kValue) - 1) == 0;
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

void OutputReader::Filter(Result result, uint64_t skip, uint64_t count) {
  result_ = result;
  match_skip_ = skip;
  match_left_ = count;
}

bool OutputReader::FillLineHead() {
  if (buffer_pos_ == buffer_.size() && !Fill()) return false;
  for (;;) {
    size_t avail = buffer_.size() - buffer_pos_;
    if (avail >= kEntryHeadBytes || memchr(buffer_.data() + buffer_pos_, '\n', avail) != nullptr) {
      return true;
    }
    // The head straddles two blocks: keep the tail, read on after it.
    buffer_.erase(0, buffer_pos_);
    buffer_pos_ = 0;
    size_t have = buffer_.size();
    buffer_.resize(have + kReadBlockBytes);
    ssize_t n;
    do {
      n = pread(fd_, &buffer_[have], kReadBlockBytes, static_cast<off_t>(pos_));
    } while (n < 0 && errno == EINTR);
    buffer_.resize(have + static_cast<size_t>(n > 0 ? n : 0));
    if (n <= 0) return false;
    pos_ += static_cast<uint64_t>(n);
  }
}

bool OutputReader::NextFiltered(std::string* chunk, bool* failed) {
  if (!started_) {
    started_ = true;
    if (format_ == kArray) chunk->append("[");
  }
  while (remaining_ > 0 && match_left_ > 0 && chunk->size() < kReadBlockBytes) {
    if (at_line_start_) {
      if (!FillLineHead()) {
        *failed = true;
        finished_ = true;
        return false;
      }
      const char* head = buffer_.data() + buffer_pos_;
      bool success = IsSuccessEntry(head, buffer_.size() - buffer_pos_);
      keep_line_ = success == (result_ == kSucceeded);
      if (keep_line_ && match_skip_ > 0) {
        --match_skip_;
        keep_line_ = false;
      }
      // The array's separators go before each entry: whether another one
      // matches is not known until it is read.
      if (keep_line_ && format_ == kArray) chunk->append(yielded_ == 0 ? "\n" : ",\n");
      at_line_start_ = false;
    }
    if (buffer_pos_ == buffer_.size() && !Fill()) {
      *failed = true;
      finished_ = true;
      return false;
    }
    const char* start = buffer_.data() + buffer_pos_;
    size_t avail = buffer_.size() - buffer_pos_;
    const char* newline = static_cast<const char*>(memchr(start, '\n', avail));
    size_t len = newline ? static_cast<size_t>(newline - start) + 1 : avail;
    buffer_pos_ += len;
    if (keep_line_) chunk->append(start, newline && format_ == kArray ? len - 1 : len);
    if (!newline) continue;
    --remaining_;
    at_line_start_ = true;
    if (keep_line_) {
      ++yielded_;
      --match_left_;
    }
  }
  if (remaining_ == 0 || match_left_ == 0) {
    if (format_ == kArray) chunk->append(yielded_ == 0 ? "]\n" : "\n]\n");
    finished_ = true;
  }
  return true;
}

bool OutputReader::Next(std::string* chunk, bool* failed) {
  chunk->clear();
  *failed = false;
  if (finished_) return false;
  if (result_ != kAll) return NextFiltered(chunk, failed);
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
