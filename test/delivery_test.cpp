// End-to-end tests of delivery control: the per-job policy fields of
// POST /job acting on real webhook calls, the live counters of a job,
// cancel, and reading the output on the caller's terms. The real pmmap
// binary runs against a real webhook on loopback; every wait is bounded.
//
// Timing assertions appear only where the feature is timing. Their lower
// bounds follow from the mechanism (a delay starts after the reply that
// caused it, so a gap measured at the webhook cannot be shorter); their
// upper bounds are generous, since CI also runs this suite under
// ThreadSanitizer and AddressSanitizer on a shared machine.

#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>
#include <time.h>

#include <algorithm>
#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <map>
#include <memory>
#include <mutex>
#include <regex>
#include <set>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "test/harness.hpp"

namespace {

using SteadyClock = std::chrono::steady_clock;
using std::chrono::milliseconds;
using std::chrono::seconds;

// Scheduling slack added to upper bounds on waits between attempts: what a
// correct server always meets under ASan or TSan on two busy cores.
constexpr double kSlackMs = 1000;

double MsBetween(SteadyClock::time_point from, SteadyClock::time_point to) {
  return std::chrono::duration<double, std::milli>(to - from).count();
}

// The number in a key such as "k17", or -1.
int IndexOf(const std::string& key) {
  size_t digits = key.find_first_of("0123456789");
  return digits == std::string::npos ? -1 : atoi(key.c_str() + digits);
}

std::string State(const rapidjson::Value& job) { return Text(job, "state"); }

// Checks the counters of one read of a job against each other.
void CheckCounters(const rapidjson::Value& job) {
  INFO("job: " << Json(job));
  uint64_t inputs = U64(job, "inputs");
  uint64_t outputs = U64(job, "outputs");
  uint64_t pending = U64(job, "pending");
  uint64_t in_flight = U64(job, "in_flight");
  uint64_t succeeded = U64(job, "succeeded");
  uint64_t failed = U64(job, "failed");
  U64(job, "retries");
  REQUIRE(outputs == succeeded + failed);
  REQUIRE(inputs == pending + in_flight + outputs);
  REQUIRE(in_flight <= U64(job, "concurrency"));
  std::string state = State(job);
  REQUIRE((state == "open" || state == "closing" || state == "done" || state == "cancelled"));
  if (state == "done" || state == "cancelled") {
    REQUIRE(pending == 0);
    REQUIRE(in_flight == 0);
    REQUIRE(outputs == inputs);
  }
}

// Checks an RFC 3339 UTC timestamp ("2024-05-01T12:00:00.123Z") that is
// close to the current time.
void CheckTimestamp(const rapidjson::Value& v) {
  INFO("timestamp: " << Json(v));
  REQUIRE(v.IsString());
  std::string s = v.GetString();
  static const std::regex kRfc3339(R"(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z)");
  REQUIRE(std::regex_match(s, kRfc3339));
  struct tm tm = {};
  REQUIRE(sscanf(s.c_str(), "%d-%d-%dT%d:%d:%d", &tm.tm_year, &tm.tm_mon, &tm.tm_mday, &tm.tm_hour,
                 &tm.tm_min, &tm.tm_sec) == 6);
  tm.tm_year -= 1900;
  tm.tm_mon -= 1;
  time_t t = timegm(&tm);
  // UTC, not local time: within minutes of the clock.
  REQUIRE(std::abs(difftime(t, time(nullptr))) < 600);
}

HttpResult Post(const PmmapProcess& pmmap, const std::string& path) {
  return Http(pmmap.base_url(), "POST", path);
}

void PutInputs(const PmmapProcess& pmmap, const std::string& id, const std::string& inputs) {
  HttpResult r = Http(pmmap.base_url(), "PUT", "/job/" + id + "/input", inputs);
  INFO("PUT /job/" << id << "/input -> " << r.status << " " << r.body);
  REQUIRE(r.status == 201);
}

rapidjson::Document Complete(const PmmapProcess& pmmap, const std::string& id) {
  HttpResult r = Post(pmmap, "/job/" + id + "/complete");
  INFO("POST /job/" << id << "/complete -> " << r.status << " " << r.body);
  REQUIRE(r.status == 200);
  return ParseJson(r.body);
}

// Creates a job, PUTs inputs into it and completes it; returns its id.
std::string StartJob(const PmmapProcess& pmmap, const std::string& job_body,
                     const std::string& inputs) {
  std::string id = CreateJob(pmmap, job_body);
  PutInputs(pmmap, id, inputs);
  Complete(pmmap, id);
  return id;
}

rapidjson::Document Cancel(const PmmapProcess& pmmap, const std::string& id) {
  HttpResult r = Post(pmmap, "/job/" + id + "/cancel");
  INFO("POST /job/" << id << "/cancel -> " << r.status << " " << r.body);
  REQUIRE(r.status == 200);
  REQUIRE(HeaderOf(r.headers, "Content-Type").find("application/json") == 0);
  return ParseJson(r.body);
}

rapidjson::Document WaitForState(const PmmapProcess& pmmap, const std::string& id,
                                 const std::string& state,
                                 milliseconds timeout = std::chrono::seconds(20)) {
  rapidjson::Document job = WaitForJob(
      pmmap, id,
      [&](const rapidjson::Document& d) { return std::string(d["state"].GetString()) == state; },
      timeout);
  INFO("job: " << Json(job));
  REQUIRE(State(job) == state);
  return job;
}

// GET /job/{id}/output<query>, which must answer 200.
HttpResult GetOutput(const PmmapProcess& pmmap, const std::string& id,
                     const std::string& query = "", const httplib::Headers& headers = {}) {
  HttpResult r = Http(pmmap.base_url(), "GET", "/job/" + id + "/output" + query, "", headers);
  INFO("GET /job/" << id << "/output" << query << " -> " << r.status << " "
                   << r.body.substr(0, 500));
  REQUIRE(r.status == 200);
  return r;
}

// The entries of a JSON-array output, each as compact JSON.
std::vector<std::string> ArrayEntries(const HttpResult& r) {
  INFO("output: " << r.body.substr(0, 500));
  REQUIRE(HeaderOf(r.headers, "Content-Type").find("application/json") == 0);
  rapidjson::Document doc = ParseJson(r.body);
  REQUIRE(doc.IsArray());
  std::vector<std::string> entries;
  for (const auto& entry : doc.GetArray()) entries.push_back(Json(entry));
  return entries;
}

// The entries of an NDJSON output, each as compact JSON.
std::vector<std::string> NdjsonEntries(const HttpResult& r) {
  INFO("output: " << r.body.substr(0, 500));
  REQUIRE(HeaderOf(r.headers, "Content-Type").find("application/x-ndjson") == 0);
  if (!r.body.empty()) REQUIRE(r.body.back() == '\n');
  std::vector<std::string> entries;
  for (const auto& doc : ParseLines(r.body)) entries.push_back(Json(doc));
  size_t lines = static_cast<size_t>(std::count(r.body.begin(), r.body.end(), '\n'));
  REQUIRE(lines == entries.size());  // one entry per line, no blank lines
  return entries;
}

std::string Key(const std::string& entry_json) {
  rapidjson::Document doc = ParseJson(entry_json);
  return Text(doc, "key");
}

// The webhook's calls, grouped by key, each group in arrival order.
std::map<std::string, std::vector<Webhook::Call>> CallsByKey(std::vector<Webhook::Call> calls) {
  std::stable_sort(calls.begin(), calls.end(),
                   [](const Webhook::Call& a, const Webhook::Call& b) { return a.at < b.at; });
  std::map<std::string, std::vector<Webhook::Call>> by_key;
  for (auto& call : calls) by_key[call.key].push_back(call);
  return by_key;
}

// The time from key's first call to its second, which must be its last.
double MsToSecondAttempt(std::map<std::string, std::vector<Webhook::Call>>& by_key,
                         const std::string& key) {
  INFO("key " << key);
  REQUIRE(by_key[key].size() == 2);
  return MsBetween(by_key[key][0].at, by_key[key][1].at);
}

std::vector<Webhook::Call> SortedCalls(Webhook& hook) {
  std::vector<Webhook::Call> calls = hook.calls();
  std::stable_sort(calls.begin(), calls.end(),
                   [](const Webhook::Call& a, const Webhook::Call& b) { return a.at < b.at; });
  return calls;
}

// A thread joined when it goes out of scope, so that a failed assertion
// never leaves one running. Declare it before the PmmapProcess: the server
// stopping is what unblocks a request the thread still waits on.
struct Background {
  std::thread thread;
  ~Background() {
    if (thread.joinable()) thread.join();
  }
};

// What a request sent from a Background thread got, shared with the thread
// so that it outlives it.
struct Answer {
  HttpResult result;
  SteadyClock::time_point at;
  std::atomic<bool> done{false};
};

// Connections in state ESTABLISHED whose remote end is 127.0.0.1:port, that
// is, the client ends of connections to a server on that port.
int EstablishedTo(int port) {
  int n = 0;
  for (const TcpSocket& s : TcpSockets()) n += s.remote == LoopbackAddress(port) && s.state == "01";
  return n;
}

std::string HttpDate(time_t t) {
  struct tm tm;
  gmtime_r(&t, &tm);
  char buf[64];
  strftime(buf, sizeof(buf), "%a, %d %b %Y %H:%M:%S GMT", &tm);
  return buf;
}

}  // namespace

// 1. The policy fields of POST /job.

