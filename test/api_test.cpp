// End-to-end tests of the core API: the real pmmap binary against a real
// webhook on loopback.
//
// Rules kept here: only 127.0.0.1; every wait is bounded; every thread is
// joined (std::async futures join in their destructors, and are declared
// before the PmmapProcess so that, should a test fail early, pmmap is
// stopped first and wakes them); Catch2 assertions only on the test's own
// thread.

#include <arpa/inet.h>
#include <dirent.h>
#include <netinet/in.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>
#include <signal.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cctype>
#include <condition_variable>
#include <fstream>
#include <future>
#include <map>
#include <regex>
#include <set>
#include <sstream>

#include "test/harness.hpp"

TEST_CASE("a job runs every input through the webhook and returns every reply", "[api]") {
  Webhook hook;
  PmmapProcess pmmap;
  std::string id = CreateJob(pmmap, "{\"url\":\"" + hook.url() + "\",\"concurrency\":4}");
  HttpResult put = Http(pmmap.base_url(), "PUT", "/job/" + id + "/input", MakeInputs(50));
  REQUIRE(put.status == 201);
  REQUIRE(Http(pmmap.base_url(), "POST", "/job/" + id + "/complete").status == 200);
  HttpResult out = Http(pmmap.base_url(), "GET", "/job/" + id + "/output");
  REQUIRE(out.status == 200);
  rapidjson::Document doc = ParseJson(out.body);
  REQUIRE(doc.IsArray());
  REQUIRE(doc.Size() == 50);
  std::set<std::string> keys;
  for (const auto& entry : doc.GetArray()) {
    std::string key = entry["key"].GetString();
    keys.insert(key);
    REQUIRE(entry["value"]["key"].GetString() == key);
    REQUIRE(entry["value"]["value"]["i"].GetInt() == std::stoi(key.substr(1)));
  }
  REQUIRE(keys.size() == 50);
  rapidjson::Document job = GetJob(pmmap, id);
  REQUIRE(std::string(job["state"].GetString()) == "done");
  REQUIRE(job["inputs"].GetUint64() == 50);
  REQUIRE(job["outputs"].GetUint64() == 50);
  REQUIRE(hook.peak_in_flight() <= 4);
}

namespace {

using Clk = std::chrono::steady_clock;
using std::chrono::milliseconds;
using std::chrono::seconds;

// Retries quickly, so that failure outcomes take milliseconds.
const char kFastRetry[] = "\"backoff_ms\":5,\"max_backoff_ms\":20";

std::string Str(const rapidjson::Value& v) {
  REQUIRE(v.IsString());
  return std::string(v.GetString(), v.GetStringLength());
}

std::string OneInput(const std::string& key, const std::string& value_json) {
  return "{\"key\":" + Quote(key) + ",\"value\":" + value_json + "}";
}

std::string JobPath(const std::string& id, const std::string& rest = "") {
  return "/job/" + id + rest;
}

std::string ErrorMessage(const HttpResult& r) {
  rapidjson::Document doc = ParseJson(r.body);
  REQUIRE(doc.IsObject());
  REQUIRE(doc.HasMember("error"));
  return Str(doc["error"]);
}

// GET /job/{id}/output, which must answer 200 with a JSON array.
rapidjson::Document Output(const PmmapProcess& pmmap, const std::string& id) {
  HttpResult r = Http(pmmap.base_url(), "GET", JobPath(id, "/output"), "", {}, seconds(20));
  INFO("GET output -> " << r.status << " " << r.body);
  REQUIRE(r.status == 200);
  rapidjson::Document doc = ParseJson(r.body);
  REQUIRE(doc.IsArray());
  return doc;
}

// The entries of an output by key; asserts each key appears once.
std::map<std::string, const rapidjson::Value*> ByKey(const rapidjson::Document& out) {
  std::map<std::string, const rapidjson::Value*> entries;
  for (const auto& entry : out.GetArray()) {
    REQUIRE(entry.IsObject());
    REQUIRE(entry.HasMember("key"));
    std::string key = Str(entry["key"]);
    INFO("key " << key);
    REQUIRE(entries.count(key) == 0);
    entries[key] = &entry;
  }
  return entries;
}

size_t JobCount(const PmmapProcess& pmmap) {
  HttpResult r = Http(pmmap.base_url(), "GET", "/jobs");
  REQUIRE(r.status == 200);
  rapidjson::Document doc = ParseJson(r.body);
  REQUIRE(doc.IsArray());
  return doc.Size();
}

std::future<HttpResult> Async(const std::string& base, const std::string& method,
                              const std::string& path, const std::string& body = "",
                              seconds timeout = seconds(20)) {
  return std::async(std::launch::async,
                    [=] { return Http(base, method, path, body, {}, timeout); });
}

bool Ready(std::future<HttpResult>& f, milliseconds wait) {
  return f.wait_for(wait) == std::future_status::ready;
}

// A webhook that records the raw request target (the harness's Webhook
// sees the path only after cpp-httplib has percent-decoded it, which hides
// how the key was escaped). Answers {"ok":true}.
class RawHook {
 public:
  struct Call {
    std::string target;
    std::string body;
  };
  RawHook() {
    server_.Post(".*", [this](const httplib::Request& req, httplib::Response& res) {
      {
        std::lock_guard<std::mutex> lock(mutex_);
        calls_.push_back({req.target, req.body});
      }
      res.set_content("{\"ok\":true}", "application/json");
    });
    port_ = server_.bind_to_any_port("127.0.0.1");
    REQUIRE(port_ > 0);
    thread_ = std::thread([this] { server_.listen_after_bind(); });
    for (int i = 0; i < 500 && !server_.is_running(); ++i)
      std::this_thread::sleep_for(milliseconds(2));
  }
  ~RawHook() {
    server_.stop();
    thread_.join();
  }
  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/hook"; }
  std::vector<Call> calls() {
    std::lock_guard<std::mutex> lock(mutex_);
    return calls_;
  }

 private:
  httplib::Server server_;
  std::thread thread_;
  int port_ = 0;
  std::mutex mutex_;
  std::vector<Call> calls_;
};

// Decodes %XX; returns false on a malformed escape.
bool StrictPercentDecode(const std::string& s, std::string* out) {
  out->clear();
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] != '%') {
      out->push_back(s[i]);
      continue;
    }
    if (i + 2 >= s.size() || !isxdigit(static_cast<unsigned char>(s[i + 1])) ||
        !isxdigit(static_cast<unsigned char>(s[i + 2]))) {
      return false;
    }
    out->push_back(static_cast<char>(std::stoi(s.substr(i + 1, 2), nullptr, 16)));
    i += 2;
  }
  return true;
}

}  // namespace

// ---------------------------------------------------------------------------
// Happy paths

namespace {

// POST /job with the defaults and a secret: checks the answer and returns
// the new job's id.
std::string CreateWithDefaults(const std::string& base, const std::string& url) {
  HttpResult created = Http(base, "POST", "/job", JobBody(url, "\"secret\":\"s\""));
  INFO(created.body);
  REQUIRE(created.status == 201);
  rapidjson::Document job = ParseJson(created.body);
  REQUIRE(job.IsObject());
  std::string id = Str(job["id"]);
  REQUIRE_FALSE(id.empty());
  REQUIRE(Str(job["url"]) == url);
  REQUIRE(Str(job["state"]) == "open");
  REQUIRE(U64(job, "inputs") == 0);
  REQUIRE(U64(job, "outputs") == 0);
  REQUIRE(U64(job, "concurrency") == 1);
  REQUIRE(U64(job, "maxsize") == 1000);
  REQUIRE_FALSE(job.HasMember("secret"));
  return id;
}

// PUT /job/{id}/input twice, three inputs a0..a2 then two b0..b1; each
// answer counts the inputs so far.
void PutTwoBatches(const std::string& base, const std::string& id) {
  HttpResult put = Http(base, "PUT", JobPath(id, "/input"), MakeInputs(3, "a"));
  INFO(put.body);
  REQUIRE(put.status == 201);
  rapidjson::Document after_put = ParseJson(put.body);
  REQUIRE(Str(after_put["id"]) == id);
  REQUIRE(U64(after_put, "inputs") == 3);
  put = Http(base, "PUT", JobPath(id, "/input"), MakeInputs(2, "b"));
  REQUIRE(put.status == 201);
  REQUIRE(U64(ParseJson(put.body), "inputs") == 5);
}

// POST /job/{id}/complete twice; both answer 200.
void CompleteTwice(const std::string& base, const std::string& id) {
  HttpResult complete = Http(base, "POST", JobPath(id, "/complete"));
  INFO(complete.body);
  REQUIRE(complete.status == 200);
  rapidjson::Document completed = ParseJson(complete.body);
  REQUIRE(Str(completed["id"]) == id);
  std::string state = Str(completed["state"]);
  REQUIRE((state == "closing" || state == "done"));
  REQUIRE(Http(base, "POST", JobPath(id, "/complete")).status == 200);
}

// GET /job/{id}/output holds the echoed reply of each of PutTwoBatches's inputs.
void CheckEchoedOutput(const PmmapProcess& pmmap, const std::string& id) {
  rapidjson::Document out = Output(pmmap, id);
  REQUIRE(out.Size() == 5);
  auto entries = ByKey(out);
  for (const char* key : {"a0", "a1", "a2", "b0", "b1"}) {
    INFO(key);
    REQUIRE(entries.count(key) == 1);
    const rapidjson::Value& e = *entries[key];
    REQUIRE(e.HasMember("value"));
    REQUIRE_FALSE(e.HasMember("error"));
    REQUIRE(Str(e["value"]["key"]) == key);
    REQUIRE(e["value"]["value"]["i"].GetInt() == key[1] - '0');
  }
}

}  // namespace

