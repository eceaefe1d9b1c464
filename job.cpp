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

bool LaterFirst(const Input& a, const Input& b) { return a.not_before > b.not_before; }

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

bool Job::SpendToken(Clock::time_point now, Clock::time_point* wake) {
  if (options_.rate_per_sec <= 0) return true;
  double elapsed = std::chrono::duration<double>(now - tokens_at_).count();
  tokens_ = std::min<double>(options_.concurrency, tokens_ + elapsed * options_.rate_per_sec);
  tokens_at_ = now;
  if (tokens_ >= 1) {
    tokens_ -= 1;
    return true;
  }
  // ParseJobOptions allows no rate under kMinRatePerSec, so the wait is at
  // most 1000 s: no overflow.
  *wake = now + std::chrono::duration_cast<Clock::duration>(
                    std::chrono::duration<double>((1 - tokens_) / options_.rate_per_sec));
  return false;
}

bool Job::NextInput(Input* input) {
  MutexLock lock(&mutex_);
  return NextInputLocked(input);
}

void Job::StoreOutcome(Input* input, const std::string& entry, bool success, const CallEnd& end) {
  MutexLock lock(&mutex_);
  StoreOutcomeLocked(input, entry, success, end);
}

void Job::RetryLater(Input* input, Clock::duration delay, bool pause_job, const CallEnd& end) {
  MutexLock lock(&mutex_);
  RetryLaterLocked(input, delay, pause_job, end);
}

bool Job::StoreOutcomeAndNext(Input* input, const std::string& entry, bool success,
                              const CallEnd& end, std::string* spent) {
  MutexLock lock(&mutex_);
  StoreOutcomeLocked(input, entry, success, end);
  if (spent != nullptr) spent->swap(input->value);
  return NextInputLocked(input);
}

bool Job::RetryLaterAndNext(Input* input, Clock::duration delay, bool pause_job,
                            const CallEnd& end) {
  MutexLock lock(&mutex_);
  RetryLaterLocked(input, delay, pause_job, end);
  return NextInputLocked(input);
}

bool Job::NextInputLocked(Input* input) {
  for (;;) {
    if (stopped()) break;
    if (backlog_left_ > 0 && queue_.size() * 2 <= static_cast<size_t>(options_.maxsize)) {
      RefillQueue();
    }
    Clock::time_point storage_wake;
    if (!StorageWritable(&storage_wake)) {
      work_cv_.WaitUntil(storage_wake);
      continue;
    }
    if (pending() == 0 && state_ != JobState::kOpen && adders_ == 0) break;
    // More workers than a lowered concurrency: this one goes.
    if (workers_ > options_.concurrency) break;
    // The common case needs no clock: no retry waits, no pause, no rate
    // limit, a closed circuit, so the lock is held for less time.
    if (delayed_.empty() && !queue_.empty() && paused_until_ == Clock::time_point() &&
        options_.rate_per_sec <= 0 && !paused_ && circuit_.Admits(in_flight_.size())) {
      PopQueue(input);
      return true;
    }
    Clock::time_point now = Clock::now();
    if (!circuit_.closed() && !paused_ && circuit_.OutageOver(now, options_)) {
      GiveUpOutage();
      continue;
    }
    Clock::time_point wake = Clock::time_point::max();
    bool retry_due = !delayed_.empty() && delayed_.front().not_before <= now;
    if (!delayed_.empty() && !retry_due) wake = delayed_.front().not_before;
    bool probe = false;
    if ((retry_due || !queue_.empty()) && MayCall(now, &wake, &probe)) {
      if (retry_due) {
        std::pop_heap(delayed_.begin(), delayed_.end(), LaterFirst);
        *input = std::move(delayed_.back());
        delayed_.pop_back();
        StartFlight(input);
      } else {
        PopQueue(input);
      }
      if (probe) circuit_.StartProbe(&input->ticket);
      return true;
    }
    if (wake == Clock::time_point::max()) {
      work_cv_.Wait();
    } else {
      work_cv_.WaitUntil(wake);
    }
  }
  --workers_;
  return false;
}