TEST_CASE("POST /job refuses a bad delivery policy field with a 400 naming it", "[delivery]") {
  Webhook hook;
  PmmapProcess pmmap;
  struct Bad {
    const char* field;
    const char* value;
  };
  const Bad bad[] = {
      {"timeout_ms", "0"},           {"timeout_ms", "3600001"},   {"timeout_ms", "-1"},
      {"timeout_ms", "1.5"},         {"timeout_ms", "\"100\""},   {"timeout_ms", "true"},
      {"max_attempts", "0"},         {"max_attempts", "101"},     {"max_attempts", "-3"},
      {"max_attempts", "2.5"},       {"max_attempts", "\"5\""},   {"max_attempts", "[5]"},
      {"backoff_ms", "-1"},          {"backoff_ms", "3600001"},   {"backoff_ms", "0.5"},
      {"backoff_ms", "[]"},          {"backoff_ms", "\"100\""},   {"max_backoff_ms", "-1"},
      {"max_backoff_ms", "3600001"}, {"max_backoff_ms", "\"x\""}, {"max_backoff_ms", "1.25"},
      {"rate_per_sec", "0"},         {"rate_per_sec", "0.0"},     {"rate_per_sec", "-1"},
      {"rate_per_sec", "-0.5"},      {"rate_per_sec", "\"20\""},  {"rate_per_sec", "true"},
      {"rate_per_sec", "{}"},        {"rate_per_sec", "1000001"},
  };
  for (const Bad& b : bad) {
    std::string body = JobBody(hook.url(), "\"" + std::string(b.field) + "\":" + b.value);
    HttpResult r = Http(pmmap.base_url(), "POST", "/job", body);
    INFO("POST /job " << body << " -> " << r.status << " " << r.body);
    REQUIRE(r.status == 400);
    REQUIRE(HeaderOf(r.headers, "Content-Type").find("application/json") == 0);
    rapidjson::Document doc = ParseJson(r.body);
    REQUIRE(Text(doc, "error").find(b.field) != std::string::npos);
  }
  // None of them made a job.
  HttpResult jobs = Http(pmmap.base_url(), "GET", "/jobs");
  REQUIRE(jobs.status == 200);
  REQUIRE(ParseJson(jobs.body).Size() == 0);

  // The limits themselves are accepted and echoed.
  struct Good {
    const char* field;
    const char* value;
    double echoed;
  };
  const Good good[] = {
      {"timeout_ms", "1", 1},           {"timeout_ms", "3600000", 3600000},
      {"max_attempts", "1", 1},         {"max_attempts", "100", 100},
      {"backoff_ms", "0", 0},           {"backoff_ms", "3600000", 3600000},
      {"max_backoff_ms", "0", 0},       {"max_backoff_ms", "3600000", 3600000},
      {"rate_per_sec", "0.5", 0.5},     {"rate_per_sec", "20", 20},
      {"rate_per_sec", "1000000", 1e6},
  };
  for (const Good& g : good) {
    std::string body = JobBody(hook.url(), "\"" + std::string(g.field) + "\":" + g.value);
    HttpResult r = Http(pmmap.base_url(), "POST", "/job", body);
    INFO("POST /job " << body << " -> " << r.status << " " << r.body);
    REQUIRE(r.status == 201);
    rapidjson::Document job = ParseJson(r.body);
    REQUIRE(job[g.field].IsNumber());
    REQUIRE(job[g.field].GetDouble() == g.echoed);
  }
}

TEST_CASE("a new job echoes its delivery policy, defaults included, and starts at zero",
          "[delivery]") {
  Webhook hook;
  PmmapProcess pmmap;

  SECTION("defaults, also when every field is null") {
    for (const std::string& fields :
         {std::string(""),
          std::string("\"timeout_ms\":null,\"max_attempts\":null,\"backoff_ms\":null,"
                      "\"max_backoff_ms\":null,\"rate_per_sec\":null")}) {
      HttpResult r = Http(pmmap.base_url(), "POST", "/job", JobBody(hook.url(), fields));
      REQUIRE(r.status == 201);
      rapidjson::Document job = ParseJson(r.body);
      INFO(r.body);
      CHECK(State(job) == "open");
      CHECK(U64(job, "timeout_ms") == 30000);
      CHECK(U64(job, "max_attempts") == 5);
      CHECK(U64(job, "backoff_ms") == 100);
      CHECK(U64(job, "max_backoff_ms") == 30000);
      REQUIRE(job.HasMember("rate_per_sec"));
      CHECK(job["rate_per_sec"].IsNull());
      CHECK(U64(job, "concurrency") == 1);
      CHECK(U64(job, "maxsize") == 1000);
      for (const char* counter :
           {"inputs", "outputs", "pending", "in_flight", "succeeded", "failed", "retries"}) {
        CHECK(U64(job, counter) == 0);
      }
      CheckTimestamp(job["created_at"]);
      REQUIRE(job.HasMember("done_at"));
      CHECK(job["done_at"].IsNull());
      CheckCounters(job);
    }
  }

  SECTION("every setting given, and the secret never shown") {
    std::string fields =
        "\"secret\":\"s3cr3t\",\"concurrency\":3,\"maxsize\":50,\"timeout_ms\":1234,\"max_"
        "attempts\":7,"
        "\"backoff_ms\":11,\"max_backoff_ms\":222,\"rate_per_sec\":2.5";
    HttpResult created = Http(pmmap.base_url(), "POST", "/job", JobBody(hook.url(), fields));
    REQUIRE(created.status == 201);
    std::string id = Text(ParseJson(created.body), "id");
    // The answer of POST /job, then of GET /job.
    for (const std::string& text :
         {created.body, Http(pmmap.base_url(), "GET", "/job/" + id).body}) {
      rapidjson::Document job = ParseJson(text);
      CHECK(U64(job, "concurrency") == 3);
      CHECK(U64(job, "maxsize") == 50);
      CHECK(U64(job, "timeout_ms") == 1234);
      CHECK(U64(job, "max_attempts") == 7);
      CHECK(U64(job, "backoff_ms") == 11);
      CHECK(U64(job, "max_backoff_ms") == 222);
      REQUIRE(job["rate_per_sec"].IsNumber());
      CHECK(job["rate_per_sec"].GetDouble() == 2.5);
      CHECK_FALSE(job.HasMember("secret"));
      CHECK(Json(job).find("s3cr3t") == std::string::npos);
    }
  }
}

namespace {

// Answers by key prefix: a, b, c always 500; d fails twice, then succeeds
// with {"ok": <attempt>}; e is 404.
void FailByPrefix(const Webhook::Call& call, httplib::Response& res) {
  char kind = call.key.empty() ? '?' : call.key[0];
  if (kind == 'd' && AttemptOf(call) >= 3) {
    res.set_content("{\"ok\":" + std::to_string(AttemptOf(call)) + "}", "application/json");
  } else if (kind == 'e') {
    res.status = 404;
    res.set_content("no such thing", "text/plain");
  } else {
    res.status = 500;
    res.set_content("boom", "text/plain");
  }
}

// One job of keys prefix0.. against FailByPrefix, with its policy fields.
struct AttemptsCase {
  std::string prefix;
  int keys;
  std::string fields;
  int attempts;  // calls expected per key
  bool success;
  long status;  // of the error entry
};

// Checks one output entry (compact JSON) of c's job.
void CheckAttemptsEntry(const AttemptsCase& c, const std::string& text) {
  rapidjson::Document entry = ParseJson(text);
  INFO("entry " << text);
  if (c.success) {
    REQUIRE(entry.HasMember("value"));
    CHECK(entry["value"]["ok"].GetInt() == c.attempts);
    CHECK_FALSE(entry.HasMember("error"));
  } else {
    REQUIRE(entry.HasMember("error"));
    CHECK(entry["error"]["status"].GetInt() == c.status);
    CHECK(Text(entry["error"], "message").find(std::to_string(c.status)) != std::string::npos);
    CHECK(Text(entry["error"], "body") == (c.status == 500 ? "boom" : "no such thing"));
    REQUIRE(entry.HasMember("attempts"));
    CHECK(entry["attempts"].GetInt() == c.attempts);
    CHECK_FALSE(entry.HasMember("value"));
  }
}

// Checks c's job once done: its counters, the attempts the webhook saw per
// key, and its output.
void CheckAttemptsCase(const PmmapProcess& pmmap, Webhook& hook, const AttemptsCase& c,
                       const std::string& id) {
  INFO("case " << c.prefix << ": " << c.fields);
  rapidjson::Document job = WaitForState(pmmap, id, "done");
  auto by_key = CallsByKey(hook.calls());
  CheckCounters(job);
  CHECK(U64(job, "outputs") == static_cast<uint64_t>(c.keys));
  CHECK(U64(job, "retries") == static_cast<uint64_t>(c.keys * (c.attempts - 1)));
  CHECK(U64(job, "succeeded") == (c.success ? static_cast<uint64_t>(c.keys) : 0));
  CHECK(U64(job, "failed") == (c.success ? 0 : static_cast<uint64_t>(c.keys)));
  for (int k = 0; k < c.keys; ++k) {
    std::string key = c.prefix + std::to_string(k);
    INFO("key " << key);
    const auto& calls = by_key[key];
    REQUIRE(calls.size() == static_cast<size_t>(c.attempts));
    for (int n = 0; n < c.attempts; ++n) CHECK(AttemptOf(calls[n]) == n + 1);
  }
  std::vector<std::string> entries = ArrayEntries(GetOutput(pmmap, id));
  REQUIRE(entries.size() == static_cast<size_t>(c.keys));
  for (const std::string& text : entries) CheckAttemptsEntry(c, text);
}

}  // namespace

