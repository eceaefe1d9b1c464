// Circuit is one job's judgement of its webhook's health: a circuit
// breaker, which stops a job from burning through its inputs while the
// webhook is down, and an adaptive limit on calls in flight, which backs
// off when the webhook is overloaded and creeps back up while it copes.
//
// The breaker. Closed, calls go out as usual. kOpenAfter results in a row
// that are not real answers (Signal below) open it: no call starts, and
// every input whose call ends without a real answer goes back to the queue
// without spending an attempt. After a wait of backoff_ms, doubling up to
// max_backoff_ms, one probe call goes out (half open); a real answer
// closes the circuit, anything else opens it again. A probe answered with
// 429 keeps it open: a webhook that refuses all work is not back. The
// job gives up once the circuit has been open for max_outage_ms without a
// real answer (OutageOver). max_outage_ms 0 turns the breaker off.
//
// The limit (adaptive concurrency, on unless the job's adaptive is false)
// follows TCP's congestion control: an overload signal (429, 503, a
// timeout, a reset or refused connection) halves it, down to 1, at most
// once for the calls that were in flight together (a generation count
// tells them apart); each real answer raises it by 1/limit, that is by
// about one per round of calls, up to concurrency, the ceiling. When the
// circuit closes the limit starts again from 1 and doubles each round
// (slow start) up to half the ceiling, so that a webhook just back is not
// met by a burst.
//
// Thread-compatible: the Job holds its mutex around every call.

#ifndef PMMAP_CIRCUIT_HPP_
#define PMMAP_CIRCUIT_HPP_

#include <chrono>
#include <cstdint>
#include <string>

struct JobOptions;  // job.hpp

// The clock of every deadline of a job's.
using Clock = std::chrono::steady_clock;

// What one finished call tells about the webhook (ClassifyCall in
// webhook.hpp says which a result is).
enum class Signal {
  kAnswer,       // a real answer: 2xx, 3xx, 4xx other than 429; the webhook is up
  kFault,        // a 5xx other than 503: up, but failing
  kOverload,     // 429 or 503, a timeout, a connection reset after the request went out
  kUnreachable,  // nothing went out: connection refused, DNS or TLS failure, connect timeout
};

enum class CircuitState { kClosed, kOpen, kHalfOpen };
const char* CircuitStateName(CircuitState state);

class Circuit {
 public:
  // Results in a row, not real answers, that open the circuit.
  static constexpr int kOpenAfter = 5;

  explicit Circuit(const JobOptions& options);

  // What a call carries from its start to Record.
  struct Ticket {
    uint32_t generation = 0;
    bool probe = false;
  };

  // True if a call may start now with in_flight calls out, without the
  // clock: the circuit is closed and the limit allows one more.
  bool Admits(size_t in_flight) const {
    return state_ == CircuitState::kClosed && in_flight < cap_;
  }
  // When the circuit is open: true if a probe may start at now (then call
  // StartProbe with the call's ticket), else false with *wake set to when
  // to ask again. False while a probe is out.
  bool ProbeDue(Clock::time_point now, Clock::time_point* wake) const;
  // The ticket of a call starting now.
  Ticket Issue() const { return Ticket{generation_, false}; }
  void StartProbe(Ticket* ticket);

  // Records how a call that started with ticket ended. Returns true if its
  // input must go back to the queue without spending an attempt: the
  // circuit is (now) open and the call got no real answer. error says what
  // went wrong, for last_error; unused for a kAnswer.
  bool Record(Signal signal, const Ticket& ticket, const std::string& error, Clock::time_point now,
              const JobOptions& options);
  // True once the circuit has been open for max_outage_ms.
  bool OutageOver(Clock::time_point now, const JobOptions& options) const;
  // When OutageOver will be true; only while the circuit is not closed.
  Clock::time_point OutageDeadline(const JobOptions& options) const;
  // Moves the outage's deadline later by paused: the job was paused by hand.
  void Postpone(Clock::duration paused) { opened_at_ += paused; }
  // Closes the circuit without a real answer: the job gave up the outage,
  // ended, or was discarded. The limit stays where it is.
  void Reset();
  // Takes a changed concurrency ceiling or adaptive setting into account.
  void Retune(const JobOptions& options);

  CircuitState state() const { return state_; }
  bool closed() const { return state_ == CircuitState::kClosed; }
  // How many calls may be in flight while closed.
  int limit() const { return static_cast<int>(cap_); }
  // When the current outage began (the circuit opened); meaningless while closed.
  std::chrono::system_clock::time_point outage_since() const { return outage_since_; }
  // The last call that was not a real answer: what went wrong, and when.
  const std::string& last_error() const { return last_error_; }
  std::chrono::system_clock::time_point last_error_at() const { return last_error_at_; }

 private:
  void Open(Clock::time_point now, const JobOptions& options);
  void Close(const JobOptions& options);
  void Raise(const JobOptions& options);
  void Halve();
  void SetLimit(double limit, const JobOptions& options);

  CircuitState state_ = CircuitState::kClosed;
  int failures_in_a_row_ = 0;
  double limit_;             // calls in flight allowed, fractional as it creeps up
  size_t cap_;               // limit_ as a whole number, at least 1
  double slow_start_;        // below this, each real answer raises the limit by one
  int ceiling_;              // concurrency, as Retune last saw it
  uint32_t generation_ = 0;  // bumped whenever the limit is cut or the circuit changes
  Clock::time_point opened_at_;
  Clock::time_point probe_at_;
  int64_t probe_wait_ms_ = 0;
  std::chrono::system_clock::time_point outage_since_;
  std::string last_error_;
  std::chrono::system_clock::time_point last_error_at_;
};

#endif  // PMMAP_CIRCUIT_HPP_
