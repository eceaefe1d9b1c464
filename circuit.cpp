#include "circuit.hpp"

#include <algorithm>

#include "job.hpp"
#include "metrics.hpp"

const char* CircuitStateName(CircuitState state) {
  switch (state) {
    case CircuitState::kClosed:
      return "closed";
    case CircuitState::kOpen:
      return "open";
    case CircuitState::kHalfOpen:
      return "half_open";
  }
  return "unknown";
}

Circuit::Circuit(const JobOptions& options) : slow_start_(0), ceiling_(options.concurrency) {
  // A job starts at its ceiling, as it did before the limit adapted: a
  // healthy webhook pays nothing for the limit.
  SetLimit(options.concurrency, options);
}

bool Circuit::ProbeDue(Clock::time_point now, Clock::time_point* wake) const {
  if (state_ != CircuitState::kOpen) return false;
  if (now >= probe_at_) return true;
  *wake = probe_at_;
  return false;
}

void Circuit::StartProbe(Ticket* ticket) {
  state_ = CircuitState::kHalfOpen;
  ticket->generation = generation_;
  ticket->probe = true;
}

bool Circuit::Record(Signal signal, const Ticket& ticket, const std::string& error,
                     Clock::time_point now, const JobOptions& options) {
  if (signal == Signal::kAnswer) {
    failures_in_a_row_ = 0;
    if (state_ != CircuitState::kClosed) {
      Close(options);
    } else if (options.adaptive) {
      Raise(options);
    }
    return false;
  }
  last_error_ = error;
  last_error_at_ = std::chrono::system_clock::now();
  // Only the first overload signal of the calls that were out together
  // cuts the limit: the others report the same crowd.
  bool overload = signal == Signal::kOverload || signal == Signal::kUnreachable;
  if (options.adaptive && overload && state_ == CircuitState::kClosed &&
      ticket.generation == generation_) {
    Halve();
  }
  if (options.max_outage_ms == 0) return false;
  if (state_ == CircuitState::kClosed) {
    if (++failures_in_a_row_ < kOpenAfter) return false;
    Open(now, options);
    return true;
  }
  if (ticket.probe) {
    // The probe failed: wait twice as long before the next one.
    state_ = CircuitState::kOpen;
    probe_wait_ms_ = std::min(std::max<int64_t>(probe_wait_ms_ * 2, 1), options.max_backoff_ms);
    probe_at_ = now + std::chrono::milliseconds(probe_wait_ms_);
  }
  return true;
}

bool Circuit::OutageOver(Clock::time_point now, const JobOptions& options) const {
  return state_ != CircuitState::kClosed && now >= OutageDeadline(options);
}

Clock::time_point Circuit::OutageDeadline(const JobOptions& options) const {
  return opened_at_ + std::chrono::milliseconds(options.max_outage_ms);
}

void Circuit::Reset() {
  if (state_ != CircuitState::kClosed) Metrics::Global().CircuitClosed();
  state_ = CircuitState::kClosed;
  failures_in_a_row_ = 0;
  ++generation_;
}

void Circuit::Retune(const JobOptions& options) {
  if (options.max_outage_ms == 0) Reset();
  // A limit at its old ceiling was never cut: it follows the new one. A
  // cut limit keeps what the webhook showed it can take.
  const bool at_ceiling = limit_ >= ceiling_;
  ceiling_ = options.concurrency;
  SetLimit(!options.adaptive || at_ceiling ? ceiling_ : std::min<double>(limit_, ceiling_),
           options);
}

void Circuit::Open(Clock::time_point now, const JobOptions& options) {
  state_ = CircuitState::kOpen;
  ++generation_;
  opened_at_ = now;
  outage_since_ = std::chrono::system_clock::now();
  probe_wait_ms_ = std::min(options.backoff_ms, options.max_backoff_ms);
  probe_at_ = now + std::chrono::milliseconds(probe_wait_ms_);
  Metrics::Global().CircuitOpened();
}

void Circuit::Close(const JobOptions& options) {
  Reset();
  if (!options.adaptive) return;
  slow_start_ = std::max(1.0, options.concurrency / 2.0);
  SetLimit(1, options);
}

void Circuit::Raise(const JobOptions& options) {
  if (limit_ >= options.concurrency) return;
  SetLimit(limit_ < slow_start_ ? limit_ + 1 : limit_ + 1 / limit_, options);
}

void Circuit::Halve() {
  ++generation_;
  limit_ = std::max(1.0, limit_ / 2);
  slow_start_ = limit_;
  cap_ = static_cast<size_t>(limit_);
}

void Circuit::SetLimit(double limit, const JobOptions& options) {
  limit_ = std::min<double>(std::max(1.0, limit), options.concurrency);
  cap_ = static_cast<size_t>(limit_);
}