TEST_CASE("a failing webhook gets exactly max_attempts calls per key, then an error entry",
          "[delivery]") {
  Webhook hook;
  hook.SetHandler(FailByPrefix);
  PmmapProcess pmmap;

  const std::vector<AttemptsCase> cases = {
      {"a", 4, "\"max_attempts\":3,\"backoff_ms\":1,\"max_backoff_ms\":5,\"concurrency\":2", 3,
       false, 500},
      {"b", 3, "\"max_attempts\":1,\"concurrency\":3", 1, false, 500},
      {"c", 2, "\"backoff_ms\":0,\"concurrency\":2", 5, false, 500},  // the default max_attempts
      {"d", 3, "\"max_attempts\":4,\"backoff_ms\":0,\"concurrency\":2", 3, true, 0},
      {"e", 2, "\"max_attempts\":9,\"backoff_ms\":0", 1, false, 404},  // not retried
  };
  std::vector<std::string> ids;
  for (const AttemptsCase& c : cases) {
    // Retry limits, without the circuit breaker, which would hold a webhook
    // failing everything for max_outage_ms.
    ids.push_back(CreateJob(pmmap, JobBody(hook.url(), c.fields + ",\"max_outage_ms\":0")));
    PutInputs(pmmap, ids.back(), MakeInputs(c.keys, c.prefix));
    Complete(pmmap, ids.back());
  }
  for (size_t i = 0; i < cases.size(); ++i) CheckAttemptsCase(pmmap, hook, cases[i], ids[i]);
  // Nothing was called beyond what the cases account for.
  size_t expected_calls = 0;
  for (const AttemptsCase& c : cases) expected_calls += static_cast<size_t>(c.keys * c.attempts);
  CHECK(hook.call_count() == expected_calls);
}

TEST_CASE("no wait between attempts exceeds max_backoff_ms", "[delivery]") {
  Webhook hook;
  hook.SetHandler([](const Webhook::Call&, httplib::Response& res) { res.status = 500; });
  PmmapProcess pmmap;

  struct Case {
    std::string prefix;
    int keys;
    int attempts;
    double cap_ms;
    std::string fields;
  };
  // Uncapped, full jitter would wait up to 5 s * 2^4 (a), up to 100 s (b):
  // far past the cap and its slack.
  const std::vector<Case> cases = {
      {"a", 4, 6, 50, "\"backoff_ms\":5000,\"max_backoff_ms\":50"},
      {"b", 2, 4, 50, "\"backoff_ms\":100000,\"max_backoff_ms\":50"},
      {"c", 3, 4, 0, "\"backoff_ms\":0"},  // every wait is 0
  };
  std::vector<std::string> ids;
  for (const Case& c : cases) {
    ids.push_back(CreateJob(
        pmmap, JobBody(hook.url(), c.fields + ",\"max_attempts\":" + std::to_string(c.attempts) +
                                       ",\"concurrency\":" + std::to_string(c.keys) +
                                       ",\"max_outage_ms\":0")));
    PutInputs(pmmap, ids.back(), MakeInputs(c.keys, c.prefix));
    Complete(pmmap, ids.back());
  }
  for (const std::string& id : ids) WaitForState(pmmap, id, "done");
  auto by_key = CallsByKey(hook.calls());
  for (const Case& c : cases) {
    for (int k = 0; k < c.keys; ++k) {
      std::string key = c.prefix + std::to_string(k);
      const auto& calls = by_key[key];
      REQUIRE(calls.size() == static_cast<size_t>(c.attempts));
      for (size_t n = 1; n < calls.size(); ++n) {
        double gap = MsBetween(calls[n - 1].at, calls[n].at);
        INFO("key " << key << ", " << c.fields << ": gap before attempt " << n + 1 << " was " << gap
                    << " ms");
        CHECK(gap < c.cap_ms + kSlackMs);
      }
    }
  }
}

TEST_CASE("429 with Retry-After pauses the whole job (concurrency 1)", "[delivery]") {
  Webhook hook;
  auto seen = std::make_shared<std::atomic<int>>(0);
  hook.SetHandler([seen](const Webhook::Call&, httplib::Response& res) {
    if (seen->fetch_add(1) == 0) {
      res.status = 429;
      res.set_header("Retry-After", "1");
      return;
    }
    res.set_content("{}", "application/json");
  });
  PmmapProcess pmmap;
  std::string id = StartJob(pmmap, JobBody(hook.url(), "\"concurrency\":1"), MakeInputs(4));
  rapidjson::Document job = WaitForState(pmmap, id, "done");
  CHECK(U64(job, "retries") == 1);
  CHECK(U64(job, "succeeded") == 4);

  std::vector<Webhook::Call> calls = SortedCalls(hook);
  REQUIRE(calls.size() == 5);
  const auto first = calls[0].at;
  REQUIRE(calls[0].key == "k0");
  REQUIRE(AttemptOf(calls[0]) == 1);
  // The pause starts when pmmap reads the 429, after the webhook saw the
  // call: nothing of the job, retry or other key, may come sooner.
  for (size_t i = 1; i < calls.size(); ++i) {
    INFO("call " << i << " (" << calls[i].key << " attempt " << AttemptOf(calls[i]) << ") came "
                 << MsBetween(first, calls[i].at) << " ms after the 429");
    CHECK(MsBetween(first, calls[i].at) >= 1000 - 50);
  }
  auto by_key = CallsByKey(calls);
  REQUIRE(by_key["k0"].size() == 2);
  CHECK(AttemptOf(by_key["k0"][1]) == 2);
  CHECK(MsBetween(first, by_key["k0"][1].at) < 1000 + 3000);
}

TEST_CASE("429 with Retry-After pauses the whole job (concurrency 2)", "[delivery]") {
  // k0's first call gets the 429 at once. k1's first call, sent alongside,
  // is held until the test sees the retry counted (so the pause is set),
  // and then answers 200: its worker is free at once but must wait out the
  // pause too. Every call other than those two must come after it.
  struct Shared {
    std::mutex mutex;
    SteadyClock::time_point answered_429;
    Gate gate;
  };
  auto shared = std::make_shared<Shared>();
  Webhook hook;
  hook.SetHandler([shared](const Webhook::Call& call, httplib::Response& res) {
    if (call.key == "k0" && AttemptOf(call) == 1) {
      res.status = 429;
      res.set_header("Retry-After", "1");
      std::lock_guard<std::mutex> lock(shared->mutex);
      shared->answered_429 = SteadyClock::now();
      return;
    }
    if (call.key == "k1" && AttemptOf(call) == 1) shared->gate.Wait();
    res.set_content("{}", "application/json");
  });
  PmmapProcess pmmap;
  struct OpenShared {
    std::shared_ptr<Shared> s;
    ~OpenShared() { s->gate.Open(); }
  } open_on_exit{shared};

  std::string id = StartJob(pmmap, JobBody(hook.url(), "\"concurrency\":2"), MakeInputs(6));
  rapidjson::Document job = WaitForJob(
      pmmap, id, [](const rapidjson::Document& d) { return d["retries"].GetUint64() == 1; });
  REQUIRE(U64(job, "retries") == 1);
  CheckCounters(job);
  shared->gate.Open();
  job = WaitForState(pmmap, id, "done");
  CHECK(U64(job, "succeeded") == 6);

  SteadyClock::time_point answered_429;
  {
    std::lock_guard<std::mutex> lock(shared->mutex);
    answered_429 = shared->answered_429;
  }
  std::vector<Webhook::Call> calls = SortedCalls(hook);
  REQUIRE(calls.size() == 7);
  int later = 0;
  for (const auto& call : calls) {
    if ((call.key == "k0" || call.key == "k1") && AttemptOf(call) == 1) continue;
    ++later;
    INFO(call.key << " attempt " << AttemptOf(call) << " came " << MsBetween(answered_429, call.at)
                  << " ms after the 429 was answered");
    CHECK(MsBetween(answered_429, call.at) >= 1000 - 50);
    CHECK(MsBetween(answered_429, call.at) < 1000 + 5000);
  }
  CHECK(later == 5);
}

TEST_CASE("Retry-After is capped by max_backoff_ms and honoured only on 429 and 503",
          "[delivery]") {
  Webhook hook;
  const std::string in_an_hour = HttpDate(time(nullptr) + 3600);
  hook.SetHandler([in_an_hour](const Webhook::Call& call, httplib::Response& res) {
    if (AttemptOf(call) >= 2) {
      res.set_content("{}", "application/json");
    } else if (call.key == "s0") {
      res.status = 429;
      res.set_header("Retry-After", "30");  // delay-seconds
    } else if (call.key == "d0") {
      res.status = 503;
      res.set_header("Retry-After", in_an_hour);  // an HTTP-date
    } else {
      res.status = 500;
      res.set_header("Retry-After", "30");  // not a reason to slow down
    }
  });
  PmmapProcess pmmap;
  // One job per key: a 429 or 503 pauses its whole job, so a key sharing a
  // job with another would wait out that one's pause too. backoff_ms 1: a
  // Retry-After ignored would leave a wait of at most 1 ms.
  const std::string capped = "\"backoff_ms\":1,\"max_backoff_ms\":300";
  std::string seconds_429 =
      StartJob(pmmap, JobBody(hook.url(), capped), "[{\"key\":\"s0\",\"value\":1}]");
  std::string date_503 =
      StartJob(pmmap, JobBody(hook.url(), capped), "[{\"key\":\"d0\",\"value\":2}]");
  std::string ignored =
      StartJob(pmmap, JobBody(hook.url(), "\"backoff_ms\":0"), "[{\"key\":\"x0\",\"value\":3}]");
  for (const std::string& id : {seconds_429, date_503, ignored}) {
    WaitForState(pmmap, id, "done", std::chrono::seconds(10));
  }

  auto by_key = CallsByKey(hook.calls());
  for (const char* key : {"s0", "d0"}) {
    double gap = MsToSecondAttempt(by_key, key);
    INFO(key << ": second attempt " << gap << " ms after the first");
    CHECK(gap >= 300 - 50);   // the capped Retry-After is waited out
    CHECK(gap < 300 + 1500);  // and not the 30 s or the hour asked for
  }
  double gap = MsToSecondAttempt(by_key, "x0");
  INFO("x0: second attempt " << gap << " ms after the first");
  CHECK(gap < 5000);  // backoff_ms 0: the 500's Retry-After (30 s) is not honoured
}

