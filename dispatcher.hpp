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
// One budget bounds the worker threads of all jobs together (max_workers,
// the --max-workers flag): a job's request for a worker past it waits in a
// round robin of jobs, and is granted when a worker exits. So that no job
// starves while others hold every worker, a worker whose job holds more
// than its fair share (the budget over the jobs holding or wanting
// workers) gives its slot to the next job in line between two calls: it
// hands its input back to its job and exits, and its job joins the line.
// Worker threads have a small stack (kWorkerStackBytes).
//
// Thread-safe (provides internal synchronization).

#ifndef PMMAP_DISPATCHER_HPP_
#define PMMAP_DISPATCHER_HPP_

#include <pthread.h>

#include <atomic>
#include <deque>
#include <functional>
#include <list>
#include <memory>
#include <unordered_map>
#include <vector>

#include "job.hpp"
#include "mutex.hpp"
#include "thread_annotations.hpp"
#include "webhook.hpp"

class Dispatcher {
 public:
  // What every thread's WebhookClient is given.
  using Options = WebhookClient::Options;

  // options: what every WebhookClient is given; max_workers: the most
  // worker threads of all jobs at once.
  Dispatcher(Options options, size_t max_workers);
  // Joins every worker. REQUIRES: every job is done, cancelled or removed,
  // so that the workers exit.
  ~Dispatcher();
  Dispatcher(const Dispatcher&) = delete;
  Dispatcher& operator=(const Dispatcher&) = delete;

  // Starts a worker for job, or, past the budget, queues the request until
  // a slot frees. Returns false if no thread could be started.
  bool StartWorker(std::shared_ptr<Job> job);
  // Starts a thread that POSTs the ended job to its callback_url.
  bool StartCallback(std::shared_ptr<Job> job);
  // Waits until every thread has exited or timeout passes; returns whether
  // all exited.
  bool WaitForExit(Clock::duration timeout);
  // Joins the threads that have exited.
  void JoinExited();

 private:
  using ThreadList = std::list<pthread_t>;
  // A job's hold on the budget: its workers running, and its requests waiting.
  struct Claim {
    size_t running = 0;
    size_t wanted = 0;
  };

  bool StartThread(std::function<void()> body);
  // A worker's thread: calls the webhook for job's inputs until the job has
  // no more for it, or until it yields its slot; then passes the slot on.
  void RunWorker(const std::shared_ptr<Job>& job);
  // The calls loop of RunWorker. Returns true if it stopped to yield.
  bool Work(const std::shared_ptr<Job>& job);
  // True if other jobs wait for a worker and job holds more than its share.
  bool ShouldYield(const Job* job);
  // Counts a worker of job running (claims_ and running_).
  void TakeSlot(const std::shared_ptr<Job>& job) REQUIRES(mutex_);
  // A worker of job exited: frees its slot and takes the next request in
  // line, if any, returning its job (its slot already taken), else null.
  std::shared_ptr<Job> PassSlot(const Job* job) REQUIRES(mutex_);
  // Frees the slot of a worker of job.
  void ReleaseSlot(const Job* job) REQUIRES(mutex_);
  void PublishBudget() REQUIRES(mutex_);
  void RunCallback(const std::shared_ptr<Job>& job);
  void JoinFinished() REQUIRES(mutex_);

  const Options options_;
  const size_t max_workers_;
  // How many worker requests wait (read without the lock between calls).
  std::atomic<size_t> waiting_{0};

  Mutex mutex_;
  // State below is protected by mutex_.
  CondVar exit_cv_ GUARDED_BY(mutex_);  // a thread announced its exit
  ThreadList threads_ GUARDED_BY(mutex_);
  std::vector<ThreadList::iterator> finished_ GUARDED_BY(mutex_);  // exited, not yet joined
  size_t running_ GUARDED_BY(mutex_) = 0;                          // worker threads holding a slot
  std::unordered_map<const Job*, Claim> claims_ GUARDED_BY(mutex_);  // jobs holding or wanting
  // The jobs whose requests wait, in turn; each appears once.
  std::deque<std::shared_ptr<Job>> line_ GUARDED_BY(mutex_);
};

#endif  // PMMAP_DISPATCHER_HPP_
