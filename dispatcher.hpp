// The Dispatcher runs the threads that call webhooks, and joins them. A job
// asks it for a worker (Job::WorkerStarter) when inputs arrive; each worker
// owns one WebhookClient (webhook.hpp), whose libcurl handle is reused
// across calls so that connections are kept alive, and loops: take an
// input (Job::NextInput), POST it to url/{key} with no lock held, then
// Job::StoreOutcomeAndNext or Job::RetryLaterAndNext. A worker exits when
// its job has nothing more for it. An ended job with a callback_url gets
// one more thread, which POSTs the job's status there. The Server owns the
// Dispatcher and hands StartWorker to every Job and StartCallback to the
// job table's end hook; either may be called from any thread.
//
// Thread-safe (provides internal synchronization).

#ifndef PMMAP_DISPATCHER_HPP_
#define PMMAP_DISPATCHER_HPP_

#include <functional>
#include <list>
#include <memory>
#include <thread>
#include <vector>

#include "job.hpp"
#include "mutex.hpp"
#include "thread_annotations.hpp"
#include "webhook.hpp"

class Dispatcher {
 public:
  // What every thread's WebhookClient is given.
  using Options = WebhookClient::Options;

  explicit Dispatcher(Options options);
  // Joins every worker. REQUIRES: every job is done, cancelled or removed,
  // so that the workers exit.
  ~Dispatcher();
  Dispatcher(const Dispatcher&) = delete;
  Dispatcher& operator=(const Dispatcher&) = delete;

  // Starts a worker for job. Returns false if no thread could be started.
  bool StartWorker(std::shared_ptr<Job> job);
  // Starts a thread that POSTs the ended job to its callback_url.
  bool StartCallback(std::shared_ptr<Job> job);
  // Waits until every thread has exited or timeout passes; returns whether
  // all exited.
  bool WaitForExit(Clock::duration timeout);
  // Joins the threads that have exited.
  void JoinExited();

 private:
  using ThreadList = std::list<std::thread>;

  bool StartThread(std::function<void()> body);
  void RunWorker(const std::shared_ptr<Job>& job);
  void RunCallback(const std::shared_ptr<Job>& job);
  void JoinFinished() REQUIRES(mutex_);

  const Options options_;

  Mutex mutex_;
  // State below is protected by mutex_.
  CondVar exit_cv_ GUARDED_BY(mutex_);  // a thread announced its exit
  ThreadList threads_ GUARDED_BY(mutex_);
  std::vector<ThreadList::iterator> finished_ GUARDED_BY(mutex_);  // exited, not yet joined
};

#endif  // PMMAP_DISPATCHER_HPP_
