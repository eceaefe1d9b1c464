#include "job.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <ctime>

#include "job_store.hpp"
#include "journal.hpp"
#include "json.hpp"
#include "log.hpp"
#include "metrics.hpp"

namespace {

const char kCancelled[] = "cancelled";

void AppendTime(std::chrono::system_clock::time_point t, std::string* out) {
  out->append("\"").append(Rfc3339(t)).append("\"");
}

void AppendField(const char* name, uint64_t value, std::string* out) {
  out->append(",\"").append(name).append("\":").append(std::to_string(value));
}

// The job's settings, as ToJson shows them.
void AppendOptions(const JobOptions& options, std::string* out) {
  AppendField("concurrency", static_cast<uint64_t>(options.concurrency), out);
  AppendField("maxsize", static_cast<uint64_t>(options.maxsize), out);
  AppendField("timeout_ms", static_cast<uint64_t>(options.timeout_ms), out);
  AppendField("max_attempts", static_cast<uint64_t>(options.max_attempts), out);
  AppendField("backoff_ms", static_cast<uint64_t>(options.backoff_ms), out);
  AppendField("max_backoff_ms", static_cast<uint64_t>(options.max_backoff_ms), out);
  out->append(",\"rate_per_sec\":");
  if (options.rate_per_sec > 0) {
    char buf[32];
    snprintf(buf, sizeof(buf), "%.17g", options.rate_per_sec);
    out->append(buf);
  } else {
    out->append("null");
  }
  AppendField("max_outage_ms", static_cast<uint64_t>(options.max_outage_ms), out);
  out->append(",\"adaptive\":").append(options.adaptive ? "true" : "false");
}

// The webhook's health as the job sees it, and whether it was paused by hand.
void AppendCircuit(const Circuit& circuit, bool paused, std::string* out) {
  out->append(",\"paused\":").append(paused ? "true" : "false");
  out->append(",\"circuit\":\"").append(CircuitStateName(circuit.state())).push_back('"');
  // While open, one probe at a time goes out.
  AppendField("effective_concurrency", circuit.closed() ? circuit.limit() : 1, out);
  out->append(",\"outage_since\":");
  if (circuit.closed()) {
    out->append("null");
  } else {
    AppendTime(circuit.outage_since(), out);
  }
  out->append(",\"last_error\":");
  if (circuit.last_error().empty()) {
    out->append("null");
    return;
  }
  out->append("{\"message\":");
  AppendJsonString(circuit.last_error(), out);
  out->append(",\"at\":");
  AppendTime(circuit.last_error_at(), out);
  out->push_back('}');
}

// The completion callback's object, or null if the job has none.
void AppendCallback(const std::string& url, const CallbackStatus& callback, std::string* out) {
  if (url.empty()) {
    out->append("null");
    return;
  }
  static const char* const kCallbackStates[] = {"waiting", "sending", "succeeded", "failed"};
  out->append("{\"url\":");
  AppendJsonString(url, out);
  out->append(",\"state\":\"").append(kCallbackStates[callback.state]).push_back('"');
  AppendField("attempts", static_cast<uint64_t>(callback.attempts), out);
  AppendField("status", static_cast<uint64_t>(callback.status), out);
  if (!callback.message.empty()) {
    out->append(",\"message\":");
    AppendJsonString(callback.message, out);
  }
  out->push_back('}');
}

}  // namespace

const char* JobStateName(JobState state) {
  switch (state) {
    case JobState::kOpen:
      return "open";
    case JobState::kClosing:
      return "closing";
    case JobState::kDone:
      return "done";
    case JobState::kCancelled:
      return "cancelled";
  }
  return "unknown";
}

Job::Job(std::string id, JobOptions options, JobFiles files, WorkerStarter start_worker)
    : id_(std::move(id)),
      files_(std::move(files)),
      path_(OutcomePath(files_.dir, id_)),
      start_worker_(std::move(start_worker)),
      options_(std::move(options)),
      circuit_(options_),
      tokens_(options_.concurrency),
      tokens_at_(Clock::now()) {
  created_at_ = std::chrono::system_clock::now();
}

