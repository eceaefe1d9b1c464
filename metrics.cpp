#include "metrics.hpp"

#include <cstdio>

const double Metrics::kBucketBounds[Metrics::kBuckets] = {0.001, 0.005, 0.01, 0.025, 0.05, 0.1,
                                                          0.25,  0.5,   1,    2.5,   5,    10};

Metrics& Metrics::Global() {
  static Metrics metrics;
  return metrics;
}

void Metrics::CallEnded(Outcome outcome, double seconds) {
  in_flight_.fetch_sub(1, std::memory_order_relaxed);
  calls_[outcome].fetch_add(1, std::memory_order_relaxed);
  for (int i = 0; i < kBuckets; ++i) {
    if (seconds <= kBucketBounds[i]) {
      duration_buckets_[i].fetch_add(1, std::memory_order_relaxed);
      break;
    }
  }
  duration_count_.fetch_add(1, std::memory_order_relaxed);
  duration_sum_us_.fetch_add(static_cast<uint64_t>(seconds * 1e6), std::memory_order_relaxed);
}

std::string Metrics::Render(const std::map<std::string, uint64_t>& jobs_by_state) const {
  static const char* const kOutcomeNames[kOutcomes] = {"2xx", "3xx",     "4xx",
                                                       "5xx", "timeout", "connect_error"};
  std::string out;
  char line[256];
  auto add = [&](const char* fmt, auto... args) {
    snprintf(line, sizeof(line), fmt, args...);
    out.append(line);
  };
  auto load = [](const std::atomic<uint64_t>& a) {
    return static_cast<unsigned long long>(a.load(std::memory_order_relaxed));
  };

  out.append("# HELP pmmap_jobs Jobs held, by state.\n# TYPE pmmap_jobs gauge\n");
  for (const auto& entry : jobs_by_state) {
    add("pmmap_jobs{state=\"%s\"} %llu\n", entry.first.c_str(),
        static_cast<unsigned long long>(entry.second));
  }
  out.append("# HELP pmmap_inputs_total Inputs accepted.\n# TYPE pmmap_inputs_total counter\n");
  add("pmmap_inputs_total %llu\n", load(inputs_));
  out.append(
      "# HELP pmmap_outputs_total Outcomes stored, by result.\n"
      "# TYPE pmmap_outputs_total counter\n");
  add("pmmap_outputs_total{result=\"success\"} %llu\n", load(succeeded_));
  add("pmmap_outputs_total{result=\"failure\"} %llu\n", load(failed_));
  out.append(
      "# HELP pmmap_webhook_calls_total Webhook calls, by outcome.\n"
      "# TYPE pmmap_webhook_calls_total counter\n");
  for (int i = 0; i < kOutcomes; ++i) {
    add("pmmap_webhook_calls_total{outcome=\"%s\"} %llu\n", kOutcomeNames[i], load(calls_[i]));
  }
  out.append(
      "# HELP pmmap_retries_total Attempts beyond the first.\n# TYPE pmmap_retries_total "
      "counter\n");
  add("pmmap_retries_total %llu\n", load(retries_));
  out.append(
      "# HELP pmmap_webhook_calls_in_flight Webhook calls in progress.\n"
      "# TYPE pmmap_webhook_calls_in_flight gauge\n");
  add("pmmap_webhook_calls_in_flight %lld\n", static_cast<long long>(in_flight_.load()));
  out.append(
      "# HELP pmmap_open_circuits Jobs whose circuit is open or half open.\n"
      "# TYPE pmmap_open_circuits gauge\n");
  add("pmmap_open_circuits %lld\n", static_cast<long long>(open_circuits_.load()));
  out.append(
      "# HELP pmmap_circuit_openings_total Times a job's circuit opened.\n"
      "# TYPE pmmap_circuit_openings_total counter\n");
  add("pmmap_circuit_openings_total %llu\n", load(circuit_openings_));
  out.append(
      "# HELP pmmap_circuit_refused_total Calls put back, their attempt unspent, by an open "
      "circuit.\n# TYPE pmmap_circuit_refused_total counter\n");
  add("pmmap_circuit_refused_total %llu\n", load(refused_by_circuit_));
  out.append(
      "# HELP pmmap_workers_max The worker budget: most webhook calls in flight across all jobs "
      "(--max-workers).\n# TYPE pmmap_workers_max gauge\n");
  add("pmmap_workers_max %llu\n", load(workers_max_));
  out.append(
      "# HELP pmmap_workers_running Worker threads holding a slot of the budget.\n"
      "# TYPE pmmap_workers_running gauge\n");
  add("pmmap_workers_running %llu\n", load(workers_running_));
  out.append(
      "# HELP pmmap_workers_waiting Requests of jobs for a worker, waiting for a slot.\n"
      "# TYPE pmmap_workers_waiting gauge\n");
  add("pmmap_workers_waiting %llu\n", load(workers_waiting_));
  out.append(
      "# HELP pmmap_webhook_call_duration_seconds Duration of webhook calls.\n"
      "# TYPE pmmap_webhook_call_duration_seconds histogram\n");
  unsigned long long cumulative = 0;
  for (int i = 0; i < kBuckets; ++i) {
    cumulative += load(duration_buckets_[i]);
    add("pmmap_webhook_call_duration_seconds_bucket{le=\"%g\"} %llu\n", kBucketBounds[i],
        cumulative);
  }
  add("pmmap_webhook_call_duration_seconds_bucket{le=\"+Inf\"} %llu\n", load(duration_count_));
  add("pmmap_webhook_call_duration_seconds_sum %.6f\n", load(duration_sum_us_) / 1e6);
  add("pmmap_webhook_call_duration_seconds_count %llu\n", load(duration_count_));
  return out;
}
