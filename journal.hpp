// The journal of a job: an append-only file of the inputs it accepted, key
// and compact JSON value, in the order accepted, so that a restarted pmmap
// can send again what has no outcome yet. A Journal owns the file's
// descriptor; the job appends each accepted batch (Append) and, before
// answering the PUT, waits until the batch is as durable as the policy
// says (WaitDurable); the server calls SyncIfDirty every second. A
// JournalReader reads the records back, on load and while a resumed job
// refills its queue.
//
// The file is a header, then records, integers little-endian:
//
//   header: "pmmapjnl" (8 bytes), u32 version (1), u32 zero
//   record: u32 crc32c of the rest, u32 key length, u32 value length, key, value
//
// A record is whole when its lengths are within the limits and its checksum
// matches. Open cuts the file at the first record that is not: a torn
// write, the zeros a power cut leaves, or any later damage; what follows a
// bad record is never read, since its boundaries cannot be trusted.
//
// Journal is thread-safe (provides internal synchronization); a
// JournalReader is not: one reader per user.

#ifndef PMMAP_JOURNAL_HPP_
#define PMMAP_JOURNAL_HPP_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "mutex.hpp"
#include "status.hpp"
#include "thread_annotations.hpp"

struct Input;  // job.hpp, which may include this header

// When appended records reach the disk: kEverySecond, at the server's
// SyncIfDirty calls (as Redis's appendfsync everysec); kAlways, before
// WaitDurable returns.
enum class FsyncPolicy { kEverySecond, kAlways };

// The longest value a record holds (keys: request.hpp's kMaxKeyBytes). A
// record that claims more is corrupt.
constexpr size_t kJournalMaxValueBytes = size_t{1} << 30;

class Journal {
 public:
  // Opens path, creating it (mode 0600) if missing; a new file and its
  // directory entry are flushed to disk before Open returns. An existing
  // journal is scanned: whole records are counted into *records; a torn or
  // corrupt tail is cut off (ftruncate, then fdatasync) and logged, never
  // read as data, never a reason to refuse the journal. A file that is not
  // a journal (another magic or version), or that cannot be read, is refused.
  static Status Open(const std::string& path, FsyncPolicy policy, std::unique_ptr<Journal>* journal,
                     uint64_t* records);
  // Flushes what is not yet on disk (errors ignored), then closes the file.
  ~Journal();
  Journal(const Journal&) = delete;
  Journal& operator=(const Journal&) = delete;

  // Appends inputs[first, last) as records with one write(2) at the end of
  // the file. On any failure (ENOSPC, EFBIG, EIO, a short write) the file is
  // cut back to its size before the call and Status::InsufficientStorage
  // says why: nothing of the batch remains. An input over the limits is
  // refused (Invalid) before anything is written. *end is the journal's
  // size after the batch: the bound to pass to WaitDurable.
  Status Append(const std::vector<Input>& inputs, size_t first, size_t last, uint64_t* end);
  // kAlways: blocks until the journal is on disk up to end (fdatasync).
  // Callers that wait at once share one fdatasync: one leader flushes what
  // is written so far while the others wait, and return if it covered
  // them. kEverySecond: returns at once.
  // Once an fdatasync has failed, the kernel may have dropped the pages it
  // could not write, so nothing written can be trusted to be on disk: every
  // later Append, WaitDurable and SyncIfDirty returns that first failure.
  Status WaitDurable(uint64_t end);
  // fdatasync if anything was appended since the last one; the server calls
  // it every second under kEverySecond.
  Status SyncIfDirty();

  uint64_t size() const;     // bytes of the header and the whole records
  uint64_t durable() const;  // the file is known to be on disk up to here
  const std::string& path() const { return path_; }
  FsyncPolicy policy() const { return policy_; }
  uint64_t syncs() const;  // fdatasync calls made so far, for tests and metrics

 private:
  Journal(std::string path, FsyncPolicy policy, int fd, uint64_t size, uint64_t synced);

  // Open's parts: checks the header, or writes it into an empty file (one
  // torn in its creation included); then counts the whole records and cuts
  // off what follows them, leaving *size the size of what is kept.
  static Status CheckHeader(const std::string& path, int fd, bool* created, uint64_t* size);
  static Status ScanRecords(const std::string& path, int fd, uint64_t* size, uint64_t* records);
  // Serializes inputs[first, last) into buffer_.
  Status Encode(const std::vector<Input>& inputs, size_t first, size_t last) REQUIRES(mutex_);
  // Flushes the file until synced_ >= end, leading or following a group
  // commit; releases mutex_ while it calls fdatasync.
  Status SyncLocked(uint64_t end) REQUIRES(mutex_);

  const std::string path_;
  const FsyncPolicy policy_;
  const int fd_;

  mutable Mutex mutex_;
  CondVar synced_cv_{&mutex_};               // a leader's fdatasync ended
  uint64_t size_ GUARDED_BY(mutex_);         // where the next record goes
  uint64_t synced_ GUARDED_BY(mutex_);       // the file is on disk up to here
  bool syncing_ GUARDED_BY(mutex_) = false;  // a leader is in fdatasync
  uint64_t syncs_ GUARDED_BY(mutex_) = 0;
  // The first failure that leaves the file in doubt (a failed fdatasync, or
  // a failed append that could not be cut back); refuses all from then on.
  Status broken_ GUARDED_BY(mutex_);
  std::string buffer_ GUARDED_BY(mutex_);  // Append's bytes, reused
};

// Reads a journal's records in order, from a record boundary, a block at a
// time, so that memory stays flat however long the journal (a record longer
// than a block is held whole). Not thread-safe: one reader per user.
class JournalReader {
 public:
  // Reads path's records from byte offset (0: the first; else a value from
  // offset()) up to end (a size the Journal reported).
  JournalReader(std::string path, uint64_t offset, uint64_t end);
  ~JournalReader();
  JournalReader(const JournalReader&) = delete;
  JournalReader& operator=(const JournalReader&) = delete;

  // Stores the next record in input->key and input->value (other fields
  // left as they are). Returns false at end, or on a read error or a bad
  // record (*error then says what and at which offset).
  bool Next(Input* input, std::string* error);
  uint64_t offset() const { return offset_; }  // of the next record
  // After Next returned false with an error: true if the file could not be
  // read (open or pread failed), false if a record was bad or cut short.
  bool read_failed() const { return read_failed_; }

 private:
  // Makes n bytes from offset_ available at buffer_[start_]; false if the
  // file ends first or cannot be read (read_failed_ then says which).
  bool Fill(size_t n);
  bool CheckHeader(std::string* error);
  bool Fail(std::string* error, const std::string& what);

  const std::string path_;
  const uint64_t end_;
  int fd_;
  int errno_;  // of the failed open or pread
  uint64_t offset_;
  bool read_failed_ = false;
  std::string buffer_;  // the file's bytes from offset_ - start_ on
  size_t start_ = 0;    // where offset_'s byte is in buffer_
  size_t length_ = 0;   // bytes of buffer_ read from the file
};

#endif  // PMMAP_JOURNAL_HPP_
