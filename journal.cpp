#include "journal.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>

#include "crc32c.hpp"
#include "job.hpp"
#include "log.hpp"
#include "request.hpp"

namespace {

constexpr char kMagic[8] = {'p', 'm', 'm', 'a', 'p', 'j', 'n', 'l'};
constexpr uint32_t kVersion = 1;
constexpr size_t kHeaderBytes = 16;        // magic, version, a zero word
constexpr size_t kRecordHeaderBytes = 12;  // checksum, key length, value length
constexpr size_t kReadBlockBytes = 64 * 1024;
// Append keeps its buffer between calls up to this size; a larger batch's
// is freed, so that one huge PUT does not pin its size for the job's life.
constexpr size_t kMaxKeptBufferBytes = 4 << 20;

void PutLittle32(char* p, uint32_t v) {
  p[0] = static_cast<char>(v);
  p[1] = static_cast<char>(v >> 8);
  p[2] = static_cast<char>(v >> 16);
  p[3] = static_cast<char>(v >> 24);
}

uint32_t GetLittle32(const char* p) {
  const unsigned char* u = reinterpret_cast<const unsigned char*>(p);
  return static_cast<uint32_t>(u[0]) | static_cast<uint32_t>(u[1]) << 8 |
         static_cast<uint32_t>(u[2]) << 16 | static_cast<uint32_t>(u[3]) << 24;
}

std::string Header() {
  std::string header(kHeaderBytes, '\0');
  memcpy(&header[0], kMagic, sizeof(kMagic));
  PutLittle32(&header[sizeof(kMagic)], kVersion);
  return header;
}

// Writes data[0, n) at offset, going on after interrupted or short writes
// until all is written or one fails. Returns 0 or the errno of the failure.
int WriteAll(int fd, const char* data, size_t n, uint64_t offset) {
  while (n > 0) {
    ssize_t w = pwrite(fd, data, n, static_cast<off_t>(offset));
    if (w < 0 && errno == EINTR) continue;
    if (w < 0) return errno;
    if (w == 0) return EIO;  // never for a regular file; not a reason to spin
    data += w;
    n -= static_cast<size_t>(w);
    offset += static_cast<uint64_t>(w);
  }
  return 0;
}

int SyncData(int fd) {
  int rc;
  do {
    rc = fdatasync(fd);
  } while (rc != 0 && errno == EINTR);
  return rc == 0 ? 0 : errno;
}

// Flushes the directory holding path, so that a new file's name survives a
// power cut with its content.
int SyncDirectory(const std::string& path) {
  size_t slash = path.rfind('/');
  std::string dir = slash == std::string::npos ? "." : slash == 0 ? "/" : path.substr(0, slash);
  int fd = open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (fd < 0) return errno;
  int err = fsync(fd) == 0 ? 0 : errno;
  close(fd);
  return err;
}

// A failure to write: a full disk, a file-size limit or a failing device
// says the storage refused (507); anything else is the server's fault.
Status WriteError(const std::string& what, int err) {
  std::string message = what + ": " + strerror(err);
  if (err == ENOSPC || err == EDQUOT || err == EFBIG || err == EIO) {
    return Status::InsufficientStorage(message);
  }
  return Status::Internal(message);
}

}  // namespace

Journal::Journal(std::string path, FsyncPolicy policy, int fd, uint64_t size, uint64_t synced)
    : path_(std::move(path)), policy_(policy), fd_(fd), size_(size), synced_(synced) {}

Journal::~Journal() {
  {
    MutexLock lock(&mutex_);
    if (broken_.ok()) SyncLocked(size_);
  }
  close(fd_);
}

Status Journal::Open(const std::string& path, FsyncPolicy policy, std::unique_ptr<Journal>* journal,
                     uint64_t* records) {
  int fd = open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
  if (fd < 0) return WriteError("cannot open journal " + path, errno);
  bool created = false;
  uint64_t size = 0;
  uint64_t count = 0;
  Status s = CheckHeader(path, fd, &created, &size);
  if (s.ok() && !created) s = ScanRecords(path, fd, &size, &count);
  if (!s.ok()) {
    close(fd);
    return s;
  }
  // A new file was flushed whole; an old one may hold what a crashed
  // process wrote and never flushed, so the first SyncIfDirty flushes it.
  uint64_t synced = created ? size : 0;
  journal->reset(new Journal(path, policy, fd, size, synced));
  *records = count;
  return Status::OK();
}

