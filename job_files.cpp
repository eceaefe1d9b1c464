// Job's files: creating and reading back the outcome file, the journal and
// the record (job_store.hpp), writing outcomes out and pausing when that
// fails, and resuming a durable job that a previous process left. The rest
// of Job, its queue and lifecycle, is in job.cpp; its worker side is in
// job_worker.cpp.

#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

#include "job.hpp"
#include "job_store.hpp"
#include "journal.hpp"
#include "log.hpp"

namespace {

// Outcome lines are written out in runs of this many bytes.
constexpr size_t kFileBufferBytes = 64 * 1024;

}  // namespace

Status Job::OpenOutcomeFile(bool create) {
  int flags = O_WRONLY | O_APPEND | O_CLOEXEC | (create ? O_CREAT | O_EXCL : 0);
  fd_ = open(path_.c_str(), flags, 0600);
  if (fd_ < 0) return Status::Internal("cannot open " + path_ + ": " + strerror(errno));
  unwritten_.reserve(kFileBufferBytes);
  return Status::OK();
}

Status Job::Open() {
  MutexLock lock(&mutex_);
  index_.push_back(0);
  Status s = OpenOutcomeFile(/*create=*/true);
  if (!s.ok() || !files_.durable) return s;
  uint64_t records = 0;
  s = Journal::Open(JournalPath(files_.dir, id_), files_.fsync, &journal_, &records);
  if (s.ok()) s = SaveJobRecord(files_.dir, Record());
  return s;
}

JobRecord Job::Record() const {
  JobRecord record;
  record.id = id_;
  record.options = options_;
  record.state = state_;
  record.created_at = created_at_;
  record.done_at = done_at_;
  record.paused = paused_;
  return record;
}

void Job::SaveRecord() {
  if (!files_.durable) return;
  Status s = SaveJobRecord(files_.dir, Record());
  if (!s.ok()) LogJobEvent(id_, "failure", "cannot save the job's state: " + s.message());
}

void Job::CloseFiles() {
  if (fd_ >= 0) {
    WriteOutcomes();
    close(fd_);
    fd_ = -1;
  }
  // A shutdown keeps a durable job: what it accepted reaches the disk.
  if (journal_ && files_.durable && discarded_ == DiscardReason::kShutdown) {
    Status s = journal_->SyncIfDirty();
    if (!s.ok()) LogJobEvent(id_, "failure", s.message());
    return;
  }
  unlink(path_.c_str());
  if (failures_) {
    failures_.reset();
    unlink(FailuresPath(files_.dir, id_).c_str());
  }
  if (files_.durable) {
    unlink(JournalPath(files_.dir, id_).c_str());
    unlink(JobRecordPath(files_.dir, id_).c_str());
  }
}

void Job::KeepFailed(const std::vector<Input>& inputs, size_t first, size_t last) {
  if (first == last) return;
  Status s;
  if (!failures_) {
    uint64_t records = 0;
    s = Journal::Open(FailuresPath(files_.dir, id_), FsyncPolicy::kEverySecond, &failures_,
                      &records);
  }
  uint64_t end = 0;
  if (s.ok()) s = failures_->Append(inputs, first, last, &end);
  // Only a redrive needs them, and it says which it could not find.
  if (!s.ok()) LogJobEvent(id_, "failure", "cannot keep failed inputs: " + s.message());
}

Status Job::OpenKeptInputs(std::unique_ptr<JournalReader>* reader) {
  MutexLock lock(&mutex_);
  if (discarded()) return DiscardedStatus();
  Journal* kept = journal_ ? journal_.get() : failures_.get();
  reader->reset(kept != nullptr ? new JournalReader(kept->path(), 0, kept->size()) : nullptr);
  return Status::OK();
}

void Job::Tick() {
  if (journal_) {
    Status s = journal_->SyncIfDirty();
    if (!s.ok()) LogJobEvent(id_, "failure", s.message());
  }
  MutexLock lock(&mutex_);
  if (discarded()) return;
  // Outcomes are written out at least once a second, so that a crash loses
  // no more than a second of them (their inputs are sent again).
  if (storage_error_.empty()) {
    if (!unwritten_.empty()) WriteOutcomes();
    return;
  }
  if (Clock::now() < storage_retry_at_ || !WriteOutcomes()) return;
  MaybeDone();
  work_cv_.SignalAll();  // paused workers go on
}

void Job::FailBacklog(const std::string& message) {
  Input input;
  std::string error;
  while (backlog_left_ > 0 && backlog_->Next(&input, &error)) {
    // Skips the inputs with an outcome, and any later copy of one it took.
    if (!keys_.MarkDone(KeyTable::KeyHash(input.key))) continue;
    StoreFailure(input, message);
    --backlog_left_;
  }
  DropBacklog(error);
}

void Job::RefillQueue() {
  const size_t maxsize = static_cast<size_t>(options_.maxsize);
  Input input;
  std::string error;
  while (backlog_left_ > 0 && queue_.size() < maxsize && backlog_->Next(&input, &error)) {
    // Skips the inputs with an outcome, and any later copy of one it took.
    if (!keys_.MarkDone(KeyTable::KeyHash(input.key))) continue;
    input.attempts = 0;
    input.calls = 0;
    queue_.push_back(std::move(input));
    --backlog_left_;
  }
  if (backlog_left_ == 0 || !error.empty()) DropBacklog(error);
}

