// From the shell (issue 16): NDJSON inputs streamed into PUT /job/{id}/input
// with backpressure, GET /output filtered by result, POST /job/{id}/redrive,
// and `pmmap map`. The real binary against a real webhook on loopback;
// shell commands (curl, script) run through /bin/sh, their files in a
// TempDir. Every wait is bounded.

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <cstdlib>
#include <fstream>
#include <map>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "harness.hpp"
#include "line_inputs.hpp"

namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

// Inputs first..last-1 as NDJSON: keys k<i>, values {"i": i}.
std::string NdjsonLines(int first, int last) {
  std::string out;
  for (int i = first; i < last; ++i) {
    out += "{\"key\":\"k" + std::to_string(i) + "\",\"value\":{\"i\":" + std::to_string(i) + "}}\n";
  }
  return out;
}

void WriteFile(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  REQUIRE(out.good());
}

// Runs command with /bin/sh, at most timeout; returns its exit code (-1 if
// it had to be killed).
int Shell(const std::string& command, milliseconds timeout = seconds(30)) {
  int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
  REQUIRE(devnull >= 0);
  pid_t pid = Spawn({"/bin/sh", "-c", command}, {}, devnull, devnull);
  close(devnull);
  return WaitExit(pid, timeout);
}

// The kB of a field of /proc/{pid}/status (VmRSS, VmHWM), or 0.
uint64_t ProcStatusKb(pid_t pid, const std::string& field) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/status");
  std::string line;
  while (std::getline(in, line)) {
    if (line.compare(0, field.size() + 1, field + ":") == 0) {
      return std::stoull(line.substr(field.size() + 1));
    }
  }
  return 0;
}

// A webhook that fails (400) the keys in failing, and answers the rest as Echo does.
Webhook::Handler FailKeys(std::set<std::string> failing) {
  return [failing](const Webhook::Call& call, httplib::Response& res) {
    if (failing.count(call.key) > 0) {
      res.status = 400;
      res.set_content("{\"no\":true}", "application/json");
      return;
    }
    Echo(call, res);
  };
}

std::string Output(const PmmapProcess& pmmap, const std::string& id, const std::string& query) {
  HttpResult r = Http(pmmap.base_url(), "GET", "/job/" + id + "/output?" + query);
  INFO(r.body);
  REQUIRE(r.status == 200);
  return r.body;
}

std::vector<std::string> KeysOf(const std::vector<rapidjson::Document>& lines) {
  std::vector<std::string> keys;
  for (const auto& line : lines) keys.push_back(Text(line, "key"));
  return keys;
}

bool Ended(const rapidjson::Document& job) {
  std::string state = Text(job, "state");
  return state == "done" || state == "cancelled";
}

// Runs a job of n inputs (keys k0..), of which the webhook fails the keys
// in failing, to its end; returns its id.
std::string RunJobWithFailures(const PmmapProcess& pmmap, Webhook& hook, int n,
                               const std::set<std::string>& failing,
                               const std::string& fields = "\"concurrency\":4") {
  hook.SetHandler(FailKeys(failing));
  std::string id = CreateJob(pmmap, JobBody(hook.url(), fields));
  REQUIRE(Http(pmmap.base_url(), "PUT", "/job/" + id + "/input", MakeInputs(n)).status == 201);
  REQUIRE(Http(pmmap.base_url(), "POST", "/job/" + id + "/complete").status == 200);
  WaitForJob(pmmap, id, Ended);
  return id;
}

}  // namespace

// ---------------------------------------------------------------------------
// GET /job/{id}/output?result=