Job::~Job() {
  // A job that goes without Discard (a test's, or one whose creation
  // failed) keeps its files only if they are durable.
  if (fd_ < 0) return;
  WriteOutcomes();
  close(fd_);
  if (!files_.durable) unlink(path_.c_str());
  if (failures_) unlink(FailuresPath(files_.dir, id_).c_str());
}

Status Job::DiscardedStatus() const {
  if (discarded_ == DiscardReason::kShutdown)
    return Status::Unavailable("the server is shutting down");
  if (discarded_ == DiscardReason::kExpired) return Status::NotFound("job " + id_ + " has expired");
  return Status::NotFound("job " + id_ + " was deleted");
}

Status Job::Add(std::vector<Input> batch) {
  // Hashing the inputs and finding repeats within the batch need no lock:
  // done first, so that workers wait less for it.
  std::vector<InputHashes> hashes;
  size_t first_clash = HashBatch(batch, &hashes);
  MutexLock lock(&mutex_);
  Status checked = CheckBatch(batch, first_clash, &hashes);
  if (!checked.ok()) return checked;
  KeepNewInputs(&hashes, &batch);
  // Accepted once journaled: a refused write (a full disk) accepts nothing.
  uint64_t journal_end = 0;
  if (journal_) {
    Status s = journal_->Append(batch, 0, batch.size(), &journal_end);
    if (!s.ok()) return s;
  }
  for (const InputHashes& h : hashes) keys_.Insert(h.key, h.value);

  ++adders_;
  size_t next = 0;
  const size_t maxsize = static_cast<size_t>(options_.maxsize);
  while (next < batch.size()) {
    while (!stopped() && queue_.size() >= maxsize) room_cv_.Wait();
    if (stopped()) break;
    size_t n = std::min(maxsize - queue_.size(), batch.size() - next);
    int to_start = Enqueue(&batch[next], n);
    next += n;
    StartWorkers(to_start);
  }
  --adders_;
  // The journal holds the whole batch: a cancel that cut it short gives
  // the rest their "cancelled" outcomes, so that a restart has none to send.
  if (journal_ && next < batch.size() && !discarded()) {
    inputs_ += batch.size() - next;
    for (size_t i = next; i < batch.size(); ++i) StoreFailure(batch[i], kCancelled);
  }
  MaybeDone();
  if (next < batch.size()) {
    if (discarded()) return DiscardedStatus();
    return Status::Conflict("job " + id_ + " was cancelled after " + std::to_string(next) + " of " +
                            std::to_string(batch.size()) + " inputs of this batch were queued");
  }
  if (!journal_) return Status::OK();
  // Under --fsync always, the answer waits for the disk; concurrent PUTs
  // share one flush.
  mutex_.Unlock();
  Status durable = journal_->WaitDurable(journal_end);
  mutex_.Lock();
  return durable;
}

Status Job::WaitForRoom(size_t n, const std::function<bool()>& give_up) {
  MutexLock lock(&mutex_);
  const size_t maxsize = static_cast<size_t>(options_.maxsize);
  n = std::min(n, std::max<size_t>(1, maxsize / 4));
  // Counted as an adder: PopQueue wakes adders when room frees, and a
  // closing job does not end while one waits.
  ++adders_;
  bool gave_up = false;
  Clock::time_point ask_at = Clock::now() + kGiveUpInterval;
  while (!stopped() && state_ == JobState::kOpen && queue_.size() + n > maxsize) {
    if (!give_up) {
      room_cv_.Wait();
      continue;
    }
    if (room_cv_.WaitUntil(ask_at)) continue;
    mutex_.Unlock();
    gave_up = give_up();
    mutex_.Lock();
    if (gave_up) break;
    ask_at = Clock::now() + kGiveUpInterval;
  }
  --adders_;
  MaybeDone();
  if (discarded()) return DiscardedStatus();
  if (gave_up) return Status::Unavailable("the caller gave up waiting for room");
  return Status::OK();
}

void Job::StartWorkers(int n) {
  if (n <= 0 || !start_worker_) return;
  // Starting threads is slow: workers and API calls need not wait for it.
  mutex_.Unlock();
  int failed = 0;
  for (int i = 0; i < n; ++i) {
    if (!start_worker_(shared_from_this())) ++failed;
  }
  mutex_.Lock();
  workers_ -= failed;
}

