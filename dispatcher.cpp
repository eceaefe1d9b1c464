#include "dispatcher.hpp"

#include <random>
#include <string>
#include <utility>

#include "json.hpp"
#include "log.hpp"
#include "metrics.hpp"
#include "webhook.hpp"

namespace {

// How much of a failed reply's body its error entry keeps.
constexpr size_t kErrorBodyBytes = 256;

// A worker's stack. Measured: the whole test suite, https calls and 128
// levels of JSON in replies included, passes with 64 KiB; this leaves
// four times that. The sanitizers' frames are far larger.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr size_t kWorkerStackBytes = 8 << 20;
#else
constexpr size_t kWorkerStackBytes = 256 << 10;
#endif

// A new thread's start: runs and frees the body StartThread gave it.
void* RunBody(void* body_ptr) {
  std::unique_ptr<std::function<void()>> body(static_cast<std::function<void()>*>(body_ptr));
  (*body)();
  return nullptr;
}

}  // namespace

Dispatcher::Dispatcher(Options options, size_t max_workers)
    : options_(std::move(options)), max_workers_(max_workers), exit_cv_(&mutex_) {
  MutexLock lock(&mutex_);
  PublishBudget();
}

Dispatcher::~Dispatcher() {
  // Join outside mutex_: an exiting thread takes it to announce its exit.
  for (;;) {
    ThreadList threads;
    {
      MutexLock lock(&mutex_);
      if (threads_.empty()) break;
      threads.swap(threads_);
      finished_.clear();
    }
    for (pthread_t t : threads) pthread_join(t, nullptr);
  }
}

bool Dispatcher::StartWorker(std::shared_ptr<Job> job) {
  {
    MutexLock lock(&mutex_);
    if (running_ >= max_workers_) {
      Claim& claim = claims_[job.get()];
      if (claim.wanted++ == 0) line_.push_back(job);
      PublishBudget();
      return true;
    }
    TakeSlot(job);
  }
  if (StartThread([this, job] { RunWorker(job); })) return true;
  MutexLock lock(&mutex_);
  ReleaseSlot(job.get());
  return false;
}

bool Dispatcher::StartCallback(std::shared_ptr<Job> job) {
  return StartThread([this, job] { RunCallback(job); });
}

bool Dispatcher::StartThread(std::function<void()> body) {
  MutexLock lock(&mutex_);
  JoinFinished();
  ThreadList::iterator self = threads_.emplace(threads_.end());
  // The new thread cannot announce its exit before pthread_create has
  // stored its id in *self: that needs mutex_, held here.
  auto* run = new std::function<void()>([this, self, body = std::move(body)]() mutable {
    body();
    body = nullptr;  // a job may be destroyed here, before this thread is joined
    MutexLock lock(&mutex_);
    finished_.push_back(self);
    exit_cv_.SignalAll();
  });
  // std::thread cannot be given a stack size, hence pthreads.
  pthread_attr_t attr;
  bool started = pthread_attr_init(&attr) == 0;
  if (started) {
    pthread_attr_setstacksize(&attr, kWorkerStackBytes);
    started = pthread_create(&*self, &attr, RunBody, run) == 0;
    pthread_attr_destroy(&attr);
  }
  if (!started) {
    delete run;
    threads_.erase(self);
  }
  return started;
}

bool Dispatcher::WaitForExit(Clock::duration timeout) {
  const Clock::time_point deadline = Clock::now() + timeout;
  MutexLock lock(&mutex_);
  while (finished_.size() != threads_.size()) {
    if (!exit_cv_.WaitUntil(deadline)) return finished_.size() == threads_.size();
  }
  return true;
}

void Dispatcher::JoinExited() {
  MutexLock lock(&mutex_);
  JoinFinished();
}

void Dispatcher::JoinFinished() {
  for (ThreadList::iterator it : finished_) {
    pthread_join(*it, nullptr);
    threads_.erase(it);
  }
  finished_.clear();
}

void Dispatcher::TakeSlot(const std::shared_ptr<Job>& job) {
  ++claims_[job.get()].running;
  ++running_;
  PublishBudget();
}

void Dispatcher::ReleaseSlot(const Job* job) {
  auto it = claims_.find(job);
  if (--it->second.running == 0 && it->second.wanted == 0) claims_.erase(it);
  --running_;
  PublishBudget();
}

std::shared_ptr<Job> Dispatcher::PassSlot(const Job* job) {
  ReleaseSlot(job);
  if (line_.empty() || running_ >= max_workers_) return nullptr;
  std::shared_ptr<Job> next = std::move(line_.front());
  line_.pop_front();
  if (--claims_[next.get()].wanted > 0) line_.push_back(next);  // round robin
  TakeSlot(next);
  return next;
}

void Dispatcher::PublishBudget() {
  size_t waiting = 0;
  for (const auto& entry : claims_) waiting += entry.second.wanted;
  waiting_.store(waiting, std::memory_order_relaxed);
  Metrics::Global().SetWorkers(max_workers_, running_, waiting);
}

bool Dispatcher::ShouldYield(const Job* job) {
  if (waiting_.load(std::memory_order_relaxed) == 0) return false;
  MutexLock lock(&mutex_);
  auto it = claims_.find(job);
  if (line_.empty() || it == claims_.end()) return false;
  size_t share = (max_workers_ + claims_.size() - 1) / claims_.size();
  return it->second.running > share;
}