TEST_CASE("every route answers its happy path", "[api]") {
  Webhook hook;
  PmmapProcess pmmap;
  const std::string base = pmmap.base_url();

  HttpResult health = Http(base, "GET", "/healthz");
  REQUIRE(health.status == 200);

  // POST /job with the defaults, then with explicit settings.
  std::string id = CreateWithDefaults(base, hook.url());
  std::string id2 = CreateJob(pmmap, JobBody(hook.url(), "\"concurrency\":3,\"maxsize\":7"));
  REQUIRE(id2 != id);
  rapidjson::Document job2 = GetJob(pmmap, id2);
  REQUIRE(U64(job2, "concurrency") == 3);
  REQUIRE(U64(job2, "maxsize") == 7);

  // GET /job/{id}
  rapidjson::Document got = GetJob(pmmap, id);
  REQUIRE(Str(got["id"]) == id);
  REQUIRE(Str(got["state"]) == "open");

  // GET /jobs lists both.
  REQUIRE(JobCount(pmmap) == 2);

  PutTwoBatches(base, id);
  CompleteTwice(base, id);
  CheckEchoedOutput(pmmap, id);
  rapidjson::Document done = GetJob(pmmap, id);
  REQUIRE(Str(done["state"]) == "done");
  REQUIRE(U64(done, "inputs") == 5);
  REQUIRE(U64(done, "outputs") == 5);
  REQUIRE(Http(base, "POST", JobPath(id, "/complete")).status == 200);  // still harmless
  REQUIRE(hook.call_count() == 5);

  // DELETE /job/{id}
  HttpResult del = Http(base, "DELETE", JobPath(id));
  INFO(del.body);
  REQUIRE(del.status == 200);
  REQUIRE(Str(ParseJson(del.body)["id"]) == id);
  RequireError(Http(base, "GET", JobPath(id)), 404);
  RequireError(Http(base, "DELETE", JobPath(id)), 404);
  REQUIRE(JobCount(pmmap) == 1);
  REQUIRE(Http(base, "DELETE", JobPath(id2)).status == 200);
  REQUIRE(JobCount(pmmap) == 0);
}

// ---------------------------------------------------------------------------
// Outcomes of webhook calls

namespace {

using Entries = std::map<std::string, const rapidjson::Value*>;
using CallCounts = std::map<std::string, int>;

// A webhook handler that answers each of the keys json, empty, nocontent,
// text, notfound, flaky, throttled, down and slow with its own kind of
// reply, echoes any other, and counts the calls per key. "slow" holds its
// calls until the gate opens.
class ReplyKinds {
 public:
  explicit ReplyKinds(Gate& gate) : gate_(gate) {}
  ReplyKinds(const ReplyKinds&) = delete;
  ReplyKinds& operator=(const ReplyKinds&) = delete;

  static const std::string& LongBody() {
    static const std::string kLongBody = "no such thing: " + std::string(600, 'x');
    return kLongBody;
  }

  // Called from the webhook's threads.
  void Answer(const Webhook::Call& call, httplib::Response& res) {
    int n;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      n = ++seen_[call.key];
    }
    const std::string& key = call.key;
    if (key == "json") {
      res.set_content("{ \"a\" : [1, 2.50, \"x\"] }", "application/json");
    } else if (key == "empty") {
      res.status = 200;
    } else if (key == "nocontent") {
      res.status = 204;
    } else if (key == "text") {
      res.set_content("plain text, not JSON", "text/plain");
    } else if (key == "notfound") {
      res.status = 404;
      res.set_content(LongBody(), "text/plain");
    } else if (key == "flaky") {
      AnswerFlaky(n, res);
    } else if (key == "throttled") {
      AnswerThrottled(n, res);
    } else if (key == "down") {
      res.status = 500;
      res.set_content("boom", "text/plain");
    } else if (key == "slow") {
      gate_.Wait();  // beyond timeout_ms: pmmap gives up first
      res.set_content("{\"late\":true}", "application/json");
    } else {
      Echo(call, res);
    }
  }

  CallCounts calls() {
    std::lock_guard<std::mutex> lock(mutex_);
    return seen_;
  }

 private:
  // The first call gets a 503, later ones succeed.
  static void AnswerFlaky(int n, httplib::Response& res) {
    if (n == 1) {
      res.status = 503;
      res.set_content("try again", "text/plain");
    } else {
      res.set_content("{\"ok\":true}", "application/json");
    }
  }
  // 429 and 408 are retried too.
  static void AnswerThrottled(int n, httplib::Response& res) {
    if (n == 1) {
      res.status = 429;
    } else if (n == 2) {
      res.status = 408;
    } else {
      res.set_content("\"finally\"", "application/json");
    }
  }

  Gate& gate_;
  std::mutex mutex_;
  CallCounts seen_;  // calls per key
};

// A JSON array of one input per key, each valued {"k": key}.
std::string InputsFor(const std::vector<std::string>& keys) {
  std::string inputs = "[";
  for (const std::string& key : keys) {
    if (inputs.size() > 1) inputs += ",";
    inputs += OneInput(key, "{\"k\":" + Quote(key) + "}");
  }
  return inputs + "]";
}

void CheckSuccessfulReplies(Entries& e, CallCounts& calls) {
  {
    INFO("a JSON reply is the value, parsed");
    const rapidjson::Value& v = (*e["json"])["value"];
    REQUIRE(v.IsObject());
    REQUIRE(v["a"].IsArray());
    REQUIRE(v["a"].Size() == 3);
    REQUIRE(v["a"][0].GetInt() == 1);
    REQUIRE(v["a"][1].GetDouble() == 2.5);
    REQUIRE(Str(v["a"][2]) == "x");
    REQUIRE_FALSE(e["json"]->HasMember("error"));
    REQUIRE(calls["json"] == 1);
  }
  {
    INFO("an empty reply is null");
    REQUIRE(e["empty"]->HasMember("value"));
    REQUIRE((*e["empty"])["value"].IsNull());
    REQUIRE(e["nocontent"]->HasMember("value"));
    REQUIRE((*e["nocontent"])["value"].IsNull());
  }
  {
    INFO("a reply that is not JSON is kept as a string");
    REQUIRE(Str((*e["text"])["value"]) == "plain text, not JSON");
  }
}

void CheckClientError(Entries& e, CallCounts& calls) {
  INFO("a 4xx is a final error after one attempt, with the status and the body's start");
  const rapidjson::Value& entry = *e["notfound"];
  REQUIRE_FALSE(entry.HasMember("value"));
  REQUIRE(entry["error"].IsObject());
  REQUIRE(entry["error"]["status"].GetInt() == 404);
  REQUIRE(entry["error"]["message"].IsString());
  REQUIRE(entry["error"]["message"].GetStringLength() > 0);
  std::string body = Str(entry["error"]["body"]);
  const std::string& long_body = ReplyKinds::LongBody();
  REQUIRE(body.size() >= 10);
  REQUIRE(body.size() <= long_body.size());
  REQUIRE(long_body.compare(0, body.size(), body) == 0);
  REQUIRE(entry["attempts"].GetInt() == 1);
  REQUIRE(calls["notfound"] == 1);
}

void CheckGivenUpAfter(int max_attempts, Entries& e, CallCounts& calls) {
  {
    INFO("a webhook that always fails ends as an error after max_attempts");
    const rapidjson::Value& entry = *e["down"];
    REQUIRE_FALSE(entry.HasMember("value"));
    REQUIRE(entry["error"]["status"].GetInt() == 500);
    REQUIRE(Str(entry["error"]["body"]) == "boom");
    REQUIRE(entry["attempts"].GetInt() == max_attempts);
    REQUIRE(calls["down"] == max_attempts);
  }
  {
    INFO("a webhook slower than timeout_ms ends as an error with status 0");
    const rapidjson::Value& entry = *e["slow"];
    REQUIRE_FALSE(entry.HasMember("value"));
    REQUIRE(entry["error"]["status"].GetInt() == 0);
    REQUIRE(entry["error"]["message"].GetStringLength() > 0);
    REQUIRE(entry["attempts"].GetInt() == max_attempts);
    REQUIRE(calls["slow"] == max_attempts);
  }
}

}  // namespace