size_t Job::HashBatch(const std::vector<Input>& batch, std::vector<InputHashes>* hashes) {
  hashes->resize(batch.size());
  size_t first_clash = batch.size();
  KeyTable batch_keys;
  for (size_t i = 0; i < batch.size(); ++i) {
    InputHashes& h = (*hashes)[i];
    h.key = KeyTable::KeyHash(batch[i].key);
    h.value = KeyTable::ValueHash(batch[i].key, batch[i].value);
    uint64_t earlier = 0;
    if (batch_keys.Find(h.key, &earlier)) {
      h.repeat = true;
      if (earlier != h.value && first_clash == batch.size()) first_clash = i;
    } else {
      batch_keys.Insert(h.key, h.value);
    }
  }
  return first_clash;
}

Status Job::CheckBatch(const std::vector<Input>& batch, size_t first_clash,
                       std::vector<InputHashes>* hashes) {
  if (discarded()) return DiscardedStatus();
  if (state_ == JobState::kCancelled) {
    return Status::Conflict("job " + id_ + " is cancelled: it accepts no more inputs");
  }
  if (state_ != JobState::kOpen) {
    return Status::Conflict("job " + id_ + " is complete: it accepts no more inputs");
  }
  for (size_t i = 0; i < batch.size(); ++i) {
    InputHashes& h = (*hashes)[i];
    uint64_t accepted = 0;
    if (!h.repeat && keys_.Find(h.key, &accepted)) {
      if (accepted != h.value) {
        return Status::Conflict("input[" + std::to_string(i) + "].key \"" + batch[i].key +
                                "\" is already used in this job with a different value");
      }
      h.repeat = true;
    }
    if (i == first_clash) {
      return Status::Conflict("input[" + std::to_string(i) + "].key \"" + batch[i].key +
                              "\" repeats an earlier key of this batch with a different value");
    }
  }
  return Status::OK();
}

void Job::KeepNewInputs(std::vector<InputHashes>* hashes, std::vector<Input>* batch) {
  size_t kept = 0;
  for (size_t i = 0; i < batch->size(); ++i) {
    if ((*hashes)[i].repeat) continue;
    if (kept != i) {
      (*batch)[kept] = std::move((*batch)[i]);
      (*hashes)[kept] = (*hashes)[i];
    }
    ++kept;
  }
  batch->resize(kept);
  hashes->resize(kept);
}

int Job::Enqueue(Input* first, size_t n) {
  for (size_t i = 0; i < n; ++i) queue_.push_back(std::move(first[i]));
  inputs_ += n;
  Metrics::Global().InputsAccepted(n);
  int to_start = CountMoreWorkers();
  if (n >= static_cast<size_t>(workers_)) {
    work_cv_.SignalAll();
  } else {
    for (size_t i = 0; i < n; ++i) work_cv_.Signal();
  }
  return to_start;
}

Status Job::Complete() {
  MutexLock lock(&mutex_);
  if (discarded()) return DiscardedStatus();
  if (state_ == JobState::kOpen) {
    state_ = JobState::kClosing;
    LogJobEvent(id_, "completed");
    SaveRecord();
    MaybeDone();
    work_cv_.SignalAll();  // idle workers re-check whether to exit
  }
  return Status::OK();
}

Status Job::Cancel() {
  MutexLock lock(&mutex_);
  if (discarded()) return DiscardedStatus();
  if (ended()) return Status::OK();
  state_ = JobState::kCancelled;
  calls_abandoned_ = true;
  FailEveryInputLeft(kCancelled);
  circuit_.Reset();
  OnEnd();
  return Status::OK();
}

void Job::FailEveryInputLeft(const std::string& message) {
  // In-flight inputs get their entry now; their workers' results are
  // dropped when they arrive (StoreOutcome and RetryLater find them gone).
  for (Input* input : in_flight_) StoreFailure(*input, message);
  for (const Input& input : delayed_) StoreFailure(input, message);
  for (const Input& input : queue_) StoreFailure(input, message);
  if (!files_.durable) {
    // Their values are kept for a redrive, in one write.
    std::vector<Input> failed = std::move(delayed_);
    for (Input* input : in_flight_) failed.push_back(*input);
    for (Input& input : queue_) failed.push_back(std::move(input));
    KeepFailed(failed, 0, failed.size());
  }
  in_flight_.clear();
  delayed_.clear();
  queue_.clear();
  FailBacklog(message);
  room_cv_.SignalAll();
}