TEST_CASE("of several Retry-After headers, the last one is honoured", "[delivery]") {
  Webhook hook;
  hook.SetHandler([](const Webhook::Call& call, httplib::Response& res) {
    if (AttemptOf(call) >= 2) {
      res.set_content("{}", "application/json");
      return;
    }
    res.status = 429;
    // cpp-httplib keeps both: the reply carries two Retry-After lines.
    res.set_header("Retry-After", call.key == "short-last" ? "30" : "0");
    res.set_header("Retry-After", call.key == "short-last" ? "0" : "1");
  });
  PmmapProcess pmmap;
  // One job per key: a 429 pauses its whole job, so the keys must not share one.
  std::string short_last = StartJob(pmmap, JobBody(hook.url(), "\"max_backoff_ms\":60000"),
                                    "[{\"key\":\"short-last\",\"value\":1}]");
  std::string long_last = StartJob(pmmap, JobBody(hook.url(), "\"max_backoff_ms\":60000"),
                                   "[{\"key\":\"long-last\",\"value\":2}]");
  // Were the first header honoured, short-last would wait 30 s: past this.
  WaitForState(pmmap, short_last, "done", std::chrono::seconds(10));
  WaitForState(pmmap, long_last, "done", std::chrono::seconds(10));

  auto by_key = CallsByKey(hook.calls());
  double short_gap = MsToSecondAttempt(by_key, "short-last");
  double long_gap = MsToSecondAttempt(by_key, "long-last");
  INFO("second attempts after " << short_gap << " ms (last header 0) and " << long_gap
                                << " ms (last header 1)");
  CHECK(short_gap < 5000);
  CHECK(long_gap >= 1000 - 50);  // not the first header's 0
}

TEST_CASE("a webhook that does not answer within timeout_ms gives a status-0 error entry",
          "[delivery]") {
  auto gate = std::make_shared<Gate>();
  Webhook hook;
  hook.SetHandler([gate](const Webhook::Call&, httplib::Response& res) {
    gate->Wait();  // far longer than timeout_ms, until the test ends
    res.set_content("{}", "application/json");
  });
  PmmapProcess pmmap;
  OpenAtExit open_at_exit(*gate);

  std::string once = CreateJob(pmmap, JobBody(hook.url(), "\"timeout_ms\":200,\"max_attempts\":1"));
  std::string twice = CreateJob(
      pmmap, JobBody(hook.url(), "\"timeout_ms\":200,\"max_attempts\":2,\"backoff_ms\":0"));
  auto start = SteadyClock::now();
  PutInputs(pmmap, once, "[{\"key\":\"once\",\"value\":1}]");
  Complete(pmmap, once);
  PutInputs(pmmap, twice, "[{\"key\":\"twice\",\"value\":2}]");
  Complete(pmmap, twice);
  rapidjson::Document job = WaitForState(pmmap, once, "done", std::chrono::seconds(10));
  double elapsed = MsBetween(start, SteadyClock::now());
  INFO("the one-attempt job took " << elapsed << " ms");
  CHECK(elapsed >= 200 - 20);
  CHECK(elapsed < 5000);  // the webhook would have taken 15 s
  CHECK(U64(job, "failed") == 1);
  job = WaitForState(pmmap, twice, "done", std::chrono::seconds(10));
  elapsed = MsBetween(start, SteadyClock::now());
  INFO("the two-attempt job took " << elapsed << " ms");
  CHECK(elapsed >= 2 * 200 - 20);
  CHECK(elapsed < 8000);
  CHECK(U64(job, "retries") == 1);

  for (const auto& id_attempts : {std::make_pair(once, 1), std::make_pair(twice, 2)}) {
    std::vector<std::string> entries = ArrayEntries(GetOutput(pmmap, id_attempts.first));
    REQUIRE(entries.size() == 1);
    rapidjson::Document entry = ParseJson(entries[0]);
    INFO(entries[0]);
    REQUIRE(entry.HasMember("error"));
    CHECK(entry["error"]["status"].GetInt() == 0);
    CHECK(Text(entry["error"], "message").find("timeout_ms") != std::string::npos);
    CHECK(entry["attempts"].GetInt() == id_attempts.second);
  }
  auto by_key = CallsByKey(hook.calls());
  REQUIRE(by_key["once"].size() == 1);
  REQUIRE(by_key["twice"].size() == 2);
  CHECK(AttemptOf(by_key["twice"][1]) == 2);
}

TEST_CASE("rate_per_sec spaces the calls, with a burst of concurrency", "[delivery]") {
  Webhook hook;
  PmmapProcess pmmap;
  // s: 20/s one at a time, 30 inputs: >= 29/20 s. b: 2/s, burst 4, 8 inputs.
  std::string steady =
      CreateJob(pmmap, JobBody(hook.url(), "\"concurrency\":1,\"rate_per_sec\":20"));
  std::string burst = CreateJob(pmmap, JobBody(hook.url(), "\"concurrency\":4,\"rate_per_sec\":2"));
  REQUIRE(GetJob(pmmap, steady)["rate_per_sec"].GetDouble() == 20);
  PutInputs(pmmap, steady, MakeInputs(30, "s"));
  PutInputs(pmmap, burst, MakeInputs(8, "b"));
  Complete(pmmap, steady);
  Complete(pmmap, burst);
  WaitForState(pmmap, steady, "done");
  WaitForState(pmmap, burst, "done");

  std::vector<Webhook::Call> s_calls;
  std::vector<Webhook::Call> b_calls;
  for (auto& call : SortedCalls(hook)) (call.key[0] == 's' ? s_calls : b_calls).push_back(call);
  REQUIRE(s_calls.size() == 30);
  REQUIRE(b_calls.size() == 8);
  // The i-th call needs i tokens beyond the first, at 20 a second; the
  // slack covers only the first call's own delay in reaching the webhook.
  for (size_t i = 1; i < s_calls.size(); ++i) {
    double since = MsBetween(s_calls[0].at, s_calls[i].at);
    INFO("steady call " << i << " came " << since << " ms after the first");
    CHECK(since >= i * 1000.0 / 20 - 100);
  }
  double span = MsBetween(s_calls[0].at, s_calls.back().at);
  INFO("30 calls at 20/s took " << span << " ms");
  CHECK(span >= 29 * 1000.0 / 20 - 100);
  CHECK(span < 29 * 1000.0 / 20 + 5000);

  // The first 4 go at once (one rate step apart, they would span 1500 ms;
  // the bound leaves room for the sanitizers)...
  CHECK(MsBetween(b_calls[0].at, b_calls[3].at) < 1000);
  // ...then one token every 500 ms.
  for (size_t i = 4; i < b_calls.size(); ++i) {
    double since = MsBetween(b_calls[0].at, b_calls[i].at);
    INFO("burst call " << i << " came " << since << " ms after the first");
    CHECK(since >= (i - 3) * 1000.0 / 2 - 100);
  }
}

TEST_CASE("a tiny rate_per_sec holds calls back without wedging the job or the server",
          "[delivery]") {
  // At the smallest rate_per_sec taken, 0.001 a second, the first input goes
  // at once (the burst of one) and the second would wait 1000 s; meanwhile
  // the job must keep answering, cancel, and let the server stop. A smaller
  // rate is refused with a 400 naming the field.
  Webhook hook;
  PmmapProcess pmmap;
  const std::string base = pmmap.base_url();
  std::string refused =
      RequireError(Http(base, "POST", "/job", JobBody(hook.url(), "\"rate_per_sec\":1e-12")), 400);
  CHECK(refused.find("rate_per_sec") != std::string::npos);
  HttpResult created =
      Http(base, "POST", "/job", JobBody(hook.url(), "\"concurrency\":1,\"rate_per_sec\":0.001"));
  INFO("POST /job -> " << created.status << " " << created.body);
  REQUIRE(created.status == 201);
  std::string id = Text(ParseJson(created.body), "id");
  PutInputs(pmmap, id, MakeInputs(2));

  // Short client timeouts: a read that does not answer promptly is the failure.
  auto read_job = [&](uint64_t* outputs) {
    HttpResult r = Http(base, "GET", "/job/" + id, "", {}, std::chrono::seconds(2));
    if (r.status != 200) return false;
    rapidjson::Document job = ParseJson(r.body);
    CheckCounters(job);
    *outputs = U64(job, "outputs");
    return true;
  };
  uint64_t outputs = 0;
  bool responsive = true;
  auto deadline = SteadyClock::now() + std::chrono::seconds(5);
  while (responsive && outputs == 0 && SteadyClock::now() < deadline) {
    responsive = read_job(&outputs);
    std::this_thread::sleep_for(milliseconds(10));
  }
  REQUIRE(hook.call_count() == 1);
  if (responsive) {
    CHECK(outputs == 1);
    // The worker now waits 1000 s for its next token: reads still answer.
    for (int i = 0; i < 10 && responsive; ++i) {
      responsive = read_job(&outputs);
      std::this_thread::sleep_for(milliseconds(20));
    }
  }
  INFO("GET /job/" << id << " stopped answering once the worker waited for a token");
  CHECK(responsive);
  if (responsive) {
    HttpResult cancel =
        Http(base, "POST", "/job/" + id + "/cancel", "", {}, std::chrono::seconds(2));
    CHECK(cancel.status == 200);
    CHECK(hook.call_count() == 1);
  }
  // And SIGTERM still stops the server (it had to be killed if -1).
  CHECK(pmmap.Stop(SIGTERM, std::chrono::seconds(5)) == 0);
}

