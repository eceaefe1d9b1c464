// A webhook that goes away, chokes or says no, against the real pmmap: the
// circuit breaker, the outage budget (max_outage_ms), the adaptive limit,
// and pause, resume and PATCH by hand (circuit.hpp, job.hpp).

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <memory>

#include "harness.hpp"

namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

std::string Str(const rapidjson::Value& v, const char* name) {
  return v.HasMember(name) && v[name].IsString() ? v[name].GetString() : "";
}

bool Ended(const rapidjson::Document& job) {
  return Text(job, "state") == "done" || Text(job, "state") == "cancelled";
}

// The value of the unlabelled metric name in pmmap's /metrics, or -1.
long Metric(const PmmapProcess& pmmap, const std::string& name) {
  HttpResult r = Http(pmmap.base_url(), "GET", "/metrics");
  size_t at = r.body.find("\n" + name + " ");
  if (at == std::string::npos) return -1;
  return std::stol(r.body.substr(at + name.size() + 2));
}

// A webhook that serves at most `limit` requests at once and resets the
// connection of any request beyond, as an overloaded server sheds load.
// Each request is answered after a few milliseconds with {"key": ...}.
class SheddingWebhook {
 public:
  explicit SheddingWebhook(int limit) : limit_(limit) {
    listen_fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(listen_fd_ >= 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof(addr);
    REQUIRE(bind(listen_fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
    REQUIRE(listen(listen_fd_, 256) == 0);
    REQUIRE(getsockname(listen_fd_, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
    port_ = ntohs(addr.sin_port);
    accepter_ = std::thread([this] { Accept(); });
  }
  ~SheddingWebhook() {
    stop_ = true;
    accepter_.join();
    for (std::thread& t : connections_) t.join();
    close(listen_fd_);
  }

  std::string url() const { return "http://127.0.0.1:" + std::to_string(port_) + "/hook"; }
  int served() const { return served_; }
  int resets() const { return resets_; }
  int peak() const { return peak_; }

 private:
  // Waits up to 100 ms for fd to be readable; false on timeout or stop.
  bool Readable(int fd) {
    pollfd p{fd, POLLIN, 0};
    return !stop_ && poll(&p, 1, 100) == 1;
  }

  void Accept() {
    while (!stop_) {
      if (!Readable(listen_fd_)) continue;
      int fd = accept4(listen_fd_, nullptr, nullptr, SOCK_CLOEXEC);
      if (fd >= 0) connections_.emplace_back([this, fd] { Serve(fd); });
    }
  }

  // Reads one request (headers and a Content-Length body) into *key's
  // last path segment; false if the peer closed or the server stops.
  bool ReadRequest(int fd, std::string* buffer, std::string* key) {
    size_t end;
    while ((end = buffer->find("\r\n\r\n")) == std::string::npos) {
      if (!Readable(fd)) continue;
      char chunk[4096];
      ssize_t n = read(fd, chunk, sizeof(chunk));
      if (n <= 0) return false;
      buffer->append(chunk, n);
    }
    size_t path = buffer->find(' ') + 1;
    size_t path_end = buffer->find(' ', path);
    std::string target = buffer->substr(path, path_end - path);
    *key = target.substr(target.rfind('/') + 1);
    size_t length_at = buffer->find("Content-Length: ");
    size_t length = length_at < end ? std::stoul(buffer->substr(length_at + 16)) : 0;
    while (buffer->size() < end + 4 + length) {
      if (!Readable(fd)) continue;
      char chunk[4096];
      ssize_t n = read(fd, chunk, sizeof(chunk));
      if (n <= 0) return false;
      buffer->append(chunk, n);
    }
    buffer->erase(0, end + 4 + length);
    return true;
  }

  void Serve(int fd) {
    std::string buffer;
    std::string key;
    while (!stop_ && ReadRequest(fd, &buffer, &key)) {
      int now = ++active_;
      if (now > limit_) {
        --active_;
        ++resets_;
        linger reset{1, 0};  // close sends RST
        setsockopt(fd, SOL_SOCKET, SO_LINGER, &reset, sizeof(reset));
        break;
      }
      int peak = peak_;
      while (now > peak && !peak_.compare_exchange_weak(peak, now)) {
      }
      std::this_thread::sleep_for(milliseconds(3));
      std::string body = "{\"key\":\"" + key + "\"}";
      std::string reply = "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: " +
                          std::to_string(body.size()) + "\r\n\r\n" + body;
      --active_;
      ++served_;
      if (write(fd, reply.data(), reply.size()) != static_cast<ssize_t>(reply.size())) break;
    }
    close(fd);
  }

  const int limit_;
  int listen_fd_ = -1;
  int port_ = 0;
  std::atomic<bool> stop_{false};
  std::thread accepter_;
  std::vector<std::thread> connections_;  // the accepter's alone until stop_
  std::atomic<int> active_{0};
  std::atomic<int> peak_{0};
  std::atomic<int> served_{0};
  std::atomic<int> resets_{0};
};

}  // namespace

TEST_CASE("An outage of a few seconds in the middle of a job ends with every input succeeded",
          "[outage]") {
  auto webhook = std::make_unique<Webhook>();
  const int port = webhook->port();
  const std::string url = webhook->url();
  auto slow_echo = [](const Webhook::Call& call, httplib::Response& res) {
    std::this_thread::sleep_for(milliseconds(5));
    Echo(call, res);
  };
  webhook->SetHandler(slow_echo);
  PmmapProcess pmmap;
  // Five attempts would be spent in about a second without the breaker.
  std::string id = CreateJob(pmmap, JobBody(url,
                                            "\"concurrency\":8,\"max_attempts\":2,"
                                            "\"backoff_ms\":50,\"max_backoff_ms\":400"));
  const int n = 2000;
  REQUIRE(Http(pmmap.base_url(), "PUT", "/job/" + id + "/input", MakeInputs(n)).status == 201);
  REQUIRE(Http(pmmap.base_url(), "POST", "/job/" + id + "/complete").status == 200);
  REQUIRE(WaitUntil([&] { return webhook->call_count() >= 200; }));
  webhook.reset();  // the webhook goes down

  rapidjson::Document open = WaitForJob(
      pmmap, id, [](const rapidjson::Document& j) { return Text(j, "circuit") != "closed"; });
  CHECK(open["outage_since"].IsString());
  REQUIRE(open["last_error"].IsObject());
  CHECK_THAT(Text(open["last_error"], "message"), Catch::Contains("connect"));
  CHECK(U64(open, "failed") == 0);
  CHECK(U64(open, "effective_concurrency") == 1);  // one probe at a time
  CHECK_THAT(pmmap.log(), Catch::Contains("circuit") && Catch::Contains("opened"));

  webhook = std::make_unique<Webhook>(port);  // and comes back
  webhook->SetHandler(slow_echo);
  rapidjson::Document done = WaitForJob(pmmap, id, Ended, seconds(60));
  CHECK(Text(done, "state") == "done");
  CHECK(U64(done, "succeeded") == n);
  CHECK(U64(done, "failed") == 0);
  CHECK(Text(done, "circuit") == "closed");
  CHECK_THAT(pmmap.log(), Catch::Contains("closed: the webhook answered again"));
  CHECK(Metric(pmmap, "pmmap_circuit_openings_total") >= 1);
  CHECK(Metric(pmmap, "pmmap_circuit_refused_total") >= 1);
  CHECK(Metric(pmmap, "pmmap_open_circuits") == 0);
}

TEST_CASE("A webhook that sheds load ends with every input succeeded under a lowered limit",
          "[outage]") {
  SheddingWebhook webhook(4);
  PmmapProcess pmmap;
  std::string id = CreateJob(pmmap, JobBody(webhook.url(),
                                            "\"concurrency\":64,\"backoff_ms\":10,"
                                            "\"max_backoff_ms\":100"));
  const int n = 600;
  REQUIRE(Http(pmmap.base_url(), "PUT", "/job/" + id + "/input", MakeInputs(n)).status == 201);
  REQUIRE(Http(pmmap.base_url(), "POST", "/job/" + id + "/complete").status == 200);
  uint64_t lowest = UINT64_MAX;
  rapidjson::Document done = WaitForJob(
      pmmap, id,
      [&](const rapidjson::Document& j) {
        lowest = std::min(lowest, U64(j, "effective_concurrency"));
        return Ended(j);
      },
      seconds(60));
  CHECK(U64(done, "succeeded") == n);
  CHECK(U64(done, "failed") == 0);
  CHECK(webhook.resets() > 0);
  CHECK(webhook.peak() <= 4);
  CHECK(lowest < 64);
  INFO("lowest effective_concurrency seen: " << lowest);
}

TEST_CASE("A webhook that never comes back ends the job after max_outage_ms, saying why",
          "[outage]") {
  RefusingPort refusing;
  PmmapProcess pmmap;
  std::string id = CreateJob(pmmap, JobBody(refusing.url(),
                                            "\"concurrency\":4,\"backoff_ms\":20,"
                                            "\"max_backoff_ms\":100,"
                                            "\"max_outage_ms\":1000"));
  // Before the first input: calls start with it, and the circuit opens
  // (its outage clock starts) only after calls have failed.
  auto start = std::chrono::steady_clock::now();
  REQUIRE(Http(pmmap.base_url(), "PUT", "/job/" + id + "/input", MakeInputs(10)).status == 201);
  REQUIRE(Http(pmmap.base_url(), "POST", "/job/" + id + "/complete").status == 200);
  rapidjson::Document done = WaitForJob(pmmap, id, Ended, seconds(15));
  auto took = std::chrono::steady_clock::now() - start;
  CHECK(took >= milliseconds(1000));
  CHECK(Text(done, "state") == "done");
  CHECK(U64(done, "failed") == 10);
  CHECK(Text(done, "circuit") == "closed");
  HttpResult out = Http(pmmap.base_url(), "GET", "/job/" + id + "/output?format=ndjson");
  std::vector<rapidjson::Document> entries = ParseLines(out.body);
  REQUIRE(entries.size() == 10);
  for (const rapidjson::Document& e : entries) {
    REQUIRE(e.HasMember("error"));
    std::string message = Str(e["error"], "message");
    CHECK_THAT(message, Catch::Contains("1000 ms (max_outage_ms)"));
    CHECK_THAT(message, Catch::Contains("Couldn't connect"));
  }
}

TEST_CASE("A webhook that answers 500 to everything holds the job until max_outage_ms",
          "[outage]") {
  Webhook webhook;
  webhook.SetHandler([](const Webhook::Call&, httplib::Response& res) { res.status = 500; });
  PmmapProcess pmmap;
  std::string id = CreateJob(pmmap, JobBody(webhook.url(),
                                            "\"backoff_ms\":20,"
                                            "\"max_backoff_ms\":100,"
                                            "\"max_outage_ms\":800"));
  REQUIRE(Http(pmmap.base_url(), "PUT", "/job/" + id + "/input", MakeInputs(3)).status == 201);
  REQUIRE(Http(pmmap.base_url(), "POST", "/job/" + id + "/complete").status == 200);
  rapidjson::Document done = WaitForJob(pmmap, id, Ended, seconds(15));
  CHECK(U64(done, "failed") == 3);
  HttpResult out = Http(pmmap.base_url(), "GET", "/job/" + id + "/output?format=ndjson");
  for (const rapidjson::Document& e : ParseLines(out.body)) {
    CHECK_THAT(Str(e["error"], "message"),
               Catch::Contains("max_outage_ms") && Catch::Contains("HTTP 500"));
  }
  // Probes kept coming while it waited, one at a time.
  CHECK(webhook.call_count() > 5);
  CHECK(webhook.peak_in_flight() == 1);
}

TEST_CASE("4xx answers fail at once and never open the circuit", "[outage]") {
  Webhook webhook;
  webhook.SetHandler([](const Webhook::Call&, httplib::Response& res) { res.status = 400; });
  PmmapProcess pmmap;
  std::string id = CreateJob(pmmap, JobBody(webhook.url(), "\"concurrency\":4"));
  REQUIRE(Http(pmmap.base_url(), "PUT", "/job/" + id + "/input", MakeInputs(40)).status == 201);
  REQUIRE(Http(pmmap.base_url(), "POST", "/job/" + id + "/complete").status == 200);
  rapidjson::Document done = WaitForJob(pmmap, id, Ended);
  CHECK(U64(done, "failed") == 40);
  CHECK(webhook.call_count() == 40);  // one attempt each
  CHECK(Text(done, "circuit") == "closed");
  CHECK(done["last_error"].IsNull());
  CHECK(U64(done, "effective_concurrency") == 4);
  CHECK(Metric(pmmap, "pmmap_circuit_openings_total") == 0);
}

TEST_CASE("max_outage_ms 0 restores fast failure, and adaptive false keeps the concurrency",
          "[outage]") {
  RefusingPort refusing;
  PmmapProcess pmmap;
  std::string fast = CreateJob(pmmap, JobBody(refusing.url(),
                                              "\"max_attempts\":2,\"backoff_ms\":1,"
                                              "\"max_outage_ms\":0,"
                                              "\"adaptive\":false,"
                                              "\"concurrency\":4"));
  REQUIRE(Http(pmmap.base_url(), "PUT", "/job/" + fast + "/input", MakeInputs(20)).status == 201);
  REQUIRE(Http(pmmap.base_url(), "POST", "/job/" + fast + "/complete").status == 200);
  rapidjson::Document done = WaitForJob(pmmap, fast, Ended);
  CHECK(U64(done, "failed") == 20);
  CHECK(U64(done, "retries") == 20);  // the second attempt of each
  CHECK(Text(done, "circuit") == "closed");
  CHECK(U64(done, "effective_concurrency") == 4);
  CHECK(done["adaptive"].IsFalse());
  CHECK(U64(done, "max_outage_ms") == 0);

  // The same refusals with adaptive on (and the breaker off) cut the limit.
  std::string adaptive = CreateJob(pmmap, JobBody(refusing.url(),
                                                  "\"max_attempts\":2,"
                                                  "\"backoff_ms\":1,"
                                                  "\"max_outage_ms\":0,"
                                                  "\"concurrency\":4"));
  REQUIRE(Http(pmmap.base_url(), "PUT", "/job/" + adaptive + "/input", MakeInputs(20)).status ==
          201);
  REQUIRE(Http(pmmap.base_url(), "POST", "/job/" + adaptive + "/complete").status == 200);
  done = WaitForJob(pmmap, adaptive, Ended);
  CHECK(U64(done, "failed") == 20);
  CHECK(U64(done, "effective_concurrency") < 4);
}

TEST_CASE("Pause stops calls, resume restarts them, and pause on an ended job is 409", "[outage]") {
  Webhook webhook;
  PmmapProcess pmmap;
  std::string id = CreateJob(pmmap, JobBody(webhook.url(), "\"maxsize\":10"));
  const std::string job = "/job/" + id;
  HttpResult paused = Http(pmmap.base_url(), "POST", job + "/pause");
  REQUIRE(paused.status == 200);
  CHECK(ParseJson(paused.body)["paused"].IsTrue());
  // A paused job still takes inputs while its queue has room...
  REQUIRE(Http(pmmap.base_url(), "PUT", job + "/input", MakeInputs(10)).status == 201);
  // ...and a PUT beyond it stays blocked until the job moves.
  // Asserted on the test's thread, after the join: Catch's are not thread-safe.
  std::atomic<int> blocked_status{0};
  std::thread blocked([&] {
    blocked_status = Http(pmmap.base_url(), "PUT", job + "/input", MakeInputs(5, "more")).status;
  });
  std::this_thread::sleep_for(milliseconds(300));  // a window in which nothing may be sent
  CHECK(webhook.call_count() == 0);
  CHECK(U64(GetJob(pmmap, id), "inputs") == 10);
  CHECK(Http(pmmap.base_url(), "POST", job + "/pause").status == 200);  // harmless to repeat

  HttpResult resumed = Http(pmmap.base_url(), "POST", job + "/resume");
  REQUIRE(resumed.status == 200);
  CHECK(ParseJson(resumed.body)["paused"].IsFalse());
  blocked.join();
  CHECK(blocked_status == 201);
  REQUIRE(Http(pmmap.base_url(), "POST", job + "/complete").status == 200);
  rapidjson::Document done = WaitForJob(pmmap, id, Ended);
  CHECK(U64(done, "succeeded") == 15);
  CHECK(webhook.call_count() == 15);

  RequireError(Http(pmmap.base_url(), "POST", job + "/pause"), 409);
  RequireError(Http(pmmap.base_url(), "POST", job + "/resume"), 409);
  RequireError(Http(pmmap.base_url(), "POST", "/job/nosuch/pause"), 404);
}

TEST_CASE("PATCH changes a running job's settings and refuses bad values, changing nothing",
          "[outage]") {
  Webhook webhook;
  Gate gate;
  webhook.SetHandler([&](const Webhook::Call& call, httplib::Response& res) {
    gate.Wait();
    Echo(call, res);
  });
  PmmapProcess pmmap;
  OpenAtExit open_gate(gate);
  std::string id = CreateJob(pmmap, JobBody(webhook.url(), "\"concurrency\":1"));
  const std::string job = "/job/" + id;
  REQUIRE(Http(pmmap.base_url(), "PUT", job + "/input", MakeInputs(20)).status == 201);
  REQUIRE(WaitUntil([&] { return webhook.in_flight() == 1; }));

  HttpResult changed = Http(pmmap.base_url(), "PATCH", job,
                            "{\"concurrency\":3,\"timeout_ms\":20000,\"max_attempts\":7,"
                            "\"backoff_ms\":5,\"max_backoff_ms\":50,\"rate_per_sec\":1000,"
                            "\"max_outage_ms\":60000,\"adaptive\":false}");
  REQUIRE(changed.status == 200);
  rapidjson::Document j = ParseJson(changed.body);
  CHECK(U64(j, "concurrency") == 3);
  CHECK(U64(j, "timeout_ms") == 20000);
  CHECK(U64(j, "max_attempts") == 7);
  CHECK(U64(j, "max_outage_ms") == 60000);
  CHECK(j["adaptive"].IsFalse());
  CHECK(j["rate_per_sec"].GetDouble() == 1000);
  // The raised ceiling lets more calls out at once.
  CHECK(WaitUntil([&] { return webhook.in_flight() == 3; }));

  const char* const bad[] = {"{\"concurrency\":0}",
                             "{\"url\":\"http://127.0.0.1:1/x\"}",
                             "{\"maxsize\":5}",
                             "{\"max_outage_ms\":-1}",
                             "{\"adaptive\":\"yes\"}",
                             "not json",
                             "{\"timeout_ms\":1,\"timeout_ms\":2}",
                             "[1]"};
  for (const char* body : bad) {
    INFO(body);
    RequireError(Http(pmmap.base_url(), "PATCH", job, body), 400);
  }
  CHECK_THAT(RequireError(Http(pmmap.base_url(), "PATCH", job, "{\"url\":\"http://x/\"}"), 400),
             Catch::Contains("\"url\" cannot be changed"));
  rapidjson::Document after = GetJob(pmmap, id);
  CHECK(U64(after, "concurrency") == 3);
  CHECK(after["adaptive"].IsFalse());
  // null restores a default: no rate limit.
  REQUIRE(Http(pmmap.base_url(), "PATCH", job, "{\"rate_per_sec\":null}").status == 200);
  CHECK(GetJob(pmmap, id)["rate_per_sec"].IsNull());

  gate.Open();
  REQUIRE(Http(pmmap.base_url(), "POST", job + "/complete").status == 200);
  WaitForJob(pmmap, id, Ended);
  RequireError(Http(pmmap.base_url(), "PATCH", job, "{\"concurrency\":2}"), 409);
  RequireError(Http(pmmap.base_url(), "PATCH", "/job/nosuch", "{\"concurrency\":2}"), 404);
}