void Job::StoreFailure(const Input& input, const std::string& message) {
  WriteEntry(ErrorEntry(input.key, 0, message, "", input.attempts));
  ++failed_;
  ++outputs_;
  Metrics::Global().OutputStored(false);
}

Status Job::Pause() {
  MutexLock lock(&mutex_);
  if (discarded()) return DiscardedStatus();
  if (ended()) return Status::Conflict("job " + id_ + " has ended: there is nothing to pause");
  if (!paused_) {
    paused_ = true;
    paused_at_ = Clock::now();
    LogJobEvent(id_, "paused");
    SaveRecord();
  }
  return Status::OK();
}

Status Job::Unpause() {
  MutexLock lock(&mutex_);
  if (discarded()) return DiscardedStatus();
  if (ended()) return Status::Conflict("job " + id_ + " has ended: there is nothing to resume");
  if (paused_) {
    paused_ = false;
    // The outage budget counts time the job tried, not time it was told to wait.
    circuit_.Postpone(Clock::now() - paused_at_);
    LogJobEvent(id_, "resumed");
    SaveRecord();
    work_cv_.SignalAll();
  }
  return Status::OK();
}

Status Job::Change(const std::function<Status(JobOptions*)>& edit) {
  MutexLock lock(&mutex_);
  if (discarded()) return DiscardedStatus();
  if (ended()) return Status::Conflict("job " + id_ + " has ended: its settings no longer matter");
  JobOptions changed = options_;
  Status s = edit(&changed);
  if (!s.ok()) return s;
  options_.concurrency = changed.concurrency;
  options_.rate_per_sec = changed.rate_per_sec;
  options_.timeout_ms = changed.timeout_ms;
  options_.max_attempts = changed.max_attempts;
  options_.backoff_ms = changed.backoff_ms;
  options_.max_backoff_ms = changed.max_backoff_ms;
  options_.max_outage_ms = changed.max_outage_ms;
  options_.adaptive = changed.adaptive;
  options_version_.fetch_add(1, std::memory_order_release);
  circuit_.Retune(options_);
  SaveRecord();
  work_cv_.SignalAll();  // a higher limit lets waiting workers go; a lower one lets some exit
  StartWorkers(CountMoreWorkers());
  return Status::OK();
}

JobOptions Job::options() {
  MutexLock lock(&mutex_);
  return options_;
}

bool Job::RefreshOptions(uint32_t* version, JobOptions* options) {
  uint32_t now = options_version_.load(std::memory_order_acquire);
  if (now == *version) return false;
  MutexLock lock(&mutex_);
  *options = options_;
  *version = options_version_.load(std::memory_order_relaxed);
  return true;
}

int Job::CountMoreWorkers() {
  int wanted = static_cast<int>(std::min<size_t>(queue_.size(), options_.concurrency));
  int more = std::max(0, wanted - workers_);
  workers_ += more;
  return more;
}

void Job::Discard(DiscardReason reason) {
  MutexLock lock(&mutex_);
  if (discarded()) return;
  discarded_ = reason;
  if (reason != DiscardReason::kShutdown) AbandonCalls();
  circuit_.Reset();
  CloseFiles();
  queue_.clear();
  delayed_.clear();
  backlog_.reset();
  backlog_left_ = 0;
  room_cv_.SignalAll();
  work_cv_.SignalAll();
  done_cv_.SignalAll();
}

Status Job::WaitDone(const std::function<bool()>& give_up) {
  MutexLock lock(&mutex_);
  Clock::time_point ask_at = Clock::now() + kGiveUpInterval;
  while (!ended() && !discarded()) {
    if (!give_up) {
      done_cv_.Wait();
      continue;
    }
    // Signalled (or woken spuriously) before ask_at, or the job ended: look again.
    if (done_cv_.WaitUntil(ask_at) || ended() || discarded()) continue;
    mutex_.Unlock();
    bool quit = give_up();
    mutex_.Lock();
    if (quit && !ended() && !discarded()) {
      return Status::Unavailable("the caller gave up waiting");
    }
    ask_at = Clock::now() + kGiveUpInterval;
  }
  if (discarded()) return DiscardedStatus();
  return Status::OK();
}