// 2. Live counters.

namespace {

// Slow (5 ms a call); k%7 fails for good (400); k%3 fails its first
// attempt (500); the rest succeed.
void AnswerMixed(const Webhook::Call& call, httplib::Response& res) {
  std::this_thread::sleep_for(milliseconds(5));
  int index = IndexOf(call.key);
  if (index % 7 == 0) {
    res.status = 400;
    res.set_content("refused", "text/plain");
  } else if (index % 3 == 0 && AttemptOf(call) == 1) {
    res.status = 500;
  } else {
    res.set_content("{\"ok\":true}", "application/json");
  }
}

// GET /jobs lists every job (jobs of them) in the same form as GET
// /job/{id}, with the same invariants.
void CheckListedCounters(const PmmapProcess& pmmap, size_t jobs) {
  HttpResult list = Http(pmmap.base_url(), "GET", "/jobs");
  REQUIRE(list.status == 200);
  rapidjson::Document all = ParseJson(list.body);
  REQUIRE(all.IsArray());
  REQUIRE(all.Size() == jobs);
  for (const auto& listed : all.GetArray()) CheckCounters(listed);
}

// Reads completed job id, of n inputs, until it is done, checking its
// counters at every read and those of GET /jobs (jobs jobs) at every
// fourth; returns the last read. Counts the reads in *reads, and in
// *reads_midway those made while some but not all inputs were answered.
rapidjson::Document ReadUntilDone(const PmmapProcess& pmmap, const std::string& id, int n,
                                  size_t jobs, int* reads, int* reads_midway) {
  rapidjson::Document job;
  uint64_t last_outputs = 0;
  uint64_t last_retries = 0;
  auto deadline = SteadyClock::now() + std::chrono::seconds(20);
  for (;;) {
    job = GetJob(pmmap, id);
    ++*reads;
    CheckCounters(job);
    std::string state = State(job);
    REQUIRE((state == "closing" || state == "done"));
    CHECK(U64(job, "inputs") == static_cast<uint64_t>(n));
    uint64_t outputs = U64(job, "outputs");
    uint64_t retries = U64(job, "retries");
    CHECK(outputs >= last_outputs);
    CHECK(retries >= last_retries);
    last_outputs = outputs;
    last_retries = retries;
    if (outputs > 0 && outputs < static_cast<uint64_t>(n)) ++*reads_midway;
    if (state == "closing") {
      CHECK(job["done_at"].IsNull());
    } else {
      break;
    }
    if (*reads % 4 == 0) CheckListedCounters(pmmap, jobs);
    REQUIRE(SteadyClock::now() < deadline);
  }
  return job;
}

// Checks the last read of a done job whose n inputs AnswerMixed answered;
// returns how many of them were retried.
int CheckMixedJobDone(const rapidjson::Value& job, int n) {
  // 0, 7, ..., 119 fail; multiples of 3 but not of 7 are retried once.
  int failed = 0;
  int retried = 0;
  for (int i = 0; i < n; ++i) {
    if (i % 7 == 0) {
      ++failed;
    } else if (i % 3 == 0) {
      ++retried;
    }
  }
  CHECK(State(job) == "done");
  CHECK(U64(job, "outputs") == static_cast<uint64_t>(n));
  CHECK(U64(job, "failed") == static_cast<uint64_t>(failed));
  CHECK(U64(job, "succeeded") == static_cast<uint64_t>(n - failed));
  CHECK(U64(job, "retries") == static_cast<uint64_t>(retried));
  CHECK(U64(job, "pending") == 0);
  CHECK(U64(job, "in_flight") == 0);
  CheckTimestamp(job["created_at"]);
  CheckTimestamp(job["done_at"]);
  CHECK(Text(job, "created_at") <= Text(job, "done_at"));
  return retried;
}

}  // namespace

TEST_CASE("the counters add up at every read while a job runs", "[delivery]") {
  auto gate = std::make_shared<Gate>();
  Webhook hook;
  hook.SetHandler([gate](const Webhook::Call& call, httplib::Response& res) {
    gate->Wait();
    AnswerMixed(call, res);
  });
  PmmapProcess pmmap;
  OpenAtExit open_at_exit(*gate);
  const int n = 120;
  std::string id = CreateJob(
      pmmap,
      JobBody(hook.url(),
              "\"concurrency\":4,\"max_attempts\":3,\"backoff_ms\":5,\"max_backoff_ms\":20"));
  std::string other = CreateJob(pmmap, JobBody(hook.url()));  // stays open and empty

  PutInputs(pmmap, id, MakeInputs(n));
  rapidjson::Document job = GetJob(pmmap, id);
  CheckCounters(job);
  CHECK(State(job) == "open");
  CHECK(U64(job, "inputs") == static_cast<uint64_t>(n));
  job = WaitForJob(pmmap, id,
                   [](const rapidjson::Document& d) { return d["in_flight"].GetUint64() == 4; });
  CheckCounters(job);
  REQUIRE(U64(job, "in_flight") == 4);
  CHECK(U64(job, "pending") == static_cast<uint64_t>(n - 4));
  CHECK(State(job) == "open");
  CHECK(job["done_at"].IsNull());

  // Complete while calls are held: "closing" until they are all answered.
  job = Complete(pmmap, id);
  CheckCounters(job);
  CHECK(State(job) == "closing");
  CHECK(job["done_at"].IsNull());

  gate->Open();
  int reads = 0;
  int reads_midway = 0;
  job = ReadUntilDone(pmmap, id, n, 2, &reads, &reads_midway);
  INFO(reads << " reads, " << reads_midway << " midway");
  CHECK(reads_midway >= 1);

  int retried = CheckMixedJobDone(job, n);
  CHECK(hook.call_count() == static_cast<size_t>(n + retried));
  CHECK(State(GetJob(pmmap, other)) == "open");
}

TEST_CASE("GET /jobs lists every job in the form of GET /job/{id}", "[delivery]") {
  Webhook hook;
  PmmapProcess pmmap;
  std::string configured = CreateJob(
      pmmap, JobBody(hook.url(),
                     "\"concurrency\":3,\"maxsize\":50,\"timeout_ms\":1234,\"max_attempts\":7,"
                     "\"backoff_ms\":11,\"max_backoff_ms\":222,\"rate_per_sec\":2.5"));
  std::string done = StartJob(pmmap, JobBody(hook.url(), "\"concurrency\":2"), MakeInputs(5, "d"));
  std::string open = CreateJob(pmmap, JobBody(hook.url()));
  PutInputs(pmmap, open, MakeInputs(3, "o"));
  std::string cancelled = CreateJob(pmmap, JobBody(hook.url()));
  Cancel(pmmap, cancelled);
  WaitForState(pmmap, done, "done");
  // All of its inputs answered, but not complete: still open, not done.
  rapidjson::Document o = WaitForJob(
      pmmap, open, [](const rapidjson::Document& d) { return d["outputs"].GetUint64() == 3; });
  CHECK(State(o) == "open");
  CHECK(U64(o, "outputs") == 3);
  CHECK(o["done_at"].IsNull());

  const std::vector<std::string> ids = {configured, done, open, cancelled};
  HttpResult list = Http(pmmap.base_url(), "GET", "/jobs");
  REQUIRE(list.status == 200);
  REQUIRE(HeaderOf(list.headers, "Content-Type").find("application/json") == 0);
  rapidjson::Document all = ParseJson(list.body);
  REQUIRE(all.IsArray());
  REQUIRE(all.Size() == ids.size());
  std::set<std::string> listed;
  for (const auto& job : all.GetArray()) {
    CheckCounters(job);
    std::string id = Text(job, "id");
    listed.insert(id);
    // Every job is at rest, so both reads must be identical.
    CHECK(Json(job) == Json(GetJob(pmmap, id)));
  }
  CHECK(listed == std::set<std::string>(ids.begin(), ids.end()));

  // An open job whose inputs are all answered is done as soon as it is complete.
  rapidjson::Document completed = Complete(pmmap, open);
  CHECK(State(completed) == "done");
  CheckTimestamp(completed["done_at"]);

  REQUIRE(Http(pmmap.base_url(), "DELETE", "/job/" + done).status == 200);
  all = ParseJson(Http(pmmap.base_url(), "GET", "/jobs").body);
  REQUIRE(all.Size() == ids.size() - 1);
  for (const auto& job : all.GetArray()) CHECK(Text(job, "id") != done);
}

// 3. Cancel.