TEST_CASE("output filtered by result pages within the matching entries, as JSON and NDJSON",
          "[shell]") {
  Webhook hook;
  PmmapProcess pmmap;
  // Every third key fails: k0, k3, ..., k27 (10 of 30).
  std::set<std::string> failing;
  for (int i = 0; i < 30; i += 3) failing.insert("k" + std::to_string(i));
  std::string id = RunJobWithFailures(pmmap, hook, 30, failing);

  std::vector<rapidjson::Document> all = ParseLines(Output(pmmap, id, "format=ndjson"));
  REQUIRE(all.size() == 30);
  std::vector<std::string> failed_in_order;
  std::vector<std::string> succeeded_in_order;
  for (const auto& entry : all) {
    (entry.HasMember("error") ? failed_in_order : succeeded_in_order).push_back(Text(entry, "key"));
  }
  REQUIRE(failed_in_order.size() == 10);

  // NDJSON: only failures, in stored order; offset and limit count within them.
  auto failed = ParseLines(Output(pmmap, id, "result=failed&format=ndjson"));
  CHECK(KeysOf(failed) == failed_in_order);
  for (const auto& entry : failed) CHECK(entry["error"]["status"].GetInt() == 400);
  auto page = ParseLines(Output(pmmap, id, "result=failed&format=ndjson&offset=3&limit=4"));
  CHECK(KeysOf(page) ==
        std::vector<std::string>(failed_in_order.begin() + 3, failed_in_order.begin() + 7));
  auto tail = ParseLines(Output(pmmap, id, "result=failed&format=ndjson&offset=8&limit=100"));
  CHECK(KeysOf(tail) ==
        std::vector<std::string>(failed_in_order.begin() + 8, failed_in_order.end()));

  // The JSON array form, and the successes.
  rapidjson::Document array = ParseJson(Output(pmmap, id, "result=succeeded&offset=5&limit=3"));
  REQUIRE(array.IsArray());
  REQUIRE(array.Size() == 3);
  for (rapidjson::SizeType i = 0; i < 3; ++i) {
    CHECK(Text(array[i], "key") == succeeded_in_order[5 + i]);
    CHECK(array[i].HasMember("value"));
  }
  CHECK(ParseJson(Output(pmmap, id, "result=succeeded")).Size() == 20);
  CHECK(Output(pmmap, id, "result=failed&offset=10") == "[]\n");
  CHECK(Output(pmmap, id, "result=failed&limit=0&format=ndjson") == "");
  // Combined with wait=false on a running job too; a bad value is refused.
  CHECK(ParseJson(Output(pmmap, id, "result=failed&wait=false")).Size() == 10);
  std::string error =
      RequireError(Http(pmmap.base_url(), "GET", "/job/" + id + "/output?result=broken"), 400);
  CHECK(error.find("result") != std::string::npos);
}

TEST_CASE("output filtered by result reads entries whose keys straddle the reader's blocks",
          "[shell]") {
  Webhook hook;
  PmmapProcess pmmap;
  // Long keys (1000 bytes, escaped to 6 bytes each in part) put entry heads
  // across the reader's 64 KiB blocks.
  std::set<std::string> failing;
  std::string inputs = "[";
  const int n = 400;
  for (int i = 0; i < n; ++i) {
    std::string key = std::string(990, i % 2 ? '"' : 'x') + std::to_string(1000000 + i);
    if (i % 7 == 0) failing.insert(key);
    inputs += (i ? "," : "") + std::string("{\"key\":") + Quote(key) +
              ",\"value\":" + std::to_string(i) + "}";
  }
  inputs += "]";
  hook.SetHandler(FailKeys(failing));
  std::string id = CreateJob(pmmap, JobBody(hook.url(), "\"concurrency\":4"));
  REQUIRE(Http(pmmap.base_url(), "PUT", "/job/" + id + "/input", inputs).status == 201);
  REQUIRE(Http(pmmap.base_url(), "POST", "/job/" + id + "/complete").status == 200);
  WaitForJob(pmmap, id, Ended);
  auto failed = ParseLines(Output(pmmap, id, "result=failed&format=ndjson"));
  std::set<std::string> keys;
  for (const auto& entry : failed) keys.insert(Text(entry, "key"));
  CHECK(keys == failing);
  CHECK(ParseJson(Output(pmmap, id, "result=succeeded")).Size() == n - failing.size());
}

// ---------------------------------------------------------------------------
// PUT /job/{id}/input with NDJSON

namespace {

// ThreadSanitizer's shadow and history grow with the work done, not with
// what is held: pmmap's RSS says nothing then. AddressSanitizer's
// quarantine of freed memory (256 MB) is cut to a few MB instead.
// Its internal allocator also runs out within a stream of 200,000 lines,
// so that the stream is shorter there: a race shows in fewer.
#if defined(__SANITIZE_THREAD__)
constexpr bool kRssMeaningful = false;
constexpr int kStreamLines = 20000;
#else
constexpr bool kRssMeaningful = true;
constexpr int kStreamLines = 200000;
#endif

std::map<std::string, std::string> SmallQuarantine() {
  const char* options = getenv("ASAN_OPTIONS");
  std::string value = options != nullptr ? options : "";
  return {{"ASAN_OPTIONS", value + (value.empty() ? "" : ":") + "quarantine_size_mb=4"}};
}

}  // namespace

