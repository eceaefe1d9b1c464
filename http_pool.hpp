// HttpPool is the task queue that serves pmmap's API connections. cpp-httplib
// runs each connection, keep-alive requests included, as one task; pmmap's
// handlers may block for a long time (a PUT waiting for room, a GET /output
// waiting for the end), so a fixed pool of a few threads would let blocked
// callers starve everyone else. HttpPool starts a thread whenever no idle
// one is waiting, up to max_threads, and lets a thread that stays idle for
// a while exit, so it costs little when quiet. Its threads may be given a
// small stack, since pmmap may run thousands of them.
//
// Thread-safe (provides internal synchronization).

#ifndef PMMAP_HTTP_POOL_HPP_
#define PMMAP_HTTP_POOL_HPP_

#include <httplib.h>

#include <chrono>
#include <deque>
#include <functional>

#include "mutex.hpp"
#include "thread_annotations.hpp"

class HttpPool : public httplib::TaskQueue {
 public:
  // stack_bytes: each thread's stack; 0 takes the system's default.
  explicit HttpPool(size_t max_threads, size_t stack_bytes = 0);
  ~HttpPool() override;
  HttpPool(const HttpPool&) = delete;
  HttpPool& operator=(const HttpPool&) = delete;

  void enqueue(std::function<void()> task) override;
  // Runs the tasks already queued, then waits for every thread to exit.
  void shutdown() override;

 private:
  // How long an idle thread waits for a task before it exits.
  static constexpr std::chrono::seconds kIdleExit{30};

  void Work();
  // Starts a detached thread running Work; false if none could be started.
  bool StartThread();

  const size_t max_threads_;
  const size_t stack_bytes_;

  Mutex mutex_;
  // State below is protected by mutex_.
  CondVar task_cv_ GUARDED_BY(mutex_);  // a task was queued, or shutdown
  CondVar exit_cv_ GUARDED_BY(mutex_);  // a thread exited
  std::deque<std::function<void()>> tasks_ GUARDED_BY(mutex_);
  size_t threads_ GUARDED_BY(mutex_) = 0;
  size_t idle_ GUARDED_BY(mutex_) = 0;
  bool shutdown_ GUARDED_BY(mutex_) = false;
};

#endif  // PMMAP_HTTP_POOL_HPP_