namespace {

// Checks the answer of POST /job/{id}/cancel for a job of n inputs: every
// one of them is answered, as a failure.
void CheckCancelledAtOnce(const rapidjson::Value& job, int n) {
  CheckCounters(job);
  CHECK(State(job) == "cancelled");
  CHECK(U64(job, "inputs") == static_cast<uint64_t>(n));
  CHECK(U64(job, "outputs") == static_cast<uint64_t>(n));
  CHECK(U64(job, "failed") == static_cast<uint64_t>(n));
  CHECK(U64(job, "succeeded") == 0);
  CHECK(U64(job, "pending") == 0);
  CHECK(U64(job, "in_flight") == 0);
  CheckTimestamp(job["done_at"]);
}

// Checks the output of a cancelled job of n inputs: one "cancelled" error
// per key, with one attempt if the key is among those called, else none.
void CheckCancelledOutput(const HttpResult& out, int n, const std::set<std::string>& called) {
  CHECK(HeaderOf(out.headers, "PMMAP-state") == "cancelled");
  std::vector<std::string> entries = ArrayEntries(out);
  REQUIRE(entries.size() == static_cast<size_t>(n));
  std::set<std::string> keys;
  for (const std::string& text : entries) {
    rapidjson::Document entry = ParseJson(text);
    INFO(text);
    std::string key = Text(entry, "key");
    keys.insert(key);
    REQUIRE(entry.HasMember("error"));
    CHECK(entry["error"]["status"].GetInt() == 0);
    CHECK(Text(entry["error"], "message") == "cancelled");
    CHECK(entry["attempts"].GetInt() == (called.count(key) ? 1 : 0));
  }
  CHECK(keys.size() == static_cast<size_t>(n));
}

}  // namespace

TEST_CASE("cancel stops a running job: calls aborted, nothing more sent, every input answered",
          "[delivery]") {
  auto gate = std::make_shared<Gate>();
  Webhook hook;
  hook.SetHandler([gate](const Webhook::Call&, httplib::Response& res) {
    gate->Wait();
    res.set_content("{\"late\":true}", "application/json");
  });
  PmmapProcess pmmap;
  OpenAtExit open_at_exit(*gate);
  const int n = 10;
  std::string id = CreateJob(pmmap, JobBody(hook.url(), "\"concurrency\":2,\"timeout_ms\":60000"));
  PutInputs(pmmap, id, MakeInputs(n));
  rapidjson::Document job = WaitForJob(
      pmmap, id, [](const rapidjson::Document& d) { return d["in_flight"].GetUint64() == 2; });
  REQUIRE(U64(job, "in_flight") == 2);
  REQUIRE(WaitUntil([&] { return hook.in_flight() == 2; }));
  // pmmap holds one connection per call in flight.
  REQUIRE(WaitUntil([&] { return EstablishedTo(hook.port()) == 2; }));

  CheckCancelledAtOnce(Cancel(pmmap, id), n);
  const size_t calls_at_cancel = hook.call_count();
  CHECK(calls_at_cancel == 2);

  // The calls in flight are aborted: pmmap drops their connections while
  // the webhook still holds them.
  bool dropped =
      WaitUntil([&] { return EstablishedTo(hook.port()) == 0; }, std::chrono::seconds(5));
  INFO("connections to the webhook still open: " << EstablishedTo(hook.port()));
  CHECK(dropped);
  CHECK(hook.in_flight() == 2);

  // The held calls now answer; nothing of theirs is kept and nothing new is sent.
  gate->Open();
  REQUIRE(WaitUntil([&] { return hook.in_flight() == 0; }));
  for (int i = 0; i < 30; ++i) {
    REQUIRE(hook.call_count() == calls_at_cancel);
    std::this_thread::sleep_for(milliseconds(20));
  }
  job = GetJob(pmmap, id);
  CheckCounters(job);
  CHECK(State(job) == "cancelled");
  CHECK(U64(job, "outputs") == static_cast<uint64_t>(n));
  CHECK(U64(job, "succeeded") == 0);

  std::set<std::string> called;
  for (const auto& call : hook.calls()) called.insert(call.key);
  for (int read = 0; read < 2; ++read) {  // readable again and again until DELETE
    CheckCancelledOutput(GetOutput(pmmap, id), n, called);
  }
  // A cancelled job takes no more inputs.
  RequireError(Http(pmmap.base_url(), "PUT", "/job/" + id + "/input", MakeInputs(1, "late")), 409);
  REQUIRE(Http(pmmap.base_url(), "DELETE", "/job/" + id).status == 200);
  CHECK(Http(pmmap.base_url(), "GET", "/job/" + id + "/output").status == 404);
  CHECK(Http(pmmap.base_url(), "GET", "/job/" + id).status == 404);
  CHECK(Post(pmmap, "/job/" + id + "/cancel").status == 404);
}

TEST_CASE("cancel drops retries waiting out a Retry-After: they are never sent", "[delivery]") {
  Webhook hook;
  hook.SetHandler([](const Webhook::Call&, httplib::Response& res) {
    res.status = 503;
    res.set_header("Retry-After", "2");
  });
  PmmapProcess pmmap;
  std::string id = CreateJob(pmmap, JobBody(hook.url(), "\"concurrency\":1"));
  PutInputs(pmmap, id, MakeInputs(3));
  rapidjson::Document job = WaitForJob(
      pmmap, id, [](const rapidjson::Document& d) { return d["retries"].GetUint64() == 1; });
  REQUIRE(U64(job, "retries") == 1);
  CHECK(U64(job, "pending") == 3);  // k0 waiting to retry, k1 and k2 queued
  CHECK(U64(job, "in_flight") == 0);
  job = Cancel(pmmap, id);
  CheckCounters(job);
  CHECK(U64(job, "outputs") == 3);
  REQUIRE(hook.call_count() == 1);
  auto first = hook.calls()[0].at;
  // Watch past the end of the pause (2 s after the first call, and more).
  while (MsBetween(first, SteadyClock::now()) < 2000 + 300) {
    REQUIRE(hook.call_count() == 1);
    std::this_thread::sleep_for(milliseconds(20));
  }
  std::vector<std::string> entries = ArrayEntries(GetOutput(pmmap, id));
  REQUIRE(entries.size() == 3);
  for (const std::string& text : entries) {
    rapidjson::Document entry = ParseJson(text);
    INFO(text);
    CHECK(Text(entry["error"], "message") == "cancelled");
    // k0's call was answered 503, which spends no attempt (the circuit breaker is on).
    CHECK(entry["attempts"].GetInt() == 0);
  }
}

TEST_CASE("cancel answers a PUT blocked for room with 409", "[delivery]") {
  auto gate = std::make_shared<Gate>();
  Webhook hook;
  hook.SetHandler([gate](const Webhook::Call&, httplib::Response& res) {
    gate->Wait();
    res.set_content("{}", "application/json");
  });
  Background put_thread;
  PmmapProcess pmmap;
  OpenAtExit open_at_exit(*gate);
  std::string id = CreateJob(pmmap, JobBody(hook.url(), "\"concurrency\":1,\"maxsize\":2"));

  auto put = std::make_shared<Answer>();
  const std::string base = pmmap.base_url();
  put_thread.thread = std::thread([put, base, id] {
    put->result = Http(base, "PUT", "/job/" + id + "/input", MakeInputs(10));
    put->at = SteadyClock::now();
    put->done = true;
  });
  // One in flight, two queued: the other seven wait for room.
  rapidjson::Document job = WaitForJob(pmmap, id, [](const rapidjson::Document& d) {
    return d["inputs"].GetUint64() == 3 && d["in_flight"].GetUint64() == 1;
  });
  REQUIRE(U64(job, "inputs") == 3);
  REQUIRE(U64(job, "pending") == 2);
  REQUIRE_FALSE(put->done.load());

  auto cancelled_at = SteadyClock::now();
  job = Cancel(pmmap, id);
  put_thread.thread.join();
  INFO("PUT -> " << put->result.status << " " << put->result.body);
  CHECK(put->result.status == 409);
  CHECK(MsBetween(cancelled_at, put->at) < 5000);
  rapidjson::Document error = ParseJson(put->result.body);
  CHECK(Text(error, "error").find("cancel") != std::string::npos);

  job = GetJob(pmmap, id);
  CheckCounters(job);
  CHECK(State(job) == "cancelled");
  CHECK(U64(job, "inputs") == 3);
  CHECK(U64(job, "outputs") == 3);
  CHECK(ArrayEntries(GetOutput(pmmap, id)).size() == 3);
  // And a later PUT is refused at once.
  HttpResult later = Http(pmmap.base_url(), "PUT", "/job/" + id + "/input", MakeInputs(1, "late"));
  CHECK(later.status == 409);
}

