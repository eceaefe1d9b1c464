// What a job keeps on disk so that a restarted pmmap can resume it, beside
// its journal and its outcome file: the job record (its settings and
// lifecycle, DIR/{id}.job, replaced whole on every change) and the scan of
// the outcome file at start, which rebuilds the job's counters, its index
// and its key set, and cuts off a line torn by a crash. The job table saves
// a record when a job is created and when its state changes, and lists,
// loads and scans them all when the server starts.
//
// Every function is thread-compatible: it keeps no state of its own, so
// calls on different jobs may run at once; the caller serialises the calls
// that touch one job's files.

#ifndef PMMAP_JOB_STORE_HPP_
#define PMMAP_JOB_STORE_HPP_

#include <chrono>
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "job.hpp"
#include "key_table.hpp"
#include "status.hpp"

// The version written in every record; LoadJobRecord refuses any other.
constexpr int kJobRecordVersion = 1;
// The largest record LoadJobRecord reads: far more than a POST /job body
// needs, so anything larger is not a record.
constexpr int64_t kMaxJobRecordBytes = 1 << 20;

// A job's settings and lifecycle, as kept in DIR/{id}.job.
struct JobRecord {
  std::string id;
  JobOptions options;  // the secret included: resumed calls must be signed
  JobState state = JobState::kOpen;
  std::chrono::system_clock::time_point created_at;
  std::chrono::system_clock::time_point done_at;  // meaningful once done or cancelled
  bool paused = false;                            // by hand (POST /job/{id}/pause)
};

// The paths of a job's three files in dir.
std::string JobRecordPath(const std::string& dir, const std::string& id);  // dir/id.job
std::string JournalPath(const std::string& dir, const std::string& id);    // dir/id.journal
std::string OutcomePath(const std::string& dir, const std::string& id);    // dir/id.ndjson
// A job without a journal keeps the inputs whose outcome failed here, for a
// redrive (job.hpp); it is not part of a durable job.
std::string FailuresPath(const std::string& dir, const std::string& id);  // dir/id.failed

// The fields of POST /job as one JSON object, the secret included, as
// ParseJobOptions reads them back.
std::string JobOptionsJson(const JobOptions& options);

// Writes dir/{id}.job so that a crash leaves the old or the new version,
// never a mix: a temporary file (dir/{id}.job.tmp, mode 0600), fdatasync,
// rename over the record, fsync of dir. The record holds the secret: the
// caller creates dir with mode 0700. Times are kept to the millisecond.
Status SaveJobRecord(const std::string& dir, const JobRecord& record);
// Reads the record at path into *record. Returns Status::Invalid, naming
// the path and what is wrong, if the file is not a record of this version
// or its id is not the one its name says; Status::Internal if it cannot be
// read. *record is unchanged unless it returns OK.
Status LoadJobRecord(const std::string& path, JobRecord* record);
// Replaces *ids with the ids of every job record in dir (files named
// {id}.job; temporaries are ignored), oldest created_at first (ties by id).
// Records that cannot be loaded come last, so that the caller's
// LoadJobRecord meets them and decides what to do.
Status ListJobRecords(const std::string& dir, std::vector<std::string>* ids);

// What an outcome file held at start.
struct OutcomeScan {
  uint64_t entries = 0;
  uint64_t succeeded = 0;
  uint64_t failed = 0;
  uint64_t bytes = 0;           // of the whole entries kept; the file is cut to this
  std::vector<uint64_t> index;  // byte offset of entry i * stride, as Job keeps it
  KeyTable keys;                // KeyTable::Hash of every key with an entry
  uint64_t repeated_keys = 0;   // entries whose key had an entry before (never, unless a bug)
  // If set, each entry's key hash goes here instead of into keys, which
  // stays empty: a resuming job marks its own table, holding no second one.
  std::function<void(uint64_t key_hash)> on_key;
};

// Reads the outcome file at path whole (a block at a time; memory: the
// KeyTable, the index and the longest line) into *scan, counting its
// entries. A torn or unreadable line (no newline, not JSON, no string
// "key", not exactly one of "value" and "error") ends the entries kept:
// the file is cut there with ftruncate (and flushed), so that what follows
// a bad line is dropped too. A missing file is created empty (mode 0600)
// and gives an empty scan. index[0] is always 0, as Job's is. stride > 0.
Status ScanOutcomes(const std::string& path, uint64_t stride, OutcomeScan* scan);

// Parses the RFC 3339 time that Rfc3339 (log.hpp) writes,
// 2026-11-28T07:34:20.123Z, into *t. Returns false, *t unchanged, for any
// other text.
bool ParseRfc3339(const std::string& text, std::chrono::system_clock::time_point* t);

#endif  // PMMAP_JOB_STORE_HPP_