TEST_CASE("each kind of webhook reply ends as the right entry", "[api]") {
  Gate gate;
  ReplyKinds kinds(gate);  // before the webhook, whose handlers use it
  Webhook hook;
  hook.SetHandler(
      [&kinds](const Webhook::Call& call, httplib::Response& res) { kinds.Answer(call, res); });
  PmmapProcess pmmap;
  OpenAtExit open_at_exit(gate);
  const int max_attempts = 3;
  // Per-input retry limits, without the circuit breaker: the failing and
  // slow keys' retries may come five in a row and open it.
  std::string id =
      CreateJob(pmmap, JobBody(hook.url(),
                               "\"concurrency\":4,\"timeout_ms\":300,\"max_outage_ms\":0,"
                               "\"max_attempts\":" +
                                   std::to_string(max_attempts) + "," + kFastRetry));
  const std::vector<std::string> keys = {"json",  "empty",     "nocontent", "text", "notfound",
                                         "flaky", "throttled", "down",      "slow"};
  REQUIRE(Http(pmmap.base_url(), "PUT", JobPath(id, "/input"), InputsFor(keys)).status == 201);
  REQUIRE(Http(pmmap.base_url(), "POST", JobPath(id, "/complete")).status == 200);
  rapidjson::Document out = Output(pmmap, id);
  INFO("output: " << Json(out));
  REQUIRE(out.Size() == keys.size());
  Entries e = ByKey(out);
  REQUIRE(e.size() == keys.size());
  CallCounts calls = kinds.calls();

  CheckSuccessfulReplies(e, calls);
  CheckClientError(e, calls);
  {
    INFO("a 5xx, 429 or 408 is retried, and the later success is the value");
    REQUIRE((*e["flaky"])["value"]["ok"].GetBool());
    REQUIRE_FALSE(e["flaky"]->HasMember("error"));
    REQUIRE(calls["flaky"] == 2);
    REQUIRE(Str((*e["throttled"])["value"]) == "finally");
    REQUIRE(calls["throttled"] == 3);
    rapidjson::Document job = GetJob(pmmap, id);
    REQUIRE(U64(job, "retries") >= 1 + 2 + 2 * (max_attempts - 1));
  }
  CheckGivenUpAfter(max_attempts, e, calls);
  {
    INFO("the counters add up");
    rapidjson::Document job = GetJob(pmmap, id);
    REQUIRE(Str(job["state"]) == "done");
    REQUIRE(U64(job, "inputs") == keys.size());
    REQUIRE(U64(job, "outputs") == keys.size());
    REQUIRE(U64(job, "succeeded") == 6);
    REQUIRE(U64(job, "failed") == 3);
  }
}

TEST_CASE("an unreachable webhook ends as an error with status 0 after max_attempts", "[api]") {
  RefusingPort refusing;
  PmmapProcess pmmap;
  // Without the circuit breaker, which would hold the job for max_outage_ms.
  std::string id = CreateJob(pmmap, JobBody(refusing.url(),
                                            "\"max_attempts\":3,\"timeout_ms\":2000,"
                                            "\"max_outage_ms\":0," +
                                                std::string(kFastRetry)));
  REQUIRE(Http(pmmap.base_url(), "PUT", JobPath(id, "/input"), MakeInputs(2)).status == 201);
  REQUIRE(Http(pmmap.base_url(), "POST", JobPath(id, "/complete")).status == 200);
  rapidjson::Document out = Output(pmmap, id);
  REQUIRE(out.Size() == 2);
  for (const auto& entry : out.GetArray()) {
    INFO(Str(entry["key"]));
    REQUIRE_FALSE(entry.HasMember("value"));
    REQUIRE(entry["error"]["status"].GetInt() == 0);
    REQUIRE(entry["error"]["message"].GetStringLength() > 0);
    REQUIRE(entry["attempts"].GetInt() == 3);
  }
  rapidjson::Document job = GetJob(pmmap, id);
  REQUIRE(U64(job, "failed") == 2);
  REQUIRE(U64(job, "outputs") == 2);
}

// ---------------------------------------------------------------------------
// What the webhook receives

TEST_CASE("keys with reserved and non-ASCII characters are escaped as one path segment", "[api]") {
  RawHook hook;
  PmmapProcess pmmap;
  const std::vector<std::string> keys = {"with space",
                                         "a/b",
                                         "frag#ment",
                                         "q?x=1&y=2",
                                         "100%",
                                         "%41",
                                         "plus+sign",
                                         "semi;colon",
                                         "back\\slash",
                                         "quote\"d",
                                         "\xD0\xBA\xD0\xBB\xD1\x8E\xD1\x87" /* ключ */,
                                         "\xE6\x97\xA5\xE6\x9C\xAC" /* 日本 */,
                                         "emoji\xF0\x9F\x98\x80",
                                         "tab\there",
                                         "a.b-c_d~e"};
  std::string id = CreateJob(pmmap, JobBody(hook.url(), "\"concurrency\":4"));
  std::string inputs = "[";
  for (size_t i = 0; i < keys.size(); ++i) {
    if (i > 0) inputs += ",";
    inputs += OneInput(keys[i], std::to_string(i));
  }
  inputs += "]";
  REQUIRE(Http(pmmap.base_url(), "PUT", JobPath(id, "/input"), inputs).status == 201);
  REQUIRE(Http(pmmap.base_url(), "POST", JobPath(id, "/complete")).status == 200);
  rapidjson::Document out = Output(pmmap, id);
  auto entries = ByKey(out);
  REQUIRE(entries.size() == keys.size());

  std::map<std::string, std::string> body_by_key;
  for (const RawHook::Call& call : hook.calls()) {
    INFO("target " << call.target);
    const std::string prefix = "/hook/";
    REQUIRE(call.target.compare(0, prefix.size(), prefix) == 0);
    std::string segment = call.target.substr(prefix.size());
    // One segment, escaped: only unreserved characters and %XX.
    for (unsigned char c : segment) {
      INFO("character " << static_cast<int>(c));
      REQUIRE((isalnum(c) || c == '-' || c == '.' || c == '_' || c == '~' || c == '%'));
    }
    std::string key;
    REQUIRE(StrictPercentDecode(segment, &key));
    REQUIRE(body_by_key.count(key) == 0);
    body_by_key[key] = call.body;
  }
  REQUIRE(body_by_key.size() == keys.size());
  for (size_t i = 0; i < keys.size(); ++i) {
    INFO("key " << keys[i]);
    REQUIRE(body_by_key.count(keys[i]) == 1);
    REQUIRE(body_by_key[keys[i]] == std::to_string(i));
    REQUIRE(entries.count(keys[i]) == 1);
    REQUIRE((*entries[keys[i]])["value"]["ok"].GetBool());
  }
}

TEST_CASE("the keys \".\" and \"..\" reach the webhook as a segment of their own", "[api]") {
  RawHook hook;
  PmmapProcess pmmap;
  std::string id = CreateJob(pmmap, JobBody(hook.url()));
  REQUIRE(Http(pmmap.base_url(), "PUT", JobPath(id, "/input"),
               "[" + OneInput(".", "1") + "," + OneInput("..", "2") + "]")
              .status == 201);
  REQUIRE(Http(pmmap.base_url(), "POST", JobPath(id, "/complete")).status == 200);
  REQUIRE(Output(pmmap, id).Size() == 2);
  std::set<std::string> keys;
  for (const RawHook::Call& call : hook.calls()) {
    INFO("target " << call.target << " body " << call.body);
    const std::string prefix = "/hook/";
    REQUIRE(call.target.compare(0, prefix.size(), prefix) == 0);
    std::string key;
    REQUIRE(StrictPercentDecode(call.target.substr(prefix.size()), &key));
    keys.insert(key);
  }
  REQUIRE(keys == std::set<std::string>{".", ".."});
}

TEST_CASE("the webhook gets POST with the JSON type, the secret and the job id", "[api]") {
  Webhook hook;
  PmmapProcess pmmap;
  const std::string secret = "tok-3f9a-SECRET-value";
  std::string id =
      CreateJob(pmmap, JobBody(hook.url(), "\"secret\":" + Quote(secret) + ",\"concurrency\":2"));
  REQUIRE(Http(pmmap.base_url(), "PUT", JobPath(id, "/input"), MakeInputs(4)).status == 201);
  REQUIRE(Http(pmmap.base_url(), "POST", JobPath(id, "/complete")).status == 200);
  REQUIRE(Output(pmmap, id).Size() == 4);
  std::vector<Webhook::Call> calls = hook.calls();
  REQUIRE(calls.size() == 4);
  for (const Webhook::Call& call : calls) {
    INFO("path " << call.path);
    REQUIRE(call.path == "/hook/" + call.key);
    REQUIRE(HeaderOf(call.headers, "Content-Type") == "application/json");
    REQUIRE(HeaderCount(call.headers, "PMMAP-auth") == 1);
    REQUIRE(HeaderOf(call.headers, "PMMAP-auth") == secret);
    REQUIRE(HeaderCount(call.headers, "PMMAP-job") == 1);
    REQUIRE(HeaderOf(call.headers, "PMMAP-job") == id);
    REQUIRE(call.body == "{\"i\":" + call.key.substr(1) + "}");
  }
}

