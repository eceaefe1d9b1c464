#include "http_pool.hpp"

#include <pthread.h>

HttpPool::HttpPool(size_t max_threads, size_t stack_bytes)
    : max_threads_(max_threads), stack_bytes_(stack_bytes), task_cv_(&mutex_), exit_cv_(&mutex_) {}

HttpPool::~HttpPool() { shutdown(); }

void HttpPool::enqueue(std::function<void()> task) {
  MutexLock lock(&mutex_);
  tasks_.push_back(std::move(task));
  if (idle_ >= tasks_.size() || threads_ >= max_threads_) {
    task_cv_.Signal();
    return;
  }
  if (StartThread()) {
    ++threads_;
  } else {
    // Out of threads: an existing one will run the task when it is free.
    task_cv_.Signal();
  }
}

bool HttpPool::StartThread() {
  // Threads are detached: shutdown() waits for threads_ to reach zero, and
  // nothing a thread touches after decrementing it can be destroyed.
  // std::thread cannot be given a stack size, hence pthreads.
  pthread_attr_t attr;
  if (pthread_attr_init(&attr) != 0) return false;
  pthread_attr_setdetachstate(&attr, PTHREAD_CREATE_DETACHED);
  if (stack_bytes_ != 0) pthread_attr_setstacksize(&attr, stack_bytes_);
  pthread_t thread;
  auto run = [](void* self) -> void* {
    static_cast<HttpPool*>(self)->Work();
    return nullptr;
  };
  bool started = pthread_create(&thread, &attr, run, this) == 0;
  pthread_attr_destroy(&attr);
  return started;
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