Status Journal::CheckHeader(const std::string& path, int fd, bool* created, uint64_t* size) {
  struct stat st;
  if (fstat(fd, &st) != 0) return Status::Internal("cannot stat " + path + ": " + strerror(errno));
  const std::string header = Header();
  char head[kHeaderBytes] = {};
  size_t have = std::min(static_cast<size_t>(st.st_size), kHeaderBytes);
  if (have > 0 && pread(fd, head, have, 0) != static_cast<ssize_t>(have)) {
    return Status::Internal("cannot read journal " + path + ": " + strerror(errno));
  }
  if (have == kHeaderBytes && memcmp(head, kMagic, sizeof(kMagic)) == 0) {
    uint32_t version = GetLittle32(head + sizeof(kMagic));
    if (version != kVersion) {
      return Status::Internal("journal " + path + " has version " + std::to_string(version) +
                              "; this pmmap reads version " + std::to_string(kVersion));
    }
    *size = static_cast<uint64_t>(st.st_size);
    return Status::OK();
  }
  // Not a whole header: the file is new, or its creation was cut short (a
  // prefix of the header, or the zeros a power cut leaves): start afresh.
  bool zeros = std::all_of(head, head + have, [](char c) { return c == '\0'; });
  if (!zeros && memcmp(head, header.data(), have) != 0) {
    return Status::Internal(path + " is not a pmmap journal");
  }
  if (st.st_size > 0) {
    LogMessage("journal " + path + ": its header was cut short; " + std::to_string(st.st_size) +
               " bytes dropped");
  }
  int err = ftruncate(fd, 0) == 0 ? 0 : errno;
  if (err == 0) err = WriteAll(fd, header.data(), header.size(), 0);
  if (err == 0) err = SyncData(fd);
  if (err == 0) err = SyncDirectory(path);
  if (err != 0) return WriteError("cannot create journal " + path, err);
  *created = true;
  *size = kHeaderBytes;
  return Status::OK();
}

Status Journal::ScanRecords(const std::string& path, int fd, uint64_t* size, uint64_t* records) {
  JournalReader reader(path, kHeaderBytes, *size);
  Input input;
  std::string error;
  uint64_t count = 0;
  while (reader.Next(&input, &error)) ++count;
  if (!error.empty()) {
    // A file that cannot be read is refused: cutting it would lose records.
    if (reader.read_failed()) return Status::Internal("cannot read journal " + error);
    uint64_t keep = reader.offset();
    int err = ftruncate(fd, static_cast<off_t>(keep)) == 0 ? 0 : errno;
    if (err == 0) err = SyncData(fd);
    if (err != 0) return WriteError("cannot cut the tail of journal " + path, err);
    LogMessage("journal " + error + "; " + std::to_string(*size - keep) + " bytes cut off after " +
               std::to_string(count) + " records");
    *size = keep;
  }
  *records = count;
  return Status::OK();
}

Status Journal::Encode(const std::vector<Input>& inputs, size_t first, size_t last) {
  size_t total = 0;
  for (size_t i = first; i < last; ++i) {
    const Input& input = inputs[i];
    if (input.key.size() > kMaxKeyBytes || input.value.size() > kJournalMaxValueBytes) {
      return Status::Invalid("input " + std::to_string(i) + " is too long for the journal");
    }
    total += kRecordHeaderBytes + input.key.size() + input.value.size();
  }
  buffer_.clear();
  buffer_.reserve(total);
  for (size_t i = first; i < last; ++i) {
    const Input& input = inputs[i];
    size_t at = buffer_.size();
    buffer_.append(kRecordHeaderBytes, '\0');
    buffer_.append(input.key).append(input.value);
    char* record = &buffer_[at];
    PutLittle32(record + 4, static_cast<uint32_t>(input.key.size()));
    PutLittle32(record + 8, static_cast<uint32_t>(input.value.size()));
    PutLittle32(record, crc32c::Value(record + 4, buffer_.size() - at - 4));
  }
  return Status::OK();
}

Status Journal::Append(const std::vector<Input>& inputs, size_t first, size_t last, uint64_t* end) {
  MutexLock lock(&mutex_);
  if (!broken_.ok()) return broken_;
  Status s = Encode(inputs, first, last);
  if (s.ok() && !buffer_.empty()) {
    int err = WriteAll(fd_, buffer_.data(), buffer_.size(), size_);
    if (err == 0) {
      size_ += buffer_.size();
    } else {
      s = Status::InsufficientStorage("cannot append " + std::to_string(buffer_.size()) +
                                      " bytes to journal " + path_ + ": " + strerror(err));
      // Whatever part of the batch reached the file goes: a later Open
      // would read its whole records as accepted inputs.
      if (ftruncate(fd_, static_cast<off_t>(size_)) != 0) {
        broken_ = Status::InsufficientStorage(s.message() +
                                              ", and it cannot be cut back: " + strerror(errno));
        s = broken_;
      }
    }
  }
  if (buffer_.capacity() > kMaxKeptBufferBytes) std::string().swap(buffer_);
  *end = size_;
  return s;
}

Status Journal::WaitDurable(uint64_t end) {
  if (policy_ == FsyncPolicy::kEverySecond) return Status::OK();
  MutexLock lock(&mutex_);
  return SyncLocked(end);
}

Status Journal::SyncIfDirty() {
  MutexLock lock(&mutex_);
  if (!broken_.ok()) return broken_;
  return SyncLocked(size_);
}