TEST_CASE("cancel answers a GET /output waiting for the end at once, with everything",
          "[delivery]") {
  auto gate = std::make_shared<Gate>();
  Webhook hook;
  hook.SetHandler([gate](const Webhook::Call& call, httplib::Response& res) {
    if (call.key != "k0") gate->Wait();
    res.set_content("{}", "application/json");
  });
  Background get_thread;
  PmmapProcess pmmap;
  OpenAtExit open_at_exit(*gate);
  std::string id = CreateJob(pmmap, JobBody(hook.url(), "\"concurrency\":1"));
  PutInputs(pmmap, id, MakeInputs(4));
  WaitForJob(pmmap, id, [](const rapidjson::Document& d) { return d["outputs"].GetUint64() == 1; });

  auto get = std::make_shared<Answer>();
  const std::string base = pmmap.base_url();
  get_thread.thread = std::thread([get, base, id] {
    get->result = Http(base, "GET", "/job/" + id + "/output");
    get->at = SteadyClock::now();
    get->done = true;
  });
  // The job is open, so the GET waits; it must not answer during this watch.
  for (int i = 0; i < 15; ++i) {
    REQUIRE_FALSE(get->done.load());
    std::this_thread::sleep_for(milliseconds(20));
  }
  auto cancelled_at = SteadyClock::now();
  Cancel(pmmap, id);
  get_thread.thread.join();
  const HttpResult& out = get->result;
  INFO("GET /output -> " << out.status << " " << out.body);
  REQUIRE(out.status == 200);
  CHECK(MsBetween(cancelled_at, get->at) < 5000);
  CHECK(HeaderOf(out.headers, "PMMAP-state") == "cancelled");
  std::vector<std::string> entries = ArrayEntries(out);
  REQUIRE(entries.size() == 4);
  int cancelled = 0;
  for (const std::string& text : entries) {
    rapidjson::Document entry = ParseJson(text);
    if (entry.HasMember("error") && Text(entry["error"], "message") == "cancelled") ++cancelled;
  }
  CHECK(cancelled == 3);  // k0 was answered before the cancel
}

TEST_CASE("cancel in every state", "[delivery]") {
  auto gate = std::make_shared<Gate>();
  Webhook hook;
  hook.SetHandler([gate](const Webhook::Call& call, httplib::Response& res) {
    if (call.key[0] == 'c') gate->Wait();  // the closing job's calls are held
    res.set_content("{}", "application/json");
  });
  PmmapProcess pmmap;
  OpenAtExit open_at_exit(*gate);

  SECTION("open, without inputs; then again, idempotent") {
    std::string id = CreateJob(pmmap, JobBody(hook.url()));
    rapidjson::Document job = Cancel(pmmap, id);
    CheckCounters(job);
    CHECK(State(job) == "cancelled");
    CHECK(U64(job, "inputs") == 0);
    CHECK(U64(job, "outputs") == 0);
    CheckTimestamp(job["done_at"]);
    std::string done_at = Text(job, "done_at");
    rapidjson::Document again = Cancel(pmmap, id);
    CHECK(State(again) == "cancelled");
    CHECK(Text(again, "done_at") == done_at);
    HttpResult put = Http(pmmap.base_url(), "PUT", "/job/" + id + "/input", MakeInputs(2));
    INFO("PUT after cancel -> " << put.body);
    CHECK(put.status == 409);
    // Completing a cancelled job changes nothing.
    Post(pmmap, "/job/" + id + "/complete");
    CHECK(State(GetJob(pmmap, id)) == "cancelled");
    HttpResult out = GetOutput(pmmap, id);  // answers at once: the job is over
    CHECK(ArrayEntries(out).empty());
    CHECK(HeaderOf(out.headers, "PMMAP-state") == "cancelled");
    CHECK(hook.call_count() == 0);
  }

  SECTION("closing, with calls in flight") {
    std::string id = CreateJob(pmmap, JobBody(hook.url(), "\"concurrency\":2"));
    PutInputs(pmmap, id, MakeInputs(3, "c"));
    WaitForJob(pmmap, id,
               [](const rapidjson::Document& d) { return d["in_flight"].GetUint64() == 2; });
    REQUIRE(State(Complete(pmmap, id)) == "closing");
    rapidjson::Document job = Cancel(pmmap, id);
    CheckCounters(job);
    CHECK(State(job) == "cancelled");
    CHECK(U64(job, "outputs") == 3);
    CHECK(ArrayEntries(GetOutput(pmmap, id)).size() == 3);
  }

  SECTION("done: stays done") {
    std::string id = StartJob(pmmap, JobBody(hook.url(), "\"concurrency\":2"), MakeInputs(3, "d"));
    rapidjson::Document before = WaitForState(pmmap, id, "done");
    rapidjson::Document job = Cancel(pmmap, id);
    CHECK(State(job) == "done");
    CHECK(Json(job) == Json(before));
    std::vector<std::string> entries = ArrayEntries(GetOutput(pmmap, id));
    REQUIRE(entries.size() == 3);
    for (const std::string& text : entries) CHECK_FALSE(ParseJson(text).HasMember("error"));
  }

  SECTION("unknown or deleted job: 404") {
    HttpResult r = Post(pmmap, "/job/0123456789abcdef/cancel");
    CHECK(r.status == 404);
    CHECK(ParseJson(r.body).HasMember("error"));
    std::string id = CreateJob(pmmap, JobBody(hook.url()));
    REQUIRE(Http(pmmap.base_url(), "DELETE", "/job/" + id).status == 200);
    CHECK(Post(pmmap, "/job/" + id + "/cancel").status == 404);
  }
}

// 4. Output on the caller's terms.

TEST_CASE("GET /output?wait=false answers at once with the entries stored so far", "[delivery]") {
  auto gate = std::make_shared<Gate>();
  Webhook hook;
  hook.SetHandler([gate](const Webhook::Call& call, httplib::Response& res) {
    if (IndexOf(call.key) >= 3) gate->Wait();
    res.set_content("{\"n\":" + std::to_string(IndexOf(call.key)) + "}", "application/json");
  });
  PmmapProcess pmmap;
  OpenAtExit open_at_exit(*gate);
  std::string id = CreateJob(pmmap, JobBody(hook.url(), "\"concurrency\":1"));
  PutInputs(pmmap, id, MakeInputs(5));
  WaitForJob(pmmap, id, [](const rapidjson::Document& d) {
    return d["outputs"].GetUint64() == 3 && d["in_flight"].GetUint64() == 1;
  });

  auto now_query = [&](const std::string& query, const httplib::Headers& headers = {}) {
    // A short client timeout: a GET that waited for the end would fail here.
    HttpResult r = Http(pmmap.base_url(), "GET", "/job/" + id + "/output" + query, "", headers,
                        std::chrono::seconds(5));
    INFO("GET /output" << query << " -> " << r.status << " " << r.body);
    REQUIRE(r.status == 200);
    return r;
  };
  HttpResult r = now_query("?wait=false");
  CHECK(HeaderOf(r.headers, "PMMAP-state") == "open");
  std::vector<std::string> so_far = ArrayEntries(r);
  REQUIRE(so_far.size() == 3);
  for (int i = 0; i < 3; ++i) CHECK(Key(so_far[i]) == "k" + std::to_string(i));  // stored order
  CHECK(ArrayEntries(now_query("?wait=0")) == so_far);
  CHECK(NdjsonEntries(now_query("?wait=false&format=ndjson")) == so_far);
  std::vector<std::string> tail = ArrayEntries(now_query("?wait=false&offset=1&limit=5"));
  CHECK(tail == std::vector<std::string>(so_far.begin() + 1, so_far.end()));
  CHECK(ArrayEntries(now_query("?wait=false&offset=3")).empty());

  // Complete with a call still held: "closing", same entries.
  REQUIRE(State(Complete(pmmap, id)) == "closing");
  r = now_query("?wait=false");
  CHECK(HeaderOf(r.headers, "PMMAP-state") == "closing");
  CHECK(ArrayEntries(r) == so_far);

  gate->Open();
  r = GetOutput(pmmap, id);  // waits for the end
  CHECK(HeaderOf(r.headers, "PMMAP-state") == "done");
  std::vector<std::string> all = ArrayEntries(r);
  REQUIRE(all.size() == 5);
  CHECK(std::vector<std::string>(all.begin(), all.begin() + 3) == so_far);
  r = now_query("?wait=false");
  CHECK(HeaderOf(r.headers, "PMMAP-state") == "done");
  CHECK(ArrayEntries(r) == all);
}

TEST_CASE("offset and limit page through the output in stored order", "[delivery]") {
  Webhook hook;
  PmmapProcess pmmap;
  const size_t n = 23;
  std::string id =
      StartJob(pmmap, JobBody(hook.url(), "\"concurrency\":3"), MakeInputs(static_cast<int>(n)));
  std::vector<std::string> full = ArrayEntries(GetOutput(pmmap, id));
  REQUIRE(full.size() == n);
  std::set<std::string> keys;
  for (const auto& entry : full) keys.insert(Key(entry));
  CHECK(keys.size() == n);

  for (size_t limit : {1, 5, 7, 23, 100}) {
    INFO("limit " << limit);
    std::vector<std::string> joined;
    std::vector<std::string> joined_ndjson;
    for (size_t offset = 0, pages = 0;; offset += limit, ++pages) {
      REQUIRE(pages <= n + 1);
      std::string query = "?offset=" + std::to_string(offset) + "&limit=" + std::to_string(limit);
      std::vector<std::string> page = ArrayEntries(GetOutput(pmmap, id, query));
      CHECK(page.size() == std::min(limit, offset < n ? n - offset : 0));
      if (page.empty()) break;  // (an empty NDJSON page has a test of its own)
      std::vector<std::string> page_ndjson =
          NdjsonEntries(GetOutput(pmmap, id, query + "&format=ndjson"));
      CHECK(page == page_ndjson);
      joined.insert(joined.end(), page.begin(), page.end());
      joined_ndjson.insert(joined_ndjson.end(), page_ndjson.begin(), page_ndjson.end());
    }
    CHECK(joined == full);
    CHECK(joined_ndjson == full);
  }
  CHECK(ArrayEntries(GetOutput(pmmap, id, "?offset=22")) == std::vector<std::string>{full[22]});
  CHECK(ArrayEntries(GetOutput(pmmap, id, "?offset=23")).empty());
  CHECK(ArrayEntries(GetOutput(pmmap, id, "?offset=1000000")).empty());
  CHECK(ArrayEntries(GetOutput(pmmap, id, "?limit=0")).empty());
  CHECK(ArrayEntries(GetOutput(pmmap, id, "?offset=0&limit=0")).empty());
  CHECK(ArrayEntries(GetOutput(pmmap, id, "?limit=9999999999999999999")) == full);
  CHECK(ArrayEntries(GetOutput(pmmap, id, "?offset=9999999999999999999")).empty());
}