void Dispatcher::RunWorker(const std::shared_ptr<Job>& job) {
  const bool yielded = Work(job);
  std::shared_ptr<Job> next;
  {
    MutexLock lock(&mutex_);
    if (yielded && claims_[job.get()].wanted++ == 0) line_.push_back(job);
    next = PassSlot(job.get());
  }
  // The slot goes to a thread for the next job in line; this one exits.
  if (next == nullptr || StartThread([this, next] { RunWorker(next); })) return;
  MutexLock lock(&mutex_);
  LogMessage("warning: no thread could be started for a worker; its job waits for the next slot");
  ReleaseSlot(next.get());
  if (claims_[next.get()].wanted++ == 0) line_.push_back(next);
  PublishBudget();
}

bool Dispatcher::Work(const std::shared_ptr<Job>& job) {
  // A copy of the job's settings, refreshed when a PATCH changes them.
  uint32_t options_version = ~0u;
  JobOptions options;
  job->RefreshOptions(&options_version, &options);
  WebhookClient client(options_, job->id(), options, &job->calls_abandoned());
  std::mt19937_64 rng(std::random_device{}());
  // Reused from one input to the next, so that a call allocates little.
  Input input;
  CallResult result;
  CallEnd end;
  JsonCompactor compactor;
  WebhookUrls urls(options.url);
  std::string value;
  std::string entry;
  std::string spent;  // the last input's value, freed outside the job's lock
  bool more = job->NextInput(&input);
  while (more) {
    if (ShouldYield(job.get())) {
      job->GiveBack(&input);
      return true;
    }
    if (job->RefreshOptions(&options_version, &options)) client.SetTimeout(options.timeout_ms);
    const Clock::time_point started = Clock::now();
    client.Call(urls.For(input.key), input.value, input.calls, &result);
    const Clock::time_point finished = Clock::now();
    Verdict verdict = Judge(result);
    end.signal = ClassifyCall(result);
    end.error.clear();
    if (verdict != Verdict::kSuccess) end.error = FailureMessage(result, options);
    // A call aborted by cancel or delete is no call of the webhook's.
    if (result.code != CURLE_ABORTED_BY_CALLBACK) {
      job->stats().RecordCall(finished, finished - started, verdict == Verdict::kSuccess,
                              end.error);
    }
    // With the circuit breaker on, attempts are spent on real answers
    // only: not on a call that never went out, nor on one the webhook
    // asked to be made later (429, 503).
    end.spent = options.max_outage_ms == 0 || verdict != Verdict::kRetry ||
                (end.signal != Signal::kUnreachable && !SlowsJob(result.status));
    if (verdict == Verdict::kRetry && (!end.spent || input.attempts < options.max_attempts)) {
      more = job->RetryLaterAndNext(&input, RetryDelay(result, input.attempts, options, &rng),
                                    SlowsJob(result.status), end);
      continue;
    }
    bool success = verdict == Verdict::kSuccess;
    entry.clear();
    if (success) {
      value.clear();
      if (result.body.empty()) {
        value = "null";
      } else if (!compactor.Append(result.body.data(), result.body.size(), &value, nullptr)) {
        value.clear();
        AppendJsonString(result.body, &value);
      }
      AppendSuccessEntry(input.key, value, &entry);
    } else if (result.code == CURLE_ABORTED_BY_CALLBACK) {
      // Cancelled or discarded: Cancel has stored this input's entry and
      // StoreOutcomeAndNext drops this one; it is here only so that no path
      // loses it.
      entry = ErrorEntry(input.key, 0, "cancelled", "", input.attempts);
    } else {
      LogJobEvent(job->id(), "failure", "key " + input.key + ": " + end.error);
      job->stats().RecordFailure(input.key, result.status, end.error, input.attempts);
      entry = ErrorEntry(input.key, result.status, end.error,
                         result.body.substr(0, kErrorBodyBytes), input.attempts);
    }
    // The value is handed back in spent and freed here, not under the job's
    // lock: it was allocated by the thread that parsed it, and freeing it
    // may have to wait for that thread's malloc arena. It is not freed
    // before: a cancel may copy it meanwhile, for a redrive, and an open
    // circuit may send the input back to the queue.
    more = job->StoreOutcomeAndNext(&input, entry, success, end, &spent);
    std::string().swap(spent);
  }
  return false;
}

void Dispatcher::RunCallback(const std::shared_ptr<Job>& job) {
  const JobOptions options = job->options();
  WebhookClient client(options_, job->id(), options, &job->callback_abandoned());
  std::unique_ptr<CURLU, void (*)(CURLU*)> url(ParseUrl(options.callback_url), curl_url_cleanup);
  std::mt19937_64 rng(std::random_device{}());
  CallbackStatus status;
  while (!job->callback_abandoned()) {
    status.state = CallbackStatus::kSending;
    ++status.attempts;
    job->SetCallbackStatus(status);
    CallResult result;
    client.Call(url.get(), job->ToJson(), status.attempts, &result);
    status.status = result.status;
    // The callback's reply body does not matter, only its status.
    Verdict verdict = result.too_large ? Judge(CURLE_OK, result.status) : Judge(result);
    if (verdict == Verdict::kSuccess) {
      status.state = CallbackStatus::kSucceeded;
      status.message.clear();
      break;
    }
    status.message = FailureMessage(result, options);
    if (verdict == Verdict::kFail || status.attempts >= options.max_attempts ||
        !job->SleepUnlessDiscarded(RetryDelay(result, status.attempts, options, &rng))) {
      status.state = CallbackStatus::kFailed;
      LogJobEvent(job->id(), "failure", "callback: " + status.message);
      break;
    }
  }
  job->SetCallbackStatus(status);
}