TEST_CASE("a streamed NDJSON PUT of 200,000 lines into a queue of 100 delivers all, RSS flat",
          "[shell]") {
  Webhook hook;
  PmmapProcess pmmap({}, SmallQuarantine());
  TempDir dir("pmmap-shell");
  const int n = kStreamLines;
  WriteFile(dir.File("in.ndjson"), NdjsonLines(0, n));
  std::string id = CreateJob(pmmap, JobBody(hook.url(), "\"concurrency\":16,\"maxsize\":100"));
  const uint64_t rss_start_kb = ProcStatusKb(pmmap.pid(), "VmRSS");
  REQUIRE(rss_start_kb > 0);
  std::string command = "exec curl -sS -o " + dir.File("out.json") + " -w '%{http_code}' -T " +
                        dir.File("in.ndjson") + " -H 'Content-Type: application/x-ndjson' " +
                        pmmap.base_url() + "/job/" + id + "/input > " + dir.File("code");
  int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
  pid_t curl = Spawn({"/bin/sh", "-c", command}, {}, devnull, devnull);
  close(devnull);
  // While the stream runs, the queue stays within maxsize and memory flat.
  uint64_t rss_peak_kb = 0;
  uint64_t queue_peak = 0;
  bool streaming = WaitUntil(
      [&] {
        rss_peak_kb = std::max(rss_peak_kb, ProcStatusKb(pmmap.pid(), "VmRSS"));
        rapidjson::Document job = GetJob(pmmap, id);
        queue_peak = std::max<uint64_t>(queue_peak, U64(job, "pending"));
        return U64(job, "inputs") >= n;
      },
      seconds(60), milliseconds(50));
  REQUIRE(WaitExit(curl, seconds(30)) == 0);
  REQUIRE(streaming);
  CHECK(ReadFile(dir.File("code")) == "201");
  rapidjson::Document answer = ParseJson(ReadFile(dir.File("out.json")));
  CHECK(U64(answer, "accepted") == n);
  CHECK(U64(answer, "inputs") == n);
  CHECK(queue_peak <= 100);
  REQUIRE(Http(pmmap.base_url(), "POST", "/job/" + id + "/complete").status == 200);
  rapidjson::Document done = WaitForJob(
      pmmap, id, [](const rapidjson::Document& j) { return Text(j, "state") == "done"; },
      seconds(60));
  CHECK(U64(done, "succeeded") == n);
  const uint64_t hwm_kb = ProcStatusKb(pmmap.pid(), "VmHWM");
  INFO("RSS at start " << rss_start_kb << " kB, peak seen " << rss_peak_kb << " kB, VmHWM "
                       << hwm_kb << " kB");
  if (kRssMeaningful) {
    CHECK(rss_peak_kb < rss_start_kb + 64 * 1024);
    CHECK(hwm_kb < rss_start_kb + 64 * 1024);
  }
  std::set<std::string> keys;
  for (const auto& entry : ParseLines(Output(pmmap, id, "format=ndjson"))) {
    keys.insert(Text(entry, "key"));
  }
  CHECK(keys.size() == static_cast<size_t>(n));
}

TEST_CASE("a bad line stops a streamed PUT with its number; the lines before it stay accepted",
          "[shell]") {
  Webhook hook;
  PmmapProcess pmmap;
  std::string id = CreateJob(pmmap, JobBody(hook.url(), "\"concurrency\":4,\"maxsize\":10"));
  // Line 1 is blank; lines 2..301 are inputs k0..k299; line 302 is bad.
  std::string body =
      "\n" + NdjsonLines(0, 300) + "{\"key\":\"\",\"value\":1}\n" + NdjsonLines(300, 400);
  HttpResult r = Http(pmmap.base_url(), "PUT", "/job/" + id + "/input?format=ndjson", body);
  std::string error = RequireError(r, 400);
  CHECK(error.find("line 302:") == 0);
  CHECK(error.find("must not be empty") != std::string::npos);
  CHECK(error.find("the 300 inputs before it were accepted") != std::string::npos);
  CHECK(U64(GetJob(pmmap, id), "inputs") == 300);

  // A line that is not JSON, and a key used before with another value (a
  // clash inside a batch: only the inputs before it are accepted).
  error = RequireError(Http(pmmap.base_url(), "PUT", "/job/" + id + "/input?format=ndjson",
                            NdjsonLines(300, 305) + "{\"key\":\n"),
                       400);
  CHECK(error.find("line 6: the line is not valid JSON") == 0);
  CHECK(U64(GetJob(pmmap, id), "inputs") == 305);
  error = RequireError(Http(pmmap.base_url(), "PUT", "/job/" + id + "/input?format=ndjson",
                            NdjsonLines(305, 310) + "{\"key\":\"k1\",\"value\":2}\n"),
                       409);
  CHECK(error.find("line 6: input.key \"k1\" is already used") == 0);
  CHECK(U64(GetJob(pmmap, id), "inputs") == 310);

  // The fixed file sent again whole: repeats are accepted, a last line
  // without a newline counts, and the Content-Type alone selects NDJSON.
  std::string fixed = NdjsonLines(0, 400);
  fixed.pop_back();
  r = Http(pmmap.base_url(), "PUT", "/job/" + id + "/input", fixed,
           {{"Content-Type", "application/x-ndjson"}});
  INFO(r.body);
  REQUIRE(r.status == 201);
  CHECK(U64(ParseJson(r.body), "accepted") == 400);
  CHECK(U64(GetJob(pmmap, id), "inputs") == 400);
  RequireError(Http(pmmap.base_url(), "PUT", "/job/" + id + "/input?format=xml", "[]"), 400);
}