TEST_CASE("without a secret a call carries only Content-Type and the PMMAP job and attempt",
          "[api]") {
  Webhook hook;
  PmmapProcess pmmap;
  std::string id = CreateJob(pmmap, JobBody(hook.url()));
  // A value over 1 KiB, for which libcurl would add "Expect: 100-continue".
  std::string big = "\"" + std::string(100000, 'x') + "\"";
  REQUIRE(Http(pmmap.base_url(), "PUT", JobPath(id, "/input"),
               "[{\"key\":\"small\",\"value\":1},{\"key\":\"big\",\"value\":" + big + "}]")
              .status == 201);
  REQUIRE(Http(pmmap.base_url(), "POST", JobPath(id, "/complete")).status == 200);
  REQUIRE(Output(pmmap, id).Size() == 2);
  std::vector<Webhook::Call> calls = hook.calls();
  REQUIRE(calls.size() == 2);
  for (const Webhook::Call& call : calls) {
    INFO("key " << call.key);
    CHECK(call.body == (call.key == "big" ? big : "1"));
    CHECK(HeaderOf(call.headers, "Content-Type") == "application/json");
    CHECK(HeaderOf(call.headers, "PMMAP-job") == id);
    CHECK(HeaderOf(call.headers, "PMMAP-attempt") == "1");
    CHECK(HeaderCount(call.headers, "PMMAP-auth") == 0);
    CHECK(HeaderCount(call.headers, "PMMAP-signature") == 0);
    CHECK(HeaderCount(call.headers, "Expect") == 0);
  }
}

TEST_CASE("values reach the webhook as compact JSON, byte for byte", "[api]") {
  Webhook hook;
  // Answers with the body as sent, so that the output shows what was stored.
  hook.SetHandler([](const Webhook::Call& call, httplib::Response& res) {
    res.set_content(call.body, "application/json");
  });
  PmmapProcess pmmap;
  // key -> (value as sent in the PUT, body the webhook must receive)
  const std::vector<std::pair<std::string, std::pair<std::string, std::string>>> cases = {
      {"big", {"12345678901234567890123", "12345678901234567890123"}},
      {"negbig", {"-98765432109876543210987654321", "-98765432109876543210987654321"}},
      {"decimal", {"2.50", "2.50"}},
      {"exp", {"1.5E+300", "1.5E+300"}},
      {"tiny", {"-2.5e-7", "-2.5e-7"}},
      {"negzero", {"-0.0", "-0.0"}},
      {"unicode",
       {"\"h\xC3\xA9llo \xE2\x98\x83 \xF0\x9F\x98\x80\"",
        "\"h\xC3\xA9llo \xE2\x98\x83 \xF0\x9F\x98\x80\""}},
      {"escapes", {"\"line\\nbreak \\\"q\\\" \\\\ \\t\"", "\"line\\nbreak \\\"q\\\" \\\\ \\t\""}},
      {"object",
       {"{\"b\":[1,2.000,{\"c\":null}],\"a\":true,\"z\":false}",
        "{\"b\":[1,2.000,{\"c\":null}],\"a\":true,\"z\":false}"}},
      {"spaced",
       {"{ \"x\" : [ 1 , 2.50 ] ,\n \"y\" : \"a b\" }", "{\"x\":[1,2.50],\"y\":\"a b\"}"}},
      {"string", {"\"12345678901234567890123\"", "\"12345678901234567890123\""}},
      {"null", {"null", "null"}},
  };
  std::string inputs = "[";
  for (const auto& c : cases) {
    if (inputs.size() > 1) inputs += ",";
    inputs += OneInput(c.first, c.second.first);
  }
  inputs += "]";
  std::string id = CreateJob(pmmap, JobBody(hook.url(), "\"concurrency\":4"));
  HttpResult put = Http(pmmap.base_url(), "PUT", JobPath(id, "/input"), inputs);
  INFO(put.body);
  REQUIRE(put.status == 201);
  REQUIRE(Http(pmmap.base_url(), "POST", JobPath(id, "/complete")).status == 200);
  HttpResult out = Http(pmmap.base_url(), "GET", JobPath(id, "/output"), "", {}, seconds(20));
  REQUIRE(out.status == 200);
  REQUIRE(ParseJson(out.body).Size() == cases.size());
  std::map<std::string, std::string> bodies;
  for (const Webhook::Call& call : hook.calls()) bodies[call.key] = call.body;
  for (const auto& c : cases) {
    INFO("key " << c.first << "; output " << out.body);
    REQUIRE(bodies.count(c.first) == 1);
    REQUIRE(bodies[c.first] == c.second.second);
    // The stored reply keeps the exact text too.
    REQUIRE(out.body.find("{\"key\":" + Quote(c.first) + ",\"value\":" + c.second.second + "}") !=
            std::string::npos);
  }
}

// ---------------------------------------------------------------------------
// Back-pressure, concurrency and waiting

TEST_CASE("PUT blocks while the queue is full and returns once the batch is queued", "[api]") {
  Gate gate;
  Webhook hook;
  hook.SetHandler([&gate](const Webhook::Call& call, httplib::Response& res) {
    gate.Wait();
    Echo(call, res);
  });
  std::future<HttpResult> put;
  PmmapProcess pmmap;
  OpenAtExit open_at_exit(gate);
  const std::string base = pmmap.base_url();
  std::string id = CreateJob(pmmap, JobBody(hook.url(), "\"maxsize\":2"));
  put = Async(base, "PUT", JobPath(id, "/input"), MakeInputs(10));

  // One call is held by the webhook and two inputs fill the queue: the rest
  // of the batch cannot be queued.
  rapidjson::Document job = WaitForJob(
      pmmap, id,
      [](const rapidjson::Document& d) {
        return d["inputs"].GetUint64() == 3 && d["in_flight"].GetUint64() == 1;
      },
      seconds(10));
  REQUIRE(U64(job, "in_flight") == 1);
  REQUIRE(U64(job, "inputs") == 2 + U64(job, "in_flight"));
  REQUIRE(U64(job, "pending") == 2);
  REQUIRE(U64(job, "outputs") == 0);
  REQUIRE_FALSE(Ready(put, milliseconds(200)));
  REQUIRE(hook.call_count() == 1);

  // GET /job answers at once while the PUT is blocked.
  auto start = Clk::now();
  HttpResult get = Http(base, "GET", JobPath(id), "", {}, seconds(5));
  REQUIRE(get.status == 200);
  REQUIRE(Clk::now() - start < seconds(2));
  REQUIRE(U64(ParseJson(get.body), "inputs") == 3);
  REQUIRE_FALSE(Ready(put, milliseconds(0)));

  gate.Open();
  REQUIRE(Ready(put, seconds(15)));
  HttpResult put_result = put.get();
  INFO(put_result.body);
  REQUIRE(put_result.status == 201);
  REQUIRE(U64(ParseJson(put_result.body), "inputs") == 10);
  REQUIRE(Http(base, "POST", JobPath(id, "/complete")).status == 200);
  rapidjson::Document out = Output(pmmap, id);
  REQUIRE(out.Size() == 10);
  REQUIRE(ByKey(out).size() == 10);
  REQUIRE(hook.peak_in_flight() == 1);
}

TEST_CASE("no more than concurrency calls are in flight, and that many are reached", "[api]") {
  Webhook hook;
  const int concurrency = 8;
  // Each call takes ~20 ms and, until the ceiling has been seen once (or a
  // deadline passes), waits for it, so that reaching it is not left to timing.
  auto deadline = Clk::now() + seconds(5);
  hook.SetHandler([&hook, deadline](const Webhook::Call& call, httplib::Response& res) {
    std::this_thread::sleep_for(milliseconds(20));
    while (hook.peak_in_flight() < concurrency && Clk::now() < deadline) {
      std::this_thread::sleep_for(milliseconds(2));
    }
    Echo(call, res);
  });
  PmmapProcess pmmap;
  std::string id =
      CreateJob(pmmap, JobBody(hook.url(), "\"concurrency\":" + std::to_string(concurrency)));
  REQUIRE(Http(pmmap.base_url(), "PUT", JobPath(id, "/input"), MakeInputs(64)).status == 201);
  REQUIRE(Http(pmmap.base_url(), "POST", JobPath(id, "/complete")).status == 200);
  rapidjson::Document out = Output(pmmap, id);
  REQUIRE(out.Size() == 64);
  REQUIRE(ByKey(out).size() == 64);
  REQUIRE(hook.call_count() == 64);
  REQUIRE(hook.peak_in_flight() <= concurrency);
  REQUIRE(hook.peak_in_flight() == concurrency);
}

