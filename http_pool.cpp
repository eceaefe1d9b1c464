#include "http_pool.hpp"

#include <system_error>
#include <thread>

HttpPool::HttpPool(size_t max_threads) : max_threads_(max_threads) {}

HttpPool::~HttpPool() { shutdown(); }

void HttpPool::enqueue(std::function<void()> task) {
  std::lock_guard<std::mutex> lock(mutex_);
  tasks_.push_back(std::move(task));
  if (idle_ >= tasks_.size() || threads_ >= max_threads_) {
    task_cv_.notify_one();
    return;
  }
  try {
    // Threads are detached: shutdown() waits for threads_ to reach zero,
    // and nothing a thread touches after decrementing it can be destroyed.
    std::thread(&HttpPool::Work, this).detach();
    ++threads_;
  } catch (const std::system_error&) {
    // Out of threads: an existing one will run the task when it is free.
    task_cv_.notify_one();
  }
}

void HttpPool::shutdown() {
  std::unique_lock<std::mutex> lock(mutex_);
  shutdown_ = true;
  task_cv_.notify_all();
  exit_cv_.wait(lock, [this] { return threads_ == 0; });
}

void HttpPool::Work() {
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    ++idle_;
    bool woken =
        task_cv_.wait_for(lock, kIdleExit, [this] { return !tasks_.empty() || shutdown_; });
    --idle_;
    if (tasks_.empty() && (shutdown_ || !woken)) break;
    std::function<void()> task = std::move(tasks_.front());
    tasks_.pop_front();
    lock.unlock();
    task();
    task = nullptr;  // release what the task holds before counting this thread out
    lock.lock();
  }
  --threads_;
  exit_cv_.notify_all();
}