Status Journal::SyncLocked(uint64_t end) {
  while (synced_ < end) {
    if (!broken_.ok()) return broken_;
    if (syncing_) {
      synced_cv_.Wait();
      continue;
    }
    // Lead: flush all that is written so far, for every waiter at once.
    syncing_ = true;
    uint64_t target = size_;
    mutex_.Unlock();
    int err = SyncData(fd_);
    mutex_.Lock();
    syncing_ = false;
    ++syncs_;
    if (err == 0) {
      synced_ = std::max(synced_, target);
    } else if (broken_.ok()) {
      broken_ = Status::InsufficientStorage("cannot flush journal " + path_ + ": " + strerror(err));
    }
    synced_cv_.SignalAll();
  }
  return Status::OK();
}

uint64_t Journal::size() const {
  MutexLock lock(&mutex_);
  return size_;
}

uint64_t Journal::durable() const {
  MutexLock lock(&mutex_);
  return synced_;
}

uint64_t Journal::syncs() const {
  MutexLock lock(&mutex_);
  return syncs_;
}

JournalReader::JournalReader(std::string path, uint64_t offset, uint64_t end)
    : path_(std::move(path)),
      end_(end),
      fd_(open(path_.c_str(), O_RDONLY | O_CLOEXEC)),
      errno_(fd_ < 0 ? errno : 0),
      offset_(offset) {}

JournalReader::~JournalReader() {
  if (fd_ >= 0) close(fd_);
}

bool JournalReader::Fill(size_t n) {
  if (length_ - start_ >= n) return true;
  // Keep the unread bytes, moved to the front, and read up to a block more
  // (or the n asked for, if longer), never past end_.
  size_t have = length_ - start_;
  if (have > 0 && start_ > 0) memmove(&buffer_[0], &buffer_[start_], have);
  start_ = 0;
  length_ = have;
  size_t want =
      static_cast<size_t>(std::min<uint64_t>(std::max(n, kReadBlockBytes), end_ - offset_));
  if (buffer_.size() < want) {
    buffer_.resize(want);
  } else if (buffer_.size() > kReadBlockBytes && want <= kReadBlockBytes) {
    buffer_.resize(kReadBlockBytes);  // a long record has passed: give its room back
    buffer_.shrink_to_fit();
  }
  while (length_ < want) {
    ssize_t r =
        pread(fd_, &buffer_[length_], want - length_, static_cast<off_t>(offset_ + length_));
    if (r < 0 && errno == EINTR) continue;
    if (r < 0) {
      read_failed_ = true;
      errno_ = errno;
      return false;
    }
    if (r == 0) break;  // the file is shorter than end_
    length_ += static_cast<size_t>(r);
  }
  return length_ >= n;
}

bool JournalReader::Fail(std::string* error, const std::string& what) {
  if (read_failed_) {
    *error = path_ + ": " + strerror(errno_) + " reading at offset " + std::to_string(offset_);
  } else {
    *error = path_ + ": " + what + " at offset " + std::to_string(offset_);
  }
  return false;
}

bool JournalReader::CheckHeader(std::string* error) {
  if (end_ == 0) return false;  // an empty journal: no header yet, no records
  if (end_ < kHeaderBytes || !Fill(kHeaderBytes)) return Fail(error, "the header is cut short");
  const char* head = buffer_.data() + start_;
  if (memcmp(head, kMagic, sizeof(kMagic)) != 0) return Fail(error, "not a pmmap journal");
  if (GetLittle32(head + sizeof(kMagic)) != kVersion) return Fail(error, "an unknown version");
  start_ += kHeaderBytes;
  offset_ += kHeaderBytes;
  return true;
}

bool JournalReader::Next(Input* input, std::string* error) {
  error->clear();
  if (fd_ < 0) {
    read_failed_ = true;
    return Fail(error, "cannot open");
  }
  if (offset_ == 0 && !CheckHeader(error)) return false;
  if (offset_ >= end_) return false;
  if (end_ - offset_ < kRecordHeaderBytes || !Fill(kRecordHeaderBytes)) {
    return Fail(error, "a record cut short");
  }
  const char* record = buffer_.data() + start_;
  uint32_t crc = GetLittle32(record);
  uint32_t key_bytes = GetLittle32(record + 4);
  uint32_t value_bytes = GetLittle32(record + 8);
  if (key_bytes > kMaxKeyBytes || value_bytes > kJournalMaxValueBytes) {
    return Fail(error, "a record with impossible lengths (key " + std::to_string(key_bytes) +
                           ", value " + std::to_string(value_bytes) + " bytes)");
  }
  size_t bytes = kRecordHeaderBytes + key_bytes + value_bytes;
  if (end_ - offset_ < bytes || !Fill(bytes)) return Fail(error, "a record cut short");
  record = buffer_.data() + start_;  // Fill may have moved it
  if (crc32c::Value(record + 4, bytes - 4) != crc) return Fail(error, "a record's checksum fails");
  input->key.assign(record + kRecordHeaderBytes, key_bytes);
  input->value.assign(record + kRecordHeaderBytes + key_bytes, value_bytes);
  start_ += bytes;
  offset_ += bytes;
  return true;
}