TEST_CASE("a streamed PUT blocked for room ends on cancel and on delete", "[shell]") {
  Gate gate;
  Webhook hook;
  hook.SetHandler([&gate](const Webhook::Call& call, httplib::Response& res) {
    gate.Wait();
    Echo(call, res);
  });
  PmmapProcess pmmap;
  OpenAtExit open_gate(gate);
  for (std::string how : {"cancel", "delete"}) {
    INFO(how);
    std::string id = CreateJob(pmmap, JobBody(hook.url(), "\"maxsize\":4"));
    std::string path = "/job/" + id + "/input?format=ndjson";
    HttpResult r;
    std::thread put([&] { r = Http(pmmap.base_url(), "PUT", path, NdjsonLines(0, 1000)); });
    // The queue is full and one call is held: the PUT waits for room.
    WaitForJob(pmmap, id, [](const rapidjson::Document& j) {
      return U64(j, "pending") == 4 && U64(j, "in_flight") == 1;
    });
    if (how == "cancel") {
      REQUIRE(Http(pmmap.base_url(), "POST", "/job/" + id + "/cancel").status == 200);
    } else {
      REQUIRE(Http(pmmap.base_url(), "DELETE", "/job/" + id).status == 200);
    }
    put.join();
    CHECK(r.status == (how == "cancel" ? 409 : 404));
  }
}