TEST_CASE("GET output started before complete answers once the job completes", "[api]") {
  Webhook hook;
  std::future<HttpResult> output;
  PmmapProcess pmmap;
  const std::string base = pmmap.base_url();
  std::string id = CreateJob(pmmap, JobBody(hook.url(), "\"concurrency\":2"));
  output = Async(base, "GET", JobPath(id, "/output"));
  REQUIRE(Http(base, "PUT", JobPath(id, "/input"), MakeInputs(5)).status == 201);
  rapidjson::Document job = WaitForJob(
      pmmap, id, [](const rapidjson::Document& d) { return d["outputs"].GetUint64() == 5; });
  REQUIRE(U64(job, "outputs") == 5);
  REQUIRE(Str(job["state"]) == "open");
  // Every input has its outcome, but the job is open: the caller still waits.
  REQUIRE_FALSE(Ready(output, milliseconds(300)));
  REQUIRE(Http(base, "POST", JobPath(id, "/complete")).status == 200);
  REQUIRE(Ready(output, seconds(10)));
  HttpResult r = output.get();
  INFO(r.body);
  REQUIRE(r.status == 200);
  rapidjson::Document out = ParseJson(r.body);
  REQUIRE(out.IsArray());
  REQUIRE(out.Size() == 5);
  REQUIRE(ByKey(out).size() == 5);
}

// ---------------------------------------------------------------------------
// DELETE

TEST_CASE("DELETE of a running job stops its work and forgets it", "[api]") {
  Gate gate;
  Webhook hook;
  hook.SetHandler([&gate](const Webhook::Call& call, httplib::Response& res) {
    gate.Wait();
    Echo(call, res);
  });
  PmmapProcess pmmap;
  OpenAtExit open_at_exit(gate);
  const std::string base = pmmap.base_url();
  std::string id = CreateJob(pmmap, JobBody(hook.url(), "\"concurrency\":2"));
  REQUIRE(Http(base, "PUT", JobPath(id, "/input"), MakeInputs(20)).status == 201);
  REQUIRE(WaitUntil([&] { return hook.call_count() == 2; }));

  HttpResult del = Http(base, "DELETE", JobPath(id), "", {}, seconds(10));
  INFO(del.body);
  REQUIRE(del.status == 200);
  REQUIRE(Str(ParseJson(del.body)["id"]) == id);

  RequireError(Http(base, "GET", JobPath(id)), 404);
  RequireError(Http(base, "PUT", JobPath(id, "/input"), MakeInputs(1, "late")), 404);
  RequireError(Http(base, "POST", JobPath(id, "/complete")), 404);
  RequireError(Http(base, "POST", JobPath(id, "/cancel")), 404);
  RequireError(Http(base, "GET", JobPath(id, "/output"), "", {}, seconds(5)), 404);
  RequireError(Http(base, "DELETE", JobPath(id)), 404);
  REQUIRE(JobCount(pmmap) == 0);

  // Release the held calls; watch (a bounded while) that no new call comes.
  gate.Open();
  auto until = Clk::now() + milliseconds(500);
  while (Clk::now() < until) {
    REQUIRE(hook.call_count() == 2);
    std::this_thread::sleep_for(milliseconds(10));
  }
  REQUIRE(hook.call_count() == 2);
  // The server is fine.
  REQUIRE(Http(base, "GET", "/healthz").status == 200);
}

TEST_CASE("a blocked PUT and a blocked GET output answer 404 at once when their job is deleted",
          "[api]") {
  Gate gate;
  Webhook hook;
  hook.SetHandler([&gate](const Webhook::Call& call, httplib::Response& res) {
    gate.Wait();
    Echo(call, res);
  });
  std::future<HttpResult> put;
  std::future<HttpResult> output;
  PmmapProcess pmmap;
  OpenAtExit open_at_exit(gate);
  const std::string base = pmmap.base_url();
  std::string id = CreateJob(pmmap, JobBody(hook.url(), "\"maxsize\":1"));
  put = Async(base, "PUT", JobPath(id, "/input"), MakeInputs(5));
  output = Async(base, "GET", JobPath(id, "/output"));
  rapidjson::Document job = WaitForJob(pmmap, id, [](const rapidjson::Document& d) {
    return d["inputs"].GetUint64() == 2 && d["in_flight"].GetUint64() == 1;
  });
  REQUIRE(U64(job, "inputs") == 2);
  REQUIRE_FALSE(Ready(put, milliseconds(200)));
  REQUIRE_FALSE(Ready(output, milliseconds(0)));

  auto start = Clk::now();
  REQUIRE(Http(base, "DELETE", JobPath(id), "", {}, seconds(10)).status == 200);
  REQUIRE(Ready(put, seconds(5)));
  REQUIRE(Ready(output, seconds(5)));
  auto waited = Clk::now() - start;
  RequireError(put.get(), 404);
  RequireError(output.get(), 404);
  REQUIRE(waited < seconds(3));  // held webhook calls do not delay them
}

// ---------------------------------------------------------------------------
// Refused requests

namespace {

// A POST /job body that must be refused with 400.
struct BadJobBody {
  std::string why;
  std::string body;
  bool names_offset;  // whether the error message must give the offset
};

// The bodies POST /job refuses, all naming url as their webhook where they
// name one.
std::vector<BadJobBody> BadJobBodies(const std::string& url) {
  std::vector<BadJobBody> bad = {
      {"not JSON: the message gives the offset", "{\"url\": ", true},
      {"not JSON: the message gives the offset", "nope", true},
      {"not JSON: the message gives the offset", "{\"url\":\"" + url + "\",}", true},
      {"an empty body", "", false},
      {"invalid UTF-8",
       "{\"url\":\"" + url +
           "\",\"secret\":\"a\xFF\xFE"
           "b\"}",
       false},
      {"invalid UTF-8", "{\"url\":\"" + url + "\xC3\x28\"}", false},
  };
  for (const std::string& body : {
           std::string("[]"),
           std::string("\"" + url + "\""),
           std::string("{\"url\":5}"),
           std::string("{\"url\":[\"" + url + "\"]}"),
           std::string("{\"url\":\"" + url + "\",\"secret\":5}"),
           std::string("{\"url\":\"" + url + "\",\"concurrency\":\"4\"}"),
           std::string("{\"url\":\"" + url + "\",\"concurrency\":2.5}"),
           std::string("{\"url\":\"" + url + "\",\"maxsize\":true}"),
           std::string("{\"url\":\"" + url + "\",\"maxsize\":{}}"),
       }) {
    bad.push_back({"wrong types", body, false});
  }
  bad.push_back({"a missing url", "{}", false});
  bad.push_back({"a missing url", "{\"secret\":\"s\",\"concurrency\":2}", false});
  for (const char* bad_url : {"ftp://127.0.0.1/hook", "file:///etc/passwd", "gopher://127.0.0.1/x",
                              "127.0.0.1:9/hook", "/hook", "", "http://", "http:// 127.0.0.1/x"}) {
    bad.push_back({"a url that is not http(s) with a host", JobBody(bad_url), false});
  }
  for (const char* extra : {"\"concurrency\":0", "\"concurrency\":-1", "\"concurrency\":1025",
                            "\"concurrency\":99999999999999999999", "\"maxsize\":0",
                            "\"maxsize\":-5", "\"maxsize\":1000001"}) {
    bad.push_back({"concurrency and maxsize out of range", JobBody(url, extra), false});
  }
  bad.push_back({"deep nesting", std::string(100000, '['), false});
  bad.push_back({"deep nesting", std::string(100000, '{'), false});
  bad.push_back(
      {"deep nesting", "{\"url\":\"" + url + "\",\"secret\":" + std::string(100000, '['), false});
  return bad;
}

}  // namespace

TEST_CASE("POST /job refuses bad bodies with 400 and creates nothing", "[api]") {
  PmmapProcess pmmap;
  const std::string base = pmmap.base_url();
  const std::string url = "http://127.0.0.1:9/hook";

  for (const BadJobBody& bad : BadJobBodies(url)) {
    INFO(bad.why << ": body " << bad.body.substr(0, 200));
    HttpResult r = Http(base, "POST", "/job", bad.body);
    RequireError(r, 400);
    if (bad.names_offset) REQUIRE(ErrorMessage(r).find("offset") != std::string::npos);
  }
  REQUIRE(JobCount(pmmap) == 0);
  // The limits themselves are accepted.
  CreateJob(pmmap, JobBody(url, "\"concurrency\":1,\"maxsize\":1"));
  CreateJob(pmmap, JobBody(url, "\"concurrency\":1024,\"maxsize\":1000000"));
  CreateJob(pmmap, JobBody("https://127.0.0.1:9/hook"));
  REQUIRE(JobCount(pmmap) == 3);
}

