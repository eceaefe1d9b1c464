#include "dispatcher.hpp"

#include <random>
#include <string>
#include <system_error>
#include <utility>

#include "json.hpp"
#include "log.hpp"
#include "webhook.hpp"

namespace {

// How much of a failed reply's body its error entry keeps.
constexpr size_t kErrorBodyBytes = 256;

}  // namespace

Dispatcher::Dispatcher(Options options) : options_(std::move(options)), exit_cv_(&mutex_) {}

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
    for (std::thread& t : threads) t.join();
  }
}

bool Dispatcher::StartWorker(std::shared_ptr<Job> job) {
  return StartThread([this, job] { RunWorker(job); });
}

bool Dispatcher::StartCallback(std::shared_ptr<Job> job) {
  return StartThread([this, job] { RunCallback(job); });
}

bool Dispatcher::StartThread(std::function<void()> body) {
  MutexLock lock(&mutex_);
  JoinFinished();
  ThreadList::iterator self = threads_.emplace(threads_.end());
  try {
    // The new thread cannot announce its exit before this assignment: that
    // needs mutex_, held here.
    *self = std::thread(
        [this, self](std::function<void()> run) {
          run();
          run = nullptr;  // a job may be destroyed here, before this thread is joined
          MutexLock lock(&mutex_);
          finished_.push_back(self);
          exit_cv_.SignalAll();
        },
        std::move(body));
  } catch (const std::system_error&) {
    threads_.erase(self);
    return false;
  }
  return true;
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
    it->join();
    threads_.erase(it);
  }
  finished_.clear();
}

void Dispatcher::RunWorker(const std::shared_ptr<Job>& job) {
  const JobOptions& options = job->options();
  WebhookClient client(options_, *job, &job->calls_abandoned());
  std::mt19937_64 rng(std::random_device{}());
  // Reused from one input to the next, so that a call allocates little.
  Input input;
  CallResult result;
  JsonCompactor compactor;
  WebhookUrls urls(options.url);
  std::string value;
  std::string entry;
  std::string spent;  // the last input's value, freed outside the job's lock
  bool more = job->NextInput(&input);
  while (more) {
    client.Call(urls.For(input.key), input.value, input.attempts, &result);
    Verdict verdict = result.too_large ? Verdict::kFail : Judge(result.code, result.status);
    if (verdict == Verdict::kRetry && input.attempts < options.max_attempts) {
      more = job->RetryLaterAndNext(&input, RetryDelay(result, input.attempts, options, &rng),
                                    SlowsJob(result.status));
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
      std::string message = FailureMessage(result, options);
      LogJobEvent(job->id(), "failure", "key " + input.key + ": " + message);
      entry = ErrorEntry(input.key, result.status, message, result.body.substr(0, kErrorBodyBytes),
                         input.attempts);
    }
    // The value is handed back in spent and freed here, not under the job's
    // lock: it was allocated by the thread that parsed it, and freeing it
    // may have to wait for that thread's malloc arena. It is not freed
    // before: a cancel may copy it meanwhile, for a redrive.
    more = job->StoreOutcomeAndNext(&input, entry, success, &spent);
    std::string().swap(spent);
  }
}

void Dispatcher::RunCallback(const std::shared_ptr<Job>& job) {
  const JobOptions& options = job->options();
  WebhookClient client(options_, *job, &job->callback_abandoned());
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
    Verdict verdict = Judge(result.too_large ? CURLE_OK : result.code, result.status);
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