Status Job::OpenOutput(uint64_t offset, uint64_t limit, OutputReader::Format format,
                       std::unique_ptr<OutputReader>* reader) {
  MutexLock lock(&mutex_);
  if (discarded()) return DiscardedStatus();
  // What could not be written yet (a full disk) is not shown yet either:
  // a reader gets the whole entries on disk.
  WriteOutcomes();
  const uint64_t on_disk = outputs_ - std::count(unwritten_.begin(), unwritten_.end(), '\n');
  int fd = open(path_.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) return Status::Unavailable("cannot read " + path_ + ": " + strerror(errno));
  uint64_t first = std::min(offset, on_disk);
  uint64_t count = std::min(limit, on_disk - first);
  uint64_t begin = count == 0 ? 0 : index_[first / kIndexStride];
  reader->reset(new OutputReader(fd, begin, first % kIndexStride, count, format));
  return Status::OK();
}

JobState Job::state() {
  MutexLock lock(&mutex_);
  return state_;
}

std::string Job::ToJson() {
  std::string out = "{\"id\":";
  AppendJsonString(id_, &out);
  MutexLock lock(&mutex_);  // options_ too: PATCH may change them
  out.append(",\"url\":");
  AppendJsonString(options_.url, &out);
  out.append(",\"state\":\"").append(JobStateName(state_)).push_back('"');
  AppendField("inputs", inputs_, &out);
  AppendField("outputs", outputs_, &out);
  AppendField("pending", pending(), &out);
  AppendField("in_flight", in_flight_.size(), &out);
  AppendField("succeeded", succeeded_, &out);
  AppendField("failed", failed_, &out);
  AppendField("retries", retries_, &out);
  AppendOptions(options_, &out);
  AppendCircuit(circuit_, paused_, &out);
  out.append(",\"created_at\":");
  AppendTime(created_at_, &out);
  out.append(",\"done_at\":");
  if (ended()) {
    AppendTime(done_at_, &out);
  } else {
    out.append("null");
  }
  out.append(",\"callback\":");
  AppendCallback(options_.callback_url, callback_, &out);
  out.append(",\"redrive_of\":");
  if (options_.redrive_of.empty()) {
    out.append("null");
  } else {
    AppendJsonString(options_.redrive_of, &out);
  }
  out.append(",\"storage_error\":");
  if (storage_error_.empty()) {
    out.append("null");
  } else {
    AppendJsonString(storage_error_, &out);
  }
  out.push_back('}');
  return out;
}

void Job::MaybeDone() {
  // A discarded job never ends: its file is gone and its waiters answered.
  if (discarded()) return;
  if (state_ != JobState::kClosing || adders_ > 0 || pending() > 0 || !in_flight_.empty()) return;
  // Not done before every outcome is written: Tick tries again.
  if (!WriteOutcomes()) return;
  state_ = JobState::kDone;
  OnEnd();
}

void Job::OnEnd() {
  done_at_ = std::chrono::system_clock::now();
  // The outcomes reach the file before the record says the job ended.
  WriteOutcomes();
  SaveRecord();
  LogJobEvent(id_, JobStateName(state_),
              std::to_string(succeeded_) + " succeeded, " + std::to_string(failed_) + " failed");
  room_cv_.SignalAll();
  work_cv_.SignalAll();
  done_cv_.SignalAll();
  if (on_end_ && !on_end_(shared_from_this())) {
    callback_.state = CallbackStatus::kFailed;
    callback_.message = "no thread could be started to send it";
  }
}

bool Job::EndedBy(std::chrono::system_clock::time_point cutoff) {
  MutexLock lock(&mutex_);
  return ended() && done_at_ <= cutoff;
}

bool Job::SleepUnlessDiscarded(Clock::duration duration) {
  MutexLock lock(&mutex_);
  Clock::time_point until = Clock::now() + duration;
  while (!discarded()) {
    if (!done_cv_.WaitUntil(until)) break;  // slept the whole duration
  }
  return !discarded();
}

void Job::SetCallbackStatus(const CallbackStatus& status) {
  MutexLock lock(&mutex_);
  callback_ = status;
}
