// Mutex, MutexLock and CondVar: std::mutex and std::condition_variable with
// clang's thread-safety annotations, which libstdc++'s types do not carry.
// Shaped after LevelDB's port::Mutex and port::CondVar. A wait is always a
// loop on a predicate written in the caller, where the analysis can see
// that the guarded fields it reads are read under the lock:
//
//   MutexLock lock(&mutex_);
//   while (!done_) done_cv_.Wait();
//
// Thread-safe, as the types they wrap.

#ifndef PMMAP_MUTEX_HPP_
#define PMMAP_MUTEX_HPP_

#include <chrono>
#include <condition_variable>
#include <mutex>

#include "thread_annotations.hpp"

class LOCKABLE Mutex {
 public:
  Mutex() = default;
  Mutex(const Mutex&) = delete;
  Mutex& operator=(const Mutex&) = delete;

  void Lock() EXCLUSIVE_LOCK_FUNCTION() { mutex_.lock(); }
  void Unlock() UNLOCK_FUNCTION() { mutex_.unlock(); }
  // Tells the analysis that the caller holds the lock; checks nothing.
  void AssertHeld() ASSERT_EXCLUSIVE_LOCK() {}

 private:
  friend class CondVar;
  std::mutex mutex_;
};

// Holds a Mutex for its scope.
class SCOPED_LOCKABLE MutexLock {
 public:
  explicit MutexLock(Mutex* mutex) EXCLUSIVE_LOCK_FUNCTION(mutex) : mutex_(mutex) {
    mutex_->Lock();
  }
  ~MutexLock() UNLOCK_FUNCTION() { mutex_->Unlock(); }
  MutexLock(const MutexLock&) = delete;
  MutexLock& operator=(const MutexLock&) = delete;

 private:
  Mutex* const mutex_;
};

// A condition variable bound to one Mutex, which the caller must hold
// around every Wait (the analysis cannot check that here: the waits release
// and retake it inside).
class CondVar {
 public:
  explicit CondVar(Mutex* mutex) : mutex_(mutex) {}
  CondVar(const CondVar&) = delete;
  CondVar& operator=(const CondVar&) = delete;

  // Releases the mutex, waits to be signalled (or woken spuriously), and
  // takes it again.
  void Wait() {
    std::unique_lock<std::mutex> lock(mutex_->mutex_, std::adopt_lock);
    cv_.wait(lock);
    lock.release();
  }
  // As Wait, but returns at deadline too. Returns false if it timed out.
  template <typename Clock, typename Duration>
  bool WaitUntil(const std::chrono::time_point<Clock, Duration>& deadline) {
    std::unique_lock<std::mutex> lock(mutex_->mutex_, std::adopt_lock);
    bool signalled = cv_.wait_until(lock, deadline) == std::cv_status::no_timeout;
    lock.release();
    return signalled;
  }
  // As Wait, but returns after timeout too. Returns false if it timed out.
  template <typename Rep, typename Period>
  bool WaitFor(const std::chrono::duration<Rep, Period>& timeout) {
    return WaitUntil(std::chrono::steady_clock::now() + timeout);
  }
  void Signal() { cv_.notify_one(); }
  void SignalAll() { cv_.notify_all(); }

 private:
  Mutex* const mutex_;
  std::condition_variable cv_;
};

#endif  // PMMAP_MUTEX_HPP_