TEST_CASE("PUT input refuses bad batches with 400 and queues nothing", "[api]") {
  Webhook hook;
  PmmapProcess pmmap;
  const std::string base = pmmap.base_url();
  std::string id = CreateJob(pmmap, JobBody(hook.url()));
  const std::string path = JobPath(id, "/input");
  const std::string good = OneInput("good", "1");

  {
    INFO("not JSON: the message gives the offset");
    for (const std::string& body : std::vector<std::string>{
             std::string("[{\"key\": "), std::string("[" + good + ",]"), std::string("x")}) {
      INFO("body " << body);
      HttpResult r = Http(base, "PUT", path, body);
      RequireError(r, 400);
      REQUIRE(ErrorMessage(r).find("offset") != std::string::npos);
    }
  }
  {
    INFO("an empty body");
    RequireError(Http(base, "PUT", path, ""), 400);
  }
  {
    INFO("invalid UTF-8 in a key or a value");
    RequireError(Http(base, "PUT", path, "[" + good + ",{\"key\":\"a\xC3\x28\",\"value\":1}]"),
                 400);
    RequireError(Http(base, "PUT", path, "[" + good + ",{\"key\":\"b\",\"value\":\"\xFF\"}]"), 400);
  }
  {
    INFO("not a list of {\"key\": string, \"value\": any}");
    for (const std::string& body : std::vector<std::string>{
             std::string(good),
             std::string("{}"),
             std::string("\"x\""),
             std::string("[" + good + ",1]"),
             std::string("[" + good + ",[\"k\",1]]"),
             std::string("[" + good + ",{\"value\":1}]"),
             std::string("[" + good + ",{\"key\":\"k\"}]"),
             std::string("[" + good + ",{\"key\":5,\"value\":1}]"),
             std::string("[" + good + ",{\"key\":null,\"value\":1}]"),
             std::string("[" + good + ",{\"key\":[\"k\"],\"value\":1}]"),
             std::string("[" + good + ",{\"key\":\"k\",\"value\":1,\"extra\":2}]"),
             std::string("[" + good + ",{\"key\":\"k\",\"key\":\"j\",\"value\":1}]"),
         }) {
      INFO("body " << body);
      RequireError(Http(base, "PUT", path, body), 400);
    }
  }
  {
    INFO("an empty key");
    RequireError(Http(base, "PUT", path, "[" + good + ",{\"key\":\"\",\"value\":1}]"), 400);
  }
  {
    INFO("deep nesting");
    RequireError(Http(base, "PUT", path, std::string(100000, '[')), 400);
    RequireError(Http(base, "PUT", path,
                      "[" + good + ",{\"key\":\"deep\",\"value\":" + std::string(100000, '[')),
                 400);
    std::string closed = "[" + good + ",{\"key\":\"deep\",\"value\":" + std::string(5000, '[') +
                         std::string(5000, ']') + "}]";
    RequireError(Http(base, "PUT", path, closed), 400);
  }
  rapidjson::Document job = GetJob(pmmap, id);
  REQUIRE(U64(job, "inputs") == 0);
  REQUIRE(U64(job, "pending") == 0);
  REQUIRE(U64(job, "outputs") == 0);
  REQUIRE(hook.call_count() == 0);
  // The key of the refused batches is still free.
  REQUIRE(Http(base, "PUT", path, "[" + good + "]").status == 201);
}

TEST_CASE("PUT input refuses keys repeated with another value and inputs after complete with 409",
          "[api]") {
  Webhook hook;
  PmmapProcess pmmap;
  const std::string base = pmmap.base_url();
  std::string id = CreateJob(pmmap, JobBody(hook.url()));
  const std::string path = JobPath(id, "/input");

  REQUIRE(Http(base, "PUT", path, "[" + OneInput("a", "1") + "]").status == 201);
  // A key used by an earlier call, with another value.
  CHECK_THAT(
      RequireError(
          Http(base, "PUT", path, "[" + OneInput("b", "2") + "," + OneInput("a", "3") + "]"), 409),
      Catch::Contains("input[1].key \"a\"") && Catch::Contains("different value"));
  // A key repeated within the batch, with another value.
  CHECK_THAT(
      RequireError(
          Http(base, "PUT", path, "[" + OneInput("c", "4") + "," + OneInput("c", "5") + "]"), 409),
      Catch::Contains("input[1].key \"c\"") && Catch::Contains("different value"));
  rapidjson::Document job = GetJob(pmmap, id);
  REQUIRE(U64(job, "inputs") == 1);
  // The refused batches reserved nothing: b and c are still free.
  HttpResult put =
      Http(base, "PUT", path, "[" + OneInput("b", "6") + "," + OneInput("c", "7") + "]");
  INFO(put.body);
  REQUIRE(put.status == 201);
  REQUIRE(U64(ParseJson(put.body), "inputs") == 3);

  REQUIRE(Http(base, "POST", JobPath(id, "/complete")).status == 200);
  RequireError(Http(base, "PUT", path, "[" + OneInput("d", "8") + "]"), 409);
  rapidjson::Document out = Output(pmmap, id);
  auto entries = ByKey(out);
  REQUIRE(entries.size() == 3);
  REQUIRE((*entries["a"])["value"]["value"].GetInt() == 1);
  REQUIRE((*entries["b"])["value"]["value"].GetInt() == 6);
  REQUIRE((*entries["c"])["value"]["value"].GetInt() == 7);
  REQUIRE(U64(GetJob(pmmap, id), "inputs") == 3);
  REQUIRE(hook.call_count() == 3);
}

TEST_CASE("a PUT sent again whole after its 201 is accepted and its inputs counted once", "[api]") {
  Webhook hook;
  PmmapProcess pmmap;
  const std::string base = pmmap.base_url();
  std::string id = CreateJob(pmmap, JobBody(hook.url(), "\"concurrency\":4"));
  const std::string path = JobPath(id, "/input");
  const int n = 50;
  const std::string body = MakeInputs(n);

  REQUIRE(Http(base, "PUT", path, body).status == 201);
  // The client got no answer, say, and sends the same PUT again, twice, the
  // second time spaced out: values are compared as stored, compact.
  std::string spaced = std::regex_replace(body, std::regex("\":"), "\": ");
  REQUIRE(spaced != body);
  for (const std::string& resent : {body, spaced}) {
    HttpResult again = Http(base, "PUT", path, resent);
    INFO(again.body);
    REQUIRE(again.status == 201);
    REQUIRE(U64(ParseJson(again.body), "inputs") == static_cast<uint64_t>(n));
  }
  REQUIRE(Http(base, "POST", JobPath(id, "/complete")).status == 200);
  // A repeat after complete is refused like any input.
  RequireError(Http(base, "PUT", path, body), 409);

  rapidjson::Document out = Output(pmmap, id);
  REQUIRE(ByKey(out).size() == static_cast<size_t>(n));  // one entry per key
  rapidjson::Document job = GetJob(pmmap, id);
  CHECK(U64(job, "inputs") == static_cast<uint64_t>(n));
  CHECK(U64(job, "outputs") == static_cast<uint64_t>(n));
  std::map<std::string, int> calls;
  for (const Webhook::Call& call : hook.calls()) ++calls[call.key];
  CHECK(calls.size() == static_cast<size_t>(n));
  for (const auto& [key, count] : calls) {
    INFO("key " << key);
    CHECK(count == 1);
  }
}

TEST_CASE("a PUT sent again with one value changed is refused with 409 naming the key", "[api]") {
  Webhook hook;
  PmmapProcess pmmap;
  const std::string base = pmmap.base_url();
  std::string id = CreateJob(pmmap, JobBody(hook.url()));
  const std::string path = JobPath(id, "/input");

  REQUIRE(Http(base, "PUT", path,
               "[" + OneInput("a", "1") + "," + OneInput("b", "2") + "," + OneInput("c", "3") + "]")
              .status == 201);
  // The same batch, b's value changed, and a new key d.
  std::string error = RequireError(Http(base, "PUT", path,
                                        "[" + OneInput("a", "1") + "," + OneInput("b", "20") + "," +
                                            OneInput("c", "3") + "," + OneInput("d", "4") + "]"),
                                   409);
  CHECK_THAT(error, Catch::Contains("input[1].key \"b\"") && Catch::Contains("different value"));
  REQUIRE(U64(GetJob(pmmap, id), "inputs") == 3);
  REQUIRE(Http(base, "POST", JobPath(id, "/complete")).status == 200);

  rapidjson::Document out = Output(pmmap, id);
  auto entries = ByKey(out);
  REQUIRE(entries.size() == 3);
  CHECK(entries.count("d") == 0);
  CHECK((*entries["b"])["value"]["value"].GetInt() == 2);
  CHECK(hook.call_count() == 3);
}

