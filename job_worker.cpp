// Job's worker side: the next input for a worker (queue, retry heap, rate
// limit, circuit) and the outcome of its call taken back. The rest is in job.cpp.

#include <algorithm>

#include "job.hpp"
#include "log.hpp"
#include "metrics.hpp"

namespace {

bool LaterFirst(const Input& a, const Input& b) { return a.not_before > b.not_before; }

}  // namespace

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