bool Job::MayCall(Clock::time_point now, Clock::time_point* wake, bool* probe) {
  if (paused_) return false;                                      // Unpause wakes the workers
  if (paused_until_ <= now) paused_until_ = Clock::time_point();  // over: back to the fast path
  if (paused_until_ > now) {
    *wake = std::min(*wake, paused_until_);
    return false;
  }
  if (!circuit_.closed()) {
    *wake = std::min(*wake, circuit_.OutageDeadline(options_));
    Clock::time_point probe_at = Clock::time_point::max();
    if (!circuit_.ProbeDue(now, &probe_at)) {
      *wake = std::min(*wake, probe_at);
      return false;
    }
    *probe = true;
  } else if (!circuit_.Admits(in_flight_.size())) {
    return false;  // a call's end wakes a worker
  }
  return SpendToken(now, wake);
}

void Job::PopQueue(Input* input) {
  *input = std::move(queue_.front());
  queue_.pop_front();
  // Wake a blocked Add only once a quarter of the queue is free, so that it
  // queues inputs in runs rather than one per wakeup.
  size_t maxsize = static_cast<size_t>(options_.maxsize);
  if (adders_ > 0 && queue_.size() + std::max<size_t>(1, maxsize / 4) <= maxsize) {
    room_cv_.SignalAll();
  }
  StartFlight(input);
}

void Job::StartFlight(Input* input) {
  ++input->attempts;
  ++input->calls;
  input->ticket = circuit_.Issue();
  input->in_flight_slot = in_flight_.size();
  in_flight_.push_back(input);
}

bool Job::EndFlight(Input* input) {
  size_t slot = input->in_flight_slot;
  if (slot >= in_flight_.size() || in_flight_[slot] != input) return false;
  in_flight_[slot] = in_flight_.back();
  in_flight_[slot]->in_flight_slot = slot;
  in_flight_.pop_back();
  return true;
}

void Job::StoreOutcomeLocked(Input* input, const std::string& entry, bool success,
                             const CallEnd& end) {
  if (!EndFlight(input) || discarded()) return;
  if (RecordCall(input, end)) return PutBack(input);
  WriteEntry(entry);
  ++outputs_;
  if (success) {
    ++succeeded_;
  } else {
    ++failed_;
    if (!files_.durable) KeepFailed(std::vector<Input>(1, *input), 0, 1);
  }
  Metrics::Global().OutputStored(success);
  MaybeDone();
}

void Job::RetryLaterLocked(Input* input, Clock::duration delay, bool pause_job,
                           const CallEnd& end) {
  if (!EndFlight(input) || discarded()) return;
  if (RecordCall(input, end)) return PutBack(input);
  Clock::time_point at = Clock::now() + delay;
  if (pause_job) paused_until_ = std::max(paused_until_, at);
  ++retries_;
  Metrics::Global().Retried();
  if (!end.spent) --input->attempts;
  input->not_before = at;
  delayed_.push_back(std::move(*input));
  std::push_heap(delayed_.begin(), delayed_.end(), LaterFirst);
  work_cv_.Signal();
}

bool Job::RecordCall(Input* input, const CallEnd& end) {
  const bool was_closed = circuit_.closed();
  const int limit = circuit_.limit();
  // A real answer needs no clock: the fast path stays without one.
  Clock::time_point now = end.signal == Signal::kAnswer ? Clock::time_point() : Clock::now();
  bool put_back = circuit_.Record(end.signal, input->ticket, end.error, now, options_);
  if (was_closed && !circuit_.closed()) {
    LogJobEvent(id_, "circuit", "opened: " + end.error);
  } else if (!was_closed && circuit_.closed()) {
    LogJobEvent(id_, "circuit", "closed: the webhook answered again");
    work_cv_.SignalAll();
  } else if (circuit_.limit() > limit) {
    work_cv_.Signal();  // room for one more call
  }
  if (put_back) Metrics::Global().RefusedByCircuit();
  return put_back;
}

void Job::GiveBack(Input* input) {
  MutexLock lock(&mutex_);
  if (!EndFlight(input) || discarded()) return;
  --input->calls;
  PutBack(input);
}

void Job::PutBack(Input* input) {
  --input->attempts;
  input->not_before = Clock::time_point();
  delayed_.push_back(std::move(*input));
  std::push_heap(delayed_.begin(), delayed_.end(), LaterFirst);
  work_cv_.Signal();
}

void Job::GiveUpOutage() {
  std::string message = "gave up after the webhook gave no real answer for " +
                        std::to_string(options_.max_outage_ms) + " ms (max_outage_ms)";
  if (!circuit_.last_error().empty()) message += "; last error: " + circuit_.last_error();
  LogJobEvent(id_, "circuit", "closed: " + message);
  FailEveryInputLeft(message);
  circuit_.Reset();
  MaybeDone();
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