void Job::DropBacklog(const std::string& error) {
  if (backlog_left_ > 0) {
    // The journal could not be read to its end: what is left is lost, and
    // no longer counted, so that the job can still end.
    LogJobEvent(id_, "failure",
                "journal: " + (error.empty() ? std::string("ended early") : error) + "; " +
                    std::to_string(backlog_left_) + " inputs without an outcome are lost");
    inputs_ -= backlog_left_;
    backlog_left_ = 0;
  }
  backlog_.reset();
}

Status Job::Resume(const JobRecord& record) {
  MutexLock lock(&mutex_);
  state_ = record.state;
  created_at_ = record.created_at;
  done_at_ = record.done_at;
  paused_ = record.paused && !ended();
  paused_at_ = Clock::now();
  uint64_t records = 0;
  Status s = Journal::Open(JournalPath(files_.dir, id_), files_.fsync, &journal_, &records);
  uint64_t marked = 0;
  if (s.ok() && ended()) {
    s = ReadBackOutcomes(/*mark_keys=*/false, &marked);
    // An ended job with every outcome takes no more inputs: its keys are not
    // needed, and a long journal need not be read.
    if (s.ok() && records <= outputs_) {
      inputs_ = outputs_;
      return OpenOutcomeFile(/*create=*/false);
    }
  }
  // The journal's keys first, then the outcomes mark theirs: one table.
  if (s.ok()) s = ReadBackJournal(records);
  if (s.ok()) s = ReadBackOutcomes(/*mark_keys=*/true, &marked);
  if (s.ok()) s = OpenOutcomeFile(/*create=*/false);
  if (!s.ok()) return s;
  const uint64_t left = keys_.size() - marked;
  // Counted so that inputs == pending + in flight + outputs, as always.
  inputs_ = outputs_ + left;
  backlog_left_ = left;
  if (left > 0) backlog_.reset(new JournalReader(journal_->path(), 0, journal_->size()));
  ResumeWork();
  return Status::OK();
}

Status Job::ReadBackJournal(uint64_t records) {
  keys_.Reserve(records);
  JournalReader reader(journal_->path(), 0, journal_->size());
  Input input;
  std::string error;
  while (reader.Next(&input, &error)) {
    keys_.Insert(KeyTable::KeyHash(input.key), KeyTable::ValueHash(input.key, input.value));
  }
  if (!error.empty()) return Status::Internal("cannot read " + journal_->path() + ": " + error);
  return Status::OK();
}

Status Job::ReadBackOutcomes(bool mark_keys, uint64_t* marked) {
  OutcomeScan scan;
  // Marks through a pointer taken with mutex_ held: the scan calls back
  // within this call.
  KeyTable* keys = &keys_;
  *marked = 0;
  scan.on_key = [mark_keys, keys, marked](uint64_t hash) {
    if (mark_keys && keys->MarkDone(hash)) ++*marked;
  };
  Status s = ScanOutcomes(path_, kIndexStride, &scan);
  if (!s.ok()) return s;
  outputs_ = scan.entries;
  succeeded_ = scan.succeeded;
  failed_ = scan.failed;
  file_bytes_ = scan.bytes;
  index_ = std::move(scan.index);
  if (index_.empty()) index_.push_back(0);
  return Status::OK();
}

void Job::ResumeWork() {
  // Outcomes written but lost before they reached the disk, although the
  // record said the job had ended: a done job sends those inputs again, a
  // cancelled one stores their "cancelled" entries.
  if (state_ == JobState::kCancelled) FailBacklog("cancelled");
  if (state_ == JobState::kDone && backlog_left_ > 0) state_ = JobState::kClosing;
  if (ended()) return;
  RefillQueue();
  StartWorkers(CountMoreWorkers());
  MaybeDone();
}

void Job::WriteEntry(const std::string& entry) {
  if (outputs_ % kIndexStride == 0 && outputs_ / kIndexStride >= index_.size()) {
    index_.push_back(file_bytes_);
  }
  unwritten_.append(entry).push_back('\n');
  file_bytes_ += entry.size() + 1;
  if (unwritten_.size() >= kFileBufferBytes && storage_error_.empty()) WriteOutcomes();
}

bool Job::WriteOutcomes() {
  size_t done = 0;
  while (done < unwritten_.size()) {
    ssize_t n = write(fd_, unwritten_.data() + done, unwritten_.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      std::string error = strerror(errno);
      unwritten_.erase(0, done);
      if (storage_error_.empty()) {
        LogJobEvent(id_, "failure", "cannot write outcomes, pausing: " + error);
      }
      storage_error_ = "cannot write to " + path_ + ": " + error;
      storage_retry_at_ = Clock::now() + kStorageRetry;
      return false;
    }
    done += static_cast<size_t>(n);
  }
  unwritten_.clear();
  if (!storage_error_.empty()) {
    storage_error_.clear();
    LogJobEvent(id_, "resumed", "outcomes are written again");
  }
  return true;
}

bool Job::StorageWritable(Clock::time_point* wake) {
  if (storage_error_.empty()) return true;
  if (Clock::now() >= storage_retry_at_ && WriteOutcomes()) return true;
  *wake = storage_retry_at_;
  return false;
}