TEST_CASE("every route answers 404 for an unknown id, 405 for a wrong method", "[api]") {
  PmmapProcess pmmap;
  const std::string base = pmmap.base_url();
  const std::string id = CreateJob(pmmap, JobBody("http://127.0.0.1:9/hook"));
  const std::string unknown = "0123456789abcdef";
  REQUIRE(unknown != id);

  RequireError(Http(base, "GET", JobPath(unknown)), 404);
  RequireError(Http(base, "DELETE", JobPath(unknown)), 404);
  RequireError(Http(base, "PUT", JobPath(unknown, "/input"), MakeInputs(1)), 404);
  RequireError(Http(base, "POST", JobPath(unknown, "/complete")), 404);
  RequireError(Http(base, "POST", JobPath(unknown, "/cancel")), 404);
  RequireError(Http(base, "POST", JobPath(unknown, "/pause")), 404);
  RequireError(Http(base, "POST", JobPath(unknown, "/resume")), 404);
  RequireError(Http(base, "PATCH", JobPath(unknown), "{}"), 404);
  RequireError(Http(base, "GET", JobPath(unknown, "/output"), "", {}, seconds(5)), 404);
  RequireError(Http(base, "GET", "/no/such/route"), 404);

  const std::vector<std::pair<std::string, std::string>> wrong = {
      {"GET", "/job"},
      {"PUT", "/job"},
      {"DELETE", "/job"},
      {"PUT", JobPath(id)},
      {"POST", JobPath(id)},
      {"PATCH", JobPath(id, "/input")},
      {"GET", JobPath(id, "/pause")},
      {"GET", JobPath(id, "/input")},
      {"POST", JobPath(id, "/input")},
      {"GET", JobPath(id, "/complete")},
      {"PUT", JobPath(id, "/complete")},
      {"POST", JobPath(id, "/output")},
      {"DELETE", JobPath(id, "/output")},
  };
  for (const auto& w : wrong) {
    INFO(w.first << " " << w.second);
    HttpResult r = Http(base, w.first, w.second, "{}");
    RequireError(r, 405);
    REQUIRE_FALSE(HeaderOf(r.headers, "Allow").empty());
  }
  // Nothing changed.
  rapidjson::Document job = GetJob(pmmap, id);
  REQUIRE(Str(job["state"]) == "open");
  REQUIRE(U64(job, "inputs") == 0);
  REQUIRE(JobCount(pmmap) == 1);
}

TEST_CASE("bodies are read as JSON whatever their Content-Type, even over 8 KiB", "[api]") {
  Webhook hook;
  PmmapProcess pmmap;
  httplib::Client client(pmmap.base_url());
  client.set_connection_timeout(5, 0);
  client.set_read_timeout(20, 0);
  client.set_write_timeout(20, 0);
  const char* form = "application/x-www-form-urlencoded";  // what curl -d sends

  std::string job_body = JobBody(hook.url(), "\"secret\":\"" + std::string(9000, 'z') + "\"");
  REQUIRE(job_body.size() > 8192);
  auto created = client.Post("/job", job_body, form);
  REQUIRE(created);
  INFO(created->body);
  REQUIRE(created->status == 201);
  std::string id = Str(ParseJson(created->body)["id"]);

  std::string inputs = MakeInputs(400);
  REQUIRE(inputs.size() > 8192);
  auto put = client.Put(JobPath(id, "/input").c_str(), inputs, form);
  REQUIRE(put);
  INFO(put->body);
  REQUIRE(put->status == 201);
  REQUIRE(U64(ParseJson(put->body), "inputs") == 400);

  auto put_text = client.Put(JobPath(id, "/input").c_str(), MakeInputs(3, "t"), "text/plain");
  REQUIRE(put_text);
  REQUIRE(put_text->status == 201);

  auto complete = client.Post(JobPath(id, "/complete").c_str(), "", form);
  REQUIRE(complete);
  REQUIRE(complete->status == 200);
  rapidjson::Document out = Output(pmmap, id);
  REQUIRE(out.Size() == 403);
  REQUIRE(ByKey(out).size() == 403);
}

// ---------------------------------------------------------------------------
// Load

namespace {

// A small client for the load tests' threads: one kept-alive connection,
// bounded timeouts, no Catch assertions (they are not thread-safe).
struct Reply {
  int status = 0;     // 0: no reply
  std::string error;  // cpp-httplib's reason when there was no reply
  std::string body;
};

class KeptAliveClient {
 public:
  explicit KeptAliveClient(const std::string& base) : client_(base) {
    client_.set_keep_alive(true);
    client_.set_connection_timeout(5, 0);
    client_.set_read_timeout(30, 0);
    client_.set_write_timeout(30, 0);
  }
  Reply Send(const std::string& method, const std::string& path, const std::string& body = "") {
    httplib::Result r = method == "POST"  ? client_.Post(path.c_str(), body, "application/json")
                        : method == "PUT" ? client_.Put(path.c_str(), body, "application/json")
                                          : client_.Get(path.c_str());
    Reply reply;
    if (r) {
      reply.status = r->status;
      reply.body = r->body;
    } else {
      reply.error = httplib::to_string(r.error());
    }
    return reply;
  }

 private:
  httplib::Client client_;
};

// The connections to port on 127.0.0.1 that the server has accepted (those
// still in its listen queue have no inode yet), from /proc/net/tcp.
int AcceptedConnections(int port) {
  int n = 0;
  for (const TcpSocket& s : TcpSockets()) {
    n += s.local == LoopbackAddress(port) && s.state == "01" && s.inode != "0";
  }
  return n;
}

const int kParallelJobs = 20;
const int kInputsPerJob = 50;

// What one job of the parallel test saw.
struct Outcome {
  std::string id;
  std::string error;  // empty: all fine
};

// Why the output body of a job whose keys start with prefix is not the
// echo of its kInputsPerJob inputs, or "" if it is.
std::string OutputProblem(const std::string& body, const std::string& prefix) {
  rapidjson::Document out;
  out.Parse(body.c_str());
  if (out.HasParseError() || !out.IsArray()) return "bad output " + body;
  if (out.Size() != kInputsPerJob) return "output has " + std::to_string(out.Size()) + " entries";
  std::set<std::string> keys;
  for (const auto& e : out.GetArray()) {
    if (!e.IsObject() || !e.HasMember("key") || !e["key"].IsString() || !e.HasMember("value") ||
        !e["value"].IsObject() || !e["value"].HasMember("value") ||
        !e["value"]["value"].IsObject() || !e["value"]["value"].HasMember("i")) {
      return "bad entry in " + body;
    }
    std::string key = e["key"].GetString();
    if (key.compare(0, prefix.size(), prefix) != 0) return "foreign key " + key;
    if (std::string(e["value"]["key"].GetString()) != key ||
        e["value"]["value"]["i"].GetInt() != std::stoi(key.substr(prefix.size()))) {
      return "wrong value for " + key;
    }
    keys.insert(key);
  }
  if (keys.size() != static_cast<size_t>(kInputsPerJob)) return "repeated keys";
  return "";
}

// Runs job j from start to end on one kept-alive connection, its keys
// "j<j>_0"..., and fulfils created once its job exists. Reports what went
// wrong instead of asserting, since it runs on its own thread.
Outcome RunJob(const std::string& base, const std::string& hook_url, int j,
               std::shared_ptr<std::promise<void>> created) {
  Outcome o;
  auto fail = [&o](std::string message) {
    o.error = std::move(message);
    return o;
  };
  KeptAliveClient client(base);
  const std::string prefix = "j" + std::to_string(j) + "_";
  Reply r = client.Send("POST", "/job", JobBody(hook_url, "\"concurrency\":4,\"maxsize\":10"));
  created->set_value();
  if (r.status != 201)
    return fail("POST /job: " + std::to_string(r.status) + " " + r.error + r.body);
  rapidjson::Document job;
  job.Parse(r.body.c_str());
  if (job.HasParseError() || !job.IsObject() || !job.HasMember("id"))
    return fail("bad job " + r.body);
  o.id = job["id"].GetString();
  r = client.Send("PUT", "/job/" + o.id + "/input", MakeInputs(kInputsPerJob, prefix));
  if (r.status != 201) return fail("PUT: " + std::to_string(r.status) + " " + r.error + r.body);
  r = client.Send("POST", "/job/" + o.id + "/complete");
  if (r.status != 200)
    return fail("complete: " + std::to_string(r.status) + " " + r.error + r.body);
  r = client.Send("GET", "/job/" + o.id + "/output");
  if (r.status != 200) return fail("output: " + std::to_string(r.status) + " " + r.error + r.body);
  std::string problem = OutputProblem(r.body, prefix);
  if (!problem.empty()) return fail(problem);
  return o;
}

// Checks that each call carried the id of the job its key belongs to.
void CheckCallsCarryTheirJob(Webhook& hook, std::map<std::string, std::string>& id_by_prefix) {
  std::vector<Webhook::Call> calls = hook.calls();
  REQUIRE(calls.size() == static_cast<size_t>(kParallelJobs * kInputsPerJob));
  for (const Webhook::Call& call : calls) {
    std::string prefix = call.key.substr(0, call.key.find('_'));
    INFO("key " << call.key);
    REQUIRE(id_by_prefix.count(prefix) == 1);
    REQUIRE(HeaderOf(call.headers, "PMMAP-job") == id_by_prefix[prefix]);
  }
}

}  // namespace