TEST_CASE("a streamed PUT waiting for room gives up once its caller hangs up", "[shell]") {
  Gate gate;
  Webhook hook;
  hook.SetHandler([&gate](const Webhook::Call& call, httplib::Response& res) {
    gate.Wait();
    Echo(call, res);
  });
  PmmapProcess pmmap;
  OpenAtExit open_gate(gate);
  std::string id = CreateJob(pmmap, JobBody(hook.url(), "\"maxsize\":4"));
  // The whole request reaches pmmap's socket buffer; then the caller goes.
  std::string lines = NdjsonLines(0, 1000);
  std::string request = "PUT /job/" + id + "/input?format=ndjson HTTP/1.1\r\nHost: x\r\n" +
                        "Content-Length: " + std::to_string(lines.size()) + "\r\n\r\n" + lines;
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  REQUIRE(fd >= 0);
  sockaddr_in addr = {};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(static_cast<uint16_t>(pmmap.port()));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  REQUIRE(connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  REQUIRE(write(fd, request.data(), request.size()) == static_cast<ssize_t>(request.size()));
  WaitForJob(pmmap, id, [](const rapidjson::Document& j) {
    return U64(j, "pending") == 4 && U64(j, "in_flight") == 1;
  });
  close(fd);
  // The PUT asks every second whether its caller is there. Were it still
  // waiting when room comes, it would read the rest from the socket's
  // buffer and queue all 1000.
  std::this_thread::sleep_for(milliseconds(2500));
  gate.Open();
  rapidjson::Document idle = WaitForJob(pmmap, id, [](const rapidjson::Document& j) {
    return U64(j, "pending") == 0 && U64(j, "in_flight") == 0;
  });
  CHECK(U64(idle, "inputs") < 100);
}

// ---------------------------------------------------------------------------
// POST /job/{id}/redrive

TEST_CASE("a redrive sends exactly the failed inputs again, with their values, as a new job",
          "[shell]") {
  TempDir data("pmmap-shell-data");
  for (bool durable : {false, true}) {
    INFO("durable: " << durable);
    Webhook hook;
    std::vector<std::string> args;
    if (durable) args = {"--data-dir", data.path()};
    PmmapProcess pmmap(args);
    std::set<std::string> failing = {"k3", "k7", "k8", "k20", "k39"};
    std::string old_id = RunJobWithFailures(
        pmmap, hook, 40, failing, "\"concurrency\":4,\"max_attempts\":2,\"secret\":\"s\"");
    std::string old_json = Http(pmmap.base_url(), "GET", "/job/" + old_id).body;
    std::string old_output = Output(pmmap, old_id, "format=ndjson");

    // The webhook is fixed; the redrive overrides one field and keeps the rest.
    hook.SetHandler(nullptr);
    const size_t calls_before = hook.call_count();
    HttpResult r =
        Http(pmmap.base_url(), "POST", "/job/" + old_id + "/redrive", "{\"timeout_ms\":5000}");
    INFO(r.body);
    REQUIRE(r.status == 201);
    rapidjson::Document fresh = ParseJson(r.body);
    std::string id = Text(fresh, "id");
    CHECK(id != old_id);
    CHECK(Text(fresh, "redrive_of") == old_id);
    CHECK(U64(fresh, "inputs") == failing.size());
    CHECK(U64(fresh, "timeout_ms") == 5000);
    CHECK(U64(fresh, "concurrency") == 4);
    CHECK(U64(fresh, "max_attempts") == 2);
    CHECK(HeaderOf(r.headers, "Location") == "/job/" + id);
    rapidjson::Document done = WaitForJob(
        pmmap, id, [](const rapidjson::Document& j) { return Text(j, "state") == "done"; });
    CHECK(U64(done, "succeeded") == failing.size());
    std::set<std::string> keys;
    for (const auto& entry : ParseLines(Output(pmmap, id, "format=ndjson"))) {
      std::string key = Text(entry, "key");
      keys.insert(key);
      // The original value, sent again (Echo returns it).
      CHECK(entry["value"]["value"]["i"].GetInt() == std::stoi(key.substr(1)));
    }
    CHECK(keys == failing);
    // Only those were called again, signed with the old job's secret.
    std::vector<Webhook::Call> calls = hook.calls();
    REQUIRE(calls.size() == calls_before + failing.size());
    for (size_t i = calls_before; i < calls.size(); ++i) {
      CHECK(failing.count(calls[i].key) == 1);
      CHECK(HeaderOf(calls[i].headers, "PMMAP-auth") == "s");
      CHECK(HeaderOf(calls[i].headers, "PMMAP-job") == id);
    }
    // The old job is unchanged; a redrive of a job without failures is empty.
    CHECK(Http(pmmap.base_url(), "GET", "/job/" + old_id).body == old_json);
    CHECK(Output(pmmap, old_id, "format=ndjson") == old_output);
    r = Http(pmmap.base_url(), "POST", "/job/" + id + "/redrive");
    REQUIRE(r.status == 201);
    CHECK(U64(ParseJson(r.body), "inputs") == 0);
    CHECK(Text(ParseJson(r.body), "redrive_of") == id);
    if (durable) {
      // The record keeps redrive_of across a restart.
      REQUIRE(pmmap.Stop(SIGTERM) == 0);
      PmmapProcess again(args);
      CHECK(Text(GetJob(again, id), "redrive_of") == old_id);
      CHECK(GetJob(again, old_id)["redrive_of"].IsNull());
      REQUIRE(again.Stop(SIGTERM) == 0);
      RemoveTree(data.path());
    }
  }
}

TEST_CASE("a redrive is refused before the job ends, and takes cancelled inputs after a cancel",
          "[shell]") {
  Gate gate;
  Webhook hook;
  hook.SetHandler([&gate](const Webhook::Call& call, httplib::Response& res) {
    gate.Wait();
    Echo(call, res);
  });
  PmmapProcess pmmap({"--max-jobs", "2"});
  OpenAtExit open_gate(gate);
  std::string id = CreateJob(pmmap, JobBody(hook.url()));
  REQUIRE(Http(pmmap.base_url(), "PUT", "/job/" + id + "/input", MakeInputs(10)).status == 201);
  std::string error = RequireError(Http(pmmap.base_url(), "POST", "/job/" + id + "/redrive"), 409);
  CHECK(error.find("only a done or cancelled job") != std::string::npos);
  RequireError(Http(pmmap.base_url(), "POST", "/job/nosuchjob/redrive"), 404);
  WaitForJob(pmmap, id, [](const rapidjson::Document& j) { return U64(j, "in_flight") == 1; });
  REQUIRE(Http(pmmap.base_url(), "POST", "/job/" + id + "/cancel").status == 200);
  // A bad override is refused as POST /job refuses it.
  error = RequireError(
      Http(pmmap.base_url(), "POST", "/job/" + id + "/redrive", "{\"concurency\":2}"), 400);
  CHECK(error.find("concurency") != std::string::npos);
  gate.Open();
  HttpResult r = Http(pmmap.base_url(), "POST", "/job/" + id + "/redrive", "{\"concurrency\":3}");
  INFO(r.body);
  REQUIRE(r.status == 201);
  std::string fresh = Text(ParseJson(r.body), "id");
  CHECK(U64(ParseJson(r.body), "inputs") == 10);
  CHECK(U64(ParseJson(r.body), "concurrency") == 3);
  rapidjson::Document done = WaitForJob(
      pmmap, fresh, [](const rapidjson::Document& j) { return Text(j, "state") == "done"; });
  CHECK(U64(done, "succeeded") == 10);
  // The new job counts against --max-jobs.
  RequireError(Http(pmmap.base_url(), "POST", "/job/" + id + "/redrive"), 429);
}

// ---------------------------------------------------------------------------
// pmmap map

namespace {

struct MapResult {
  int exit_code = -1;
  std::string out;
  std::string err;
};

// Runs `pmmap map args` with stdin from the file in, in dir; at most timeout.
MapResult RunMap(const TempDir& dir, const std::string& args, const std::string& in,
                 milliseconds timeout = seconds(30)) {
  MapResult r;
  r.exit_code = Shell("exec " + PmmapBinary() + " map " + args + " < " + in + " > " +
                          dir.File("out") + " 2> " + dir.File("err"),
                      timeout);
  r.out = ReadFile(dir.File("out"));
  r.err = ReadFile(dir.File("err"));
  return r;
}

}  // namespace

TEST_CASE("pmmap map runs stdin through the webhook and exits 0, 1 or 2", "[shell]") {
  Webhook hook;
  TempDir dir("pmmap-map");
  const int n = 500;
  WriteFile(dir.File("in"), NdjsonLines(0, n));
  std::string flags = " --concurrency 8 --maxsize 20 --secret s --max-attempts 2 --backoff-ms 1";

  // Every input succeeds: one outcome per input, and nothing on stderr off a terminal.
  MapResult r = RunMap(dir, hook.url() + flags, dir.File("in"));
  INFO(r.err);
  CHECK(r.exit_code == 0);
  CHECK(r.err.empty());
  std::vector<rapidjson::Document> lines = ParseLines(r.out);
  REQUIRE(lines.size() == static_cast<size_t>(n));
  std::set<std::string> keys;
  for (const auto& entry : lines) {
    std::string key = Text(entry, "key");
    keys.insert(key);
    CHECK(entry["value"]["value"]["i"].GetInt() == std::stoi(key.substr(1)));
  }
  CHECK(keys.size() == static_cast<size_t>(n));
  CHECK(HeaderOf(hook.calls().back().headers, "PMMAP-auth") == "s");

  // Some fail: exit 1, and still one outcome per input.
  hook.SetHandler(FailKeys({"k3", "k300"}));
  r = RunMap(dir, hook.url() + flags, dir.File("in"));
  CHECK(r.exit_code == 1);
  lines = ParseLines(r.out);
  CHECK(lines.size() == static_cast<size_t>(n));
  size_t failures = 0;
  for (const auto& entry : lines) failures += entry.HasMember("error") ? 1 : 0;
  CHECK(failures == 2);
  hook.SetHandler(nullptr);

  // Bad usage and a bad input line: exit 2 with a message.
  r = RunMap(dir, hook.url() + " --concurrency 0", dir.File("in"));
  CHECK(r.exit_code == 2);
  CHECK(r.err.find("--concurrency: expected an integer from 1 to 1024") != std::string::npos);
  r = RunMap(dir, hook.url() + " --bogus 1", dir.File("in"));
  CHECK(r.exit_code == 2);
  CHECK(r.err.find("unknown flag --bogus") != std::string::npos);
  r = RunMap(dir, "--concurrency 2", dir.File("in"));
  CHECK(r.exit_code == 2);
  WriteFile(dir.File("bad"), NdjsonLines(0, 10) + "{\"key\":\"x\"}\n" + NdjsonLines(10, 20));
  r = RunMap(dir, hook.url(), dir.File("bad"));
  CHECK(r.exit_code == 2);
  CHECK(r.err.find("line 11: input: missing \"value\"") != std::string::npos);
  // The lines before the bad one were sent, and have their outcomes.
  CHECK(ParseLines(r.out).size() == 10);
}

TEST_CASE("pmmap map --lines keys each line by its number, and shows progress on a terminal",
          "[shell]") {
  Webhook hook;
  TempDir dir("pmmap-map");
  std::string text;
  for (int i = 1; i <= 300; ++i) text += "line \"" + std::to_string(i) + "\"\n";
  text += "last, without a newline";
  WriteFile(dir.File("in"), text);
  MapResult r = RunMap(dir, hook.url() + " --lines --concurrency 4", dir.File("in"));
  CHECK(r.exit_code == 0);
  std::map<std::string, std::string> values;
  for (const auto& entry : ParseLines(r.out)) {
    values[Text(entry, "key")] = Text(entry["value"], "value");
  }
  REQUIRE(values.size() == 301);
  CHECK(values["1"] == "line \"1\"");
  CHECK(values["300"] == "line \"300\"");
  CHECK(values["301"] == "last, without a newline");

  // Under a pseudo-terminal (script), stderr shows the progress line,
  // redrawn with \r, ending with done/total.
  int code = Shell("exec script -qec '" + PmmapBinary() + " map " + hook.url() +
                   " --lines --concurrency 4 < " + dir.File("in") + " > " + dir.File("out") +
                   "' /dev/null > " + dir.File("tty"));
  CHECK(code == 0);
  std::string tty = ReadFile(dir.File("tty"));
  INFO(tty);
  CHECK(tty.find("\r") != std::string::npos);
  CHECK(tty.find("301/301 done") != std::string::npos);
  CHECK(tty.find("calls/s, 0 failed, 0 retries, ETA") != std::string::npos);
  CHECK(ParseLines(ReadFile(dir.File("out"))).size() == 301);
  // Off a terminal, --progress prints it too.
  r = RunMap(dir, hook.url() + " --lines --progress", dir.File("in"));
  CHECK(r.exit_code == 0);
  CHECK(r.err.find("301/301 done") != std::string::npos);
}

TEST_CASE("pmmap map's progress line shows the circuit while the webhook is down", "[shell]") {
  RefusingPort refusing;
  TempDir dir("pmmap-map");
  WriteFile(dir.File("in"), "a\nb\n");
  MapResult r = RunMap(dir,
                       refusing.url() +
                           " --lines --progress --max-outage-ms 2500 --backoff-ms 20"
                           " --max-backoff-ms 100",
                       dir.File("in"));
  INFO(r.err);
  CHECK(r.exit_code == 1);
  CHECK(r.err.find("circuit open") != std::string::npos);
  std::vector<rapidjson::Document> entries = ParseLines(r.out);
  REQUIRE(entries.size() == 2);
  CHECK_THAT(Text(entries[0]["error"], "message"), Catch::Contains("max_outage_ms"));
}

TEST_CASE("pmmap map on SIGINT cancels, writes an entry for every input read, and exits 1",
          "[shell]") {
  Gate gate;
  Webhook hook;
  hook.SetHandler([&gate](const Webhook::Call& call, httplib::Response& res) {
    gate.Wait();
    Echo(call, res);
  });
  OpenAtExit open_gate(gate);
  TempDir dir("pmmap-map");
  std::string text;
  for (int i = 1; i <= 5000; ++i) text += std::to_string(i) + "\n";
  WriteFile(dir.File("in"), text);
  int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
  pid_t pid = Spawn(
      {"/bin/sh", "-c",
       "exec " + PmmapBinary() + " map " + hook.url() + " --lines --concurrency 2 --maxsize 8 < " +
           dir.File("in") + " > " + dir.File("out") + " 2> " + dir.File("err")},
      {}, devnull, devnull);
  close(devnull);
  // Two calls held, the queue full: the reader waits for room.
  REQUIRE(WaitUntil([&] { return hook.in_flight() == 2; }));
  REQUIRE(kill(pid, SIGINT) == 0);
  CHECK(WaitExit(pid, seconds(20)) == 1);
  std::vector<rapidjson::Document> lines = ParseLines(ReadFile(dir.File("out")));
  // The inputs read are lines 1..N, in order; each has exactly one entry,
  // each of them cancelled (the webhook held every call).
  std::set<int> keys;
  for (const auto& entry : lines) {
    keys.insert(std::stoi(Text(entry, "key")));
    REQUIRE(entry.HasMember("error"));
    CHECK(Text(entry["error"], "message") == "cancelled");
  }
  REQUIRE(!keys.empty());
  CHECK(keys.size() == lines.size());
  CHECK(*keys.begin() == 1);
  CHECK(*keys.rbegin() == static_cast<int>(keys.size()));
  CHECK(keys.size() >= 10);
  CHECK(keys.size() < 5000);
  CHECK(ReadFile(dir.File("err")).find("interrupted") != std::string::npos);
}

// ---------------------------------------------------------------------------
// LineInputs, alone

TEST_CASE("LineInputs cuts lines anywhere, batches them in order and names the first bad one",
          "[shell]") {
  std::vector<std::vector<std::string>> batches;
  LineInputs::Options options;
  options.max_line_bytes = 40;
  options.batch_inputs = 3;
  options.batch_bytes = 1 << 20;
  LineInputs lines(options, [&](const std::vector<Input>& batch) {
    std::vector<std::string> keys;
    for (const Input& input : batch) keys.push_back(input.key + "=" + input.value);
    batches.push_back(keys);
    return Status::OK();
  });
  // Fed a byte at a time, with a blank line, CRLF, and no final newline.
  std::string text = "{\"key\":\"a\",\"value\":1}\n\n {\"key\":\"b\", \"value\": [1, 2]}\r\n" +
                     std::string("{\"key\":\"c\",\"value\":\"x\"}\n{\"key\":\"d\",\"value\":null}");
  for (char c : text) REQUIRE(lines.Take(&c, 1));
  REQUIRE(lines.Finish(true).ok());
  CHECK(lines.accepted() == 4);
  CHECK(lines.lines() == 5);
  REQUIRE(batches.size() == 2);
  CHECK(batches[0] == std::vector<std::string>{"a=1", "b=[1,2]", "c=\"x\""});
  CHECK(batches[1] == std::vector<std::string>{"d=null"});

  // A line over the limit stops the stream (413), after handing on the rest.
  batches.clear();
  LineInputs limited(options, [&](const std::vector<Input>& batch) {
    batches.emplace_back(batch.size(), "");
    return Status::OK();
  });
  std::string two =
      "{\"key\":\"a\",\"value\":1}\n{\"key\":\"b\",\"value\":\"" + std::string(40, 'x') + "\"}\n";
  CHECK_FALSE(limited.Take(two.data(), two.size()));
  CHECK(limited.status().code() == Status::kTooLarge);
  CHECK(batches.size() == 1);
  CHECK(limited.status().message() ==
        "line 2: longer than 40 bytes, the limit of a line; the 1 inputs before it were accepted");
  // A cut-off stream drops its last, partial line.
  LineInputs cut(options, [&](const std::vector<Input>&) { return Status::OK(); });
  std::string partial = "{\"key\":\"a\",\"value\":1}\n{\"key\":\"b\",\"va";
  REQUIRE(cut.Take(partial.data(), partial.size()));
  CHECK(cut.Finish(false).ok());
  CHECK(cut.accepted() == 1);

  // --lines: any line, its number the key, the line a JSON string.
  options.format = LineInputs::Format::kPlain;
  batches.clear();
  LineInputs plain(options, [&](const std::vector<Input>& batch) {
    std::vector<std::string> keys;
    for (const Input& input : batch) keys.push_back(input.key + "=" + input.value);
    batches.push_back(keys);
    return Status::OK();
  });
  std::string words = "one\r\n\n\"two\"\tthree";
  REQUIRE(plain.Take(words.data(), words.size()));
  REQUIRE(plain.Finish(true).ok());
  REQUIRE(batches.size() == 1);
  CHECK(batches[0] == std::vector<std::string>{"1=\"one\"", "2=\"\"", "3=\"\\\"two\\\"\\tthree\""});
}

TEST_CASE("a streamed PUT takes a body far over --max-body, each line within it", "[shell]") {
  Webhook hook;
  PmmapProcess pmmap({"--max-body", "1000"});
  TempDir dir("pmmap-shell");
  const int n = 20000;
  WriteFile(dir.File("in.ndjson"), NdjsonLines(0, n));
  std::string id = CreateJob(pmmap, JobBody(hook.url(), "\"concurrency\":8,\"maxsize\":50"));
  // curl -T sends a file with its Content-Length, here about 700 times the limit.
  REQUIRE(Shell("exec curl -sS -o " + dir.File("out.json") + " -T " + dir.File("in.ndjson") + " '" +
                pmmap.base_url() + "/job/" + id + "/input?format=ndjson'") == 0);
  CHECK(U64(ParseJson(ReadFile(dir.File("out.json"))), "accepted") == n);
  // A line over the limit is refused (413), naming it; a whole body over it still is.
  std::string long_line = "{\"key\":\"long\",\"value\":\"" + std::string(1000, 'x') + "\"}\n";
  std::string error =
      RequireError(Http(pmmap.base_url(), "PUT", "/job/" + id + "/input?format=ndjson",
                        NdjsonLines(n, n + 3) + long_line),
                   413);
  CHECK(error.find("line 4: longer than 1000 bytes") == 0);
  CHECK(error.find("the 3 inputs before it were accepted") != std::string::npos);
  RequireError(Http(pmmap.base_url(), "PUT", "/job/" + id + "/input", MakeInputs(100, "x")), 413);
  CHECK(U64(GetJob(pmmap, id), "inputs") == n + 3);
}
