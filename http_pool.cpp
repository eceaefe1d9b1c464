#include "http_pool.hpp"

#include <system_error>
#include <thread>

HttpPool::HttpPool(size_t max_threads)
    : max_threads_(max_threads), task_cv_(&mutex_), exit_cv_(&mutex_) {}

HttpPool::~HttpPool() { shutdown(); }

void HttpPool::enqueue(std::function<void()> task) {
  MutexLock lock(&mutex_);
  tasks_.push_back(std::move(task));
  if (idle_ >= tasks_.size() || threads_ >= max_threads_) {
    task_cv_.Signal();
    return;
  }
  try {
    // Threads are detached: shutdown() waits for threads_ to reach zero,
    // and nothing a thread touches after decrementing it can be destroyed.
    std::thread(&HttpPool::Work, this).detach();
    ++threads_;
  } catch (const std::system_error&) {
    // Out of threads: an existing one will run the task when it is free.
    task_cv_.Signal();
  }
}

void HttpPool::shutdown() {
  MutexLock lock(&mutex_);
  shutdown_ = true;
  task_cv_.SignalAll();
  while (threads_ != 0) exit_cv_.Wait();
}

void HttpPool::Work() {
  for (;;) {
    // Destroyed at the end of each turn, so what it holds is released before
    // this thread is counted out.
    std::function<void()> task;
    {
      MutexLock lock(&mutex_);
      ++idle_;
      const auto idle_until = std::chrono::steady_clock::now() + kIdleExit;
      bool timed_out = false;
      while (tasks_.empty() && !shutdown_ && !timed_out) {
        timed_out = !task_cv_.WaitUntil(idle_until);
      }
      --idle_;
      // Shut down, or idle for kIdleExit; queued tasks are run first.
      if (tasks_.empty()) {
        --threads_;
        exit_cv_.SignalAll();
        return;
      }
      task = std::move(tasks_.front());
      tasks_.pop_front();
    }
    task();
  }
}