TEST_CASE("many jobs run in parallel, each with all its replies", "[api]") {
  Webhook hook;
  PmmapProcess pmmap;
  // The threads start one after another (each once the previous one's job
  // exists), so that their connections do not arrive in one burst (see the
  // burst test below); their jobs then run side by side.
  std::vector<std::future<Outcome>> futures;
  for (int j = 0; j < kParallelJobs; ++j) {
    auto created = std::make_shared<std::promise<void>>();
    std::future<void> job_exists = created->get_future();
    futures.push_back(
        std::async(std::launch::async, RunJob, pmmap.base_url(), hook.url(), j, created));
    CHECK(job_exists.wait_for(seconds(10)) == std::future_status::ready);
  }
  std::vector<Outcome> outcomes;
  for (auto& f : futures) {
    REQUIRE(f.wait_for(seconds(60)) == std::future_status::ready);
    outcomes.push_back(f.get());
  }
  std::map<std::string, std::string> id_by_prefix;
  for (int j = 0; j < kParallelJobs; ++j) {
    INFO("job " << j << ": " << outcomes[j].error);
    REQUIRE(outcomes[j].error.empty());
    id_by_prefix["j" + std::to_string(j)] = outcomes[j].id;
  }
  CheckCallsCarryTheirJob(hook, id_by_prefix);
  for (int j = 0; j < kParallelJobs; ++j) {
    rapidjson::Document job = GetJob(pmmap, outcomes[j].id);
    REQUIRE(Str(job["state"]) == "done");
    REQUIRE(U64(job, "inputs") == kInputsPerJob);
    REQUIRE(U64(job, "outputs") == kInputsPerJob);
  }
}

TEST_CASE("hundreds of blocked callers do not starve the server", "[api]") {
  Webhook hook;
  const int kJobs = 10;
  const int kWaitersPerJob = 20;
  const int kTotal = kJobs * kWaitersPerJob;
  std::vector<std::future<HttpResult>> waiters;
  PmmapProcess pmmap;
  const std::string base = pmmap.base_url();
  std::vector<std::string> ids;
  for (int j = 0; j < kJobs; ++j) {
    ids.push_back(CreateJob(pmmap, JobBody(hook.url())));
    REQUIRE(Http(base, "PUT", JobPath(ids.back(), "/input"), MakeInputs(1)).status == 201);
  }
  // The waiters connect a few at a time, each few once the server has
  // accepted the ones before (see the burst test below for why).
  const int baseline = AcceptedConnections(pmmap.port());
  for (int i = 0; i < kTotal; ++i) {
    waiters.push_back(Async(base, "GET", JobPath(ids[i % kJobs], "/output"), "", seconds(30)));
    if (i % 4 == 3 || i == kTotal - 1) {
      INFO("waiter " << i);
      REQUIRE(WaitUntil([&] { return AcceptedConnections(pmmap.port()) >= baseline + i + 1; },
                        seconds(10)));
    }
  }
  // All of them are in, and blocked.
  REQUIRE(AcceptedConnections(pmmap.port()) >= kTotal);
  REQUIRE_FALSE(Ready(waiters.back(), milliseconds(100)));
  for (auto& w : waiters) REQUIRE_FALSE(Ready(w, milliseconds(0)));

  auto start = Clk::now();
  HttpResult get = Http(base, "GET", JobPath(ids[0]), "", {}, seconds(5));
  REQUIRE(get.status == 200);
  HttpResult post = Http(base, "POST", "/job", JobBody(hook.url()), {}, seconds(5));
  REQUIRE(post.status == 201);
  HttpResult health = Http(base, "GET", "/healthz", "", {}, seconds(5));
  REQUIRE(health.status == 200);
  REQUIRE(Clk::now() - start < seconds(5));
  for (auto& w : waiters) REQUIRE_FALSE(Ready(w, milliseconds(0)));

  // Complete half the jobs and delete the other half: every waiter answers.
  for (int j = 0; j < kJobs; ++j) {
    if (j % 2 == 0) {
      REQUIRE(Http(base, "POST", JobPath(ids[j], "/complete")).status == 200);
    } else {
      REQUIRE(Http(base, "DELETE", JobPath(ids[j])).status == 200);
    }
  }
  for (int i = 0; i < kTotal; ++i) {
    auto& f = waiters[i];
    REQUIRE(Ready(f, seconds(20)));
    HttpResult r = f.get();
    const int j = i % kJobs;
    INFO("waiter " << i << " of job " << j << ": " << r.status << " " << r.body);
    if (j % 2 == 0) {
      REQUIRE(r.status == 200);
      rapidjson::Document out = ParseJson(r.body);
      REQUIRE(out.IsArray());
      REQUIRE(out.Size() == 1);
    } else {
      REQUIRE(r.status == 404);
    }
  }
}

TEST_CASE("callers who hang up on GET /output give their threads back", "[api]") {
  Webhook hook;
  // Two API threads: two waiting callers hold both.
  PmmapProcess pmmap({"--http-threads", "2"});
  const std::string base = pmmap.base_url();
  std::string id = CreateJob(pmmap, JobBody(hook.url()));  // never completed
  const int baseline = AcceptedConnections(pmmap.port());
  // Each waiter gives up after 8 s, as `curl --max-time 8` would, and
  // closes its connection.
  std::vector<std::future<HttpResult>> waiters;
  for (int i = 0; i < 2; ++i)
    waiters.push_back(Async(base, "GET", JobPath(id, "/output"), "", seconds(8)));
  REQUIRE(WaitUntil([&] { return AcceptedConnections(pmmap.port()) >= baseline + 2; }, seconds(5)));
  auto health = Async(base, "GET", "/healthz", "", seconds(30));
  REQUIRE_FALSE(Ready(health, milliseconds(300)));  // both threads are taken
  for (auto& w : waiters) {
    REQUIRE(Ready(w, seconds(10)));
    CHECK(w.get().status == 0);  // no reply: the job never ended
  }
  // Each handler sees its caller gone within a second or so, and returns.
  REQUIRE(Ready(health, seconds(10)));
  HttpResult r = health.get();
  CHECK(r.status == 200);
  // The job is untouched, and a new waiter is answered once it ends.
  auto waiter = Async(base, "GET", JobPath(id, "/output"), "", seconds(30));
  REQUIRE(Http(base, "POST", JobPath(id, "/complete")).status == 200);
  REQUIRE(Ready(waiter, seconds(10)));
  r = waiter.get();
  CHECK(r.status == 200);
  CHECK(r.body == "[]\n");
}

TEST_CASE("a burst of simultaneous connections is answered, none left waiting", "[api]") {
  // Clients that connect at the same instant (a batch script, a pool of
  // workers) must all be answered within seconds: none reset, none left
  // stalled in the listen queue while the kernel retransmits.
  PmmapProcess pmmap;
  const std::string base = pmmap.base_url();
  // One request first, from this thread: cpp-httplib's client sets up its
  // function-local statics then, not in the racing threads.
  REQUIRE(Http(base, "GET", "/healthz").status == 200);
  const int kClients = 256;
  // Declared first, so destroyed last: should the test stop early, the
  // promise breaks (releasing the waiting threads) before they are joined.
  std::vector<std::future<Reply>> replies;
  std::promise<void> go;
  std::shared_future<void> start = go.get_future().share();
  for (int i = 0; i < kClients; ++i) {
    replies.push_back(std::async(std::launch::async, [base, start] {
      httplib::Client client(base);
      client.set_connection_timeout(5, 0);
      client.set_read_timeout(5, 0);
      client.set_write_timeout(5, 0);
      start.wait();
      httplib::Result r = client.Get("/healthz");
      Reply reply;
      if (r) {
        reply.status = r->status;
      } else {
        reply.error = httplib::to_string(r.error());
      }
      return reply;
    }));
  }
  go.set_value();
  int answered = 0;
  std::map<std::string, int> failures;
  for (auto& f : replies) {
    REQUIRE(f.wait_for(seconds(30)) == std::future_status::ready);
    Reply r = f.get();
    if (r.status == 200) {
      ++answered;
    } else {
      ++failures[std::to_string(r.status) + " " + r.error];
    }
  }
  std::string summary;
  for (const auto& f : failures) summary += std::to_string(f.second) + " x (" + f.first + ") ";
  INFO("not answered: " << summary);
  REQUIRE(answered == kClients);
}