TEST_CASE("an NDJSON output without entries is a complete, empty 200 response", "[delivery]") {
  // An NDJSON reply with no lines must still end properly (its chunked
  // body terminated), or the caller's client reports a broken transfer.
  auto gate = std::make_shared<Gate>();
  Webhook hook;
  hook.SetHandler([gate](const Webhook::Call&, httplib::Response& res) {
    gate->Wait();
    res.set_content("{}", "application/json");
  });
  PmmapProcess pmmap;
  OpenAtExit open_at_exit(*gate);
  std::string empty = CreateJob(pmmap, JobBody(hook.url()));
  Cancel(pmmap, empty);
  std::string running = CreateJob(pmmap, JobBody(hook.url()));
  PutInputs(pmmap, running, MakeInputs(1));
  WaitForJob(pmmap, running,
             [](const rapidjson::Document& d) { return d["in_flight"].GetUint64() == 1; });

  // "Connection: close" makes the server end the connection right after
  // the reply, so that a reply left unterminated fails at once instead of
  // when the server's keep-alive runs out.
  const httplib::Headers close = {{"Connection", "close"}};
  const std::vector<std::pair<std::string, std::string>> reads = {
      {empty, "?format=ndjson"},               // a cancelled job without inputs
      {running, "?wait=false&format=ndjson"},  // nothing stored yet
      {running, "?wait=false&offset=5&format=ndjson"},
      {running, "?wait=false&limit=0&format=ndjson"},
  };
  for (const auto& read : reads) {
    HttpResult r = Http(pmmap.base_url(), "GET", "/job/" + read.first + "/output" + read.second, "",
                        close, std::chrono::seconds(5));
    INFO("GET /job/" << read.first << "/output" << read.second << " -> " << r.status << " ["
                     << r.body << "]");
    CHECK(r.status == 200);
    if (r.status == 200) {
      CHECK(r.body.empty());
      CHECK(HeaderOf(r.headers, "Content-Type").find("application/x-ndjson") == 0);
    }
  }
  // Also on a kept-alive connection, as a plain client sends it.
  HttpResult r = Http(pmmap.base_url(), "GET", "/job/" + empty + "/output", "",
                      {{"Accept", "application/x-ndjson"}}, std::chrono::seconds(10));
  INFO("GET /job/" << empty << "/output (Accept: application/x-ndjson) -> " << r.status << " ["
                   << r.body << "]");
  CHECK(r.status == 200);
  CHECK(r.body.empty());
  // The same reads as JSON arrays are fine: "[]".
  for (const auto& read : reads) {
    std::string query = read.second.substr(0, read.second.rfind("format=ndjson")) + "format=json";
    CHECK(ArrayEntries(GetOutput(pmmap, read.first, query)).empty());
  }
}

TEST_CASE("NDJSON output, the PMMAP-state header, and bad output queries", "[delivery]") {
  Webhook hook;
  PmmapProcess pmmap;
  std::string id = StartJob(pmmap, JobBody(hook.url(), "\"concurrency\":4"), MakeInputs(40));
  HttpResult r = GetOutput(pmmap, id);
  CHECK(HeaderOf(r.headers, "PMMAP-state") == "done");
  std::vector<std::string> full = ArrayEntries(r);
  REQUIRE(full.size() == 40);

  SECTION("NDJSON by Accept or by format") {
    const httplib::Headers ndjson = {{"Accept", "application/x-ndjson"}};
    r = GetOutput(pmmap, id, "", ndjson);
    CHECK(HeaderOf(r.headers, "PMMAP-state") == "done");
    CHECK(NdjsonEntries(r) == full);
    CHECK(NdjsonEntries(GetOutput(pmmap, id, "",
                                  {{"Accept", "text/plain, application/x-ndjson;q=0.9"}})) == full);
    CHECK(NdjsonEntries(GetOutput(pmmap, id, "?format=ndjson")) == full);
    CHECK(NdjsonEntries(
              GetOutput(pmmap, id, "?format=ndjson&offset=30", {{"Accept", "application/json"}})) ==
          std::vector<std::string>(full.begin() + 30, full.end()));
    // An explicit format wins over Accept.
    CHECK(ArrayEntries(GetOutput(pmmap, id, "?format=json", ndjson)) == full);
    CHECK(ArrayEntries(GetOutput(pmmap, id, "", {{"Accept", "application/json"}})) == full);
  }

  SECTION("bad query parameters: 400 naming the parameter") {
    const std::vector<std::pair<std::string, std::string>> bad = {
        {"?foo=1", "foo"},
        {"?limit=abc", "limit"},
        {"?limit=-1", "limit"},
        {"?limit=", "limit"},
        {"?offset=1.5", "offset"},
        {"?offset=x", "offset"},
        {"?wait=maybe", "wait"},
        {"?wait=", "wait"},
        {"?format=xml", "format"},
        {"?format=NDJSON", "format"},
        {"?limit=1&limit=2", "limit"},
        {"?wait=false&bogus=true", "bogus"},
    };
    for (const auto& b : bad) {
      HttpResult res = Http(pmmap.base_url(), "GET", "/job/" + id + "/output" + b.first);
      INFO("GET /output" << b.first << " -> " << res.status << " " << res.body);
      CHECK(res.status == 400);
      rapidjson::Document doc = ParseJson(res.body);
      REQUIRE(doc.HasMember("error"));
      CHECK(Text(doc, "error").find(b.second) != std::string::npos);
    }
    CHECK(Http(pmmap.base_url(), "GET", "/job/0123456789abcdef/output?wait=false").status == 404);
  }
}

TEST_CASE("a large output read whole, paged and as NDJSON agrees", "[delivery]") {
  Webhook hook;
  // Replies without a body (value null), which the loopback webhook answers
  // fastest; every tenth key is refused, so that errors are mixed in.
  hook.SetHandler([](const Webhook::Call& call, httplib::Response& res) {
    res.status = IndexOf(call.key) % 10 == 0 ? 400 : 200;
  });
  PmmapProcess pmmap;
  const int n = 3000;
  // Long keys, so that the output spans many of the server's read blocks.
  const std::string pad(200, 'x');
  auto key_of = [&pad](int i) { return "big" + std::to_string(i) + "-" + pad; };
  std::string inputs = "[";
  for (int i = 0; i < n; ++i) {
    if (i > 0) inputs.push_back(',');
    inputs += "{\"key\":\"" + key_of(i) + "\",\"value\":{\"i\":" + std::to_string(i) + "}}";
  }
  inputs.push_back(']');
  std::string id = StartJob(pmmap, JobBody(hook.url(), "\"concurrency\":16"), inputs);
  rapidjson::Document job = WaitForState(pmmap, id, "done", std::chrono::seconds(30));
  CHECK(U64(job, "failed") == static_cast<uint64_t>(n / 10));

  std::vector<std::string> full = ArrayEntries(GetOutput(pmmap, id));
  REQUIRE(full.size() == static_cast<size_t>(n));
  std::set<std::string> keys;
  for (const std::string& text : full) {
    rapidjson::Document entry = ParseJson(text);
    std::string key = Text(entry, "key");
    keys.insert(key);
    INFO(text);
    REQUIRE(key == key_of(IndexOf(key)));
    if (IndexOf(key) % 10 == 0) {
      REQUIRE(entry["error"]["status"].GetInt() == 400);
    } else {
      REQUIRE(entry["value"].IsNull());
    }
  }
  CHECK(keys.size() == static_cast<size_t>(n));

  std::vector<std::string> from_2500 = ArrayEntries(GetOutput(pmmap, id, "?offset=2500"));
  CHECK(from_2500 == std::vector<std::string>(full.begin() + 2500, full.end()));
  CHECK(NdjsonEntries(GetOutput(pmmap, id, "", {{"Accept", "application/x-ndjson"}})) == full);
  CHECK(NdjsonEntries(GetOutput(pmmap, id, "?format=ndjson&offset=2500")) == from_2500);

  // Pages of 700 cross the server's index strides of 1024 entries.
  std::vector<std::string> joined;
  for (int offset = 0; offset < n; offset += 700) {
    std::vector<std::string> page =
        ArrayEntries(GetOutput(pmmap, id, "?offset=" + std::to_string(offset) + "&limit=700"));
    REQUIRE(page.size() == static_cast<size_t>(std::min(700, n - offset)));
    joined.insert(joined.end(), page.begin(), page.end());
  }
  CHECK(joined == full);
  for (int offset : {1023, 1024, 1025, 2047, 2048, 2998, 2999}) {
    INFO("offset " << offset);
    std::vector<std::string> two =
        ArrayEntries(GetOutput(pmmap, id, "?offset=" + std::to_string(offset) + "&limit=2"));
    CHECK(two ==
          std::vector<std::string>(full.begin() + offset, full.begin() + std::min(offset + 2, n)));
  }
  CHECK(ArrayEntries(GetOutput(pmmap, id, "?offset=3000")).empty());
}
