// Server-wide counters for GET /metrics, in the Prometheus text format.
// Thread-safe: every counter is a relaxed atomic, so counting costs no lock
// on the webhook path.

#ifndef PMMAP_METRICS_HPP_
#define PMMAP_METRICS_HPP_

#include <atomic>
#include <cstdint>
#include <map>
#include <string>

class Metrics {
 public:
  // How one webhook call ended, as the label outcome of
  // pmmap_webhook_calls_total.
  enum Outcome { k2xx, k3xx, k4xx, k5xx, kTimeout, kConnectError, kOutcomes };

  // The process's one instance.
  static Metrics& Global();

  void InputsAccepted(uint64_t n) { inputs_.fetch_add(n, std::memory_order_relaxed); }
  void OutputStored(bool success) {
    (success ? succeeded_ : failed_).fetch_add(1, std::memory_order_relaxed);
  }
  void Retried() { retries_.fetch_add(1, std::memory_order_relaxed); }
  void CallStarted() { in_flight_.fetch_add(1, std::memory_order_relaxed); }
  void CallEnded(Outcome outcome, double seconds);
  // A call abandoned by cancel, delete or shutdown: not counted as a call.
  void CallAbandoned() { in_flight_.fetch_sub(1, std::memory_order_relaxed); }
  // A job's circuit opened, or closed (circuit.hpp).
  void CircuitOpened() {
    circuit_openings_.fetch_add(1, std::memory_order_relaxed);
    open_circuits_.fetch_add(1, std::memory_order_relaxed);
  }
  void CircuitClosed() { open_circuits_.fetch_sub(1, std::memory_order_relaxed); }
  // The worker budget (dispatcher.hpp): its size, the workers running, and
  // the requests for one waiting.
  void SetWorkers(size_t max, size_t running, size_t waiting) {
    workers_max_.store(max, std::memory_order_relaxed);
    workers_running_.store(running, std::memory_order_relaxed);
    workers_waiting_.store(waiting, std::memory_order_relaxed);
  }
  // An input put back to the queue by an open circuit, its attempt unspent.
  void RefusedByCircuit() { refused_by_circuit_.fetch_add(1, std::memory_order_relaxed); }

  // The exposition text; jobs_by_state gives pmmap_jobs{state}.
  std::string Render(const std::map<std::string, uint64_t>& jobs_by_state) const;

 private:
  static constexpr int kBuckets = 12;
  static const double kBucketBounds[kBuckets];  // seconds; +Inf is implicit

  std::atomic<uint64_t> inputs_{0};
  std::atomic<uint64_t> succeeded_{0};
  std::atomic<uint64_t> failed_{0};
  std::atomic<uint64_t> retries_{0};
  std::atomic<int64_t> in_flight_{0};
  std::atomic<uint64_t> circuit_openings_{0};
  std::atomic<int64_t> open_circuits_{0};
  std::atomic<uint64_t> refused_by_circuit_{0};
  std::atomic<uint64_t> workers_max_{0};
  std::atomic<uint64_t> workers_running_{0};
  std::atomic<uint64_t> workers_waiting_{0};
  std::atomic<uint64_t> calls_[kOutcomes] = {};
  std::atomic<uint64_t> duration_buckets_[kBuckets] = {};  // not cumulative
  std::atomic<uint64_t> duration_count_{0};
  std::atomic<uint64_t> duration_sum_us_{0};
};

#endif  // PMMAP_METRICS_HPP_
