// End-to-end tests of the page at / and of its live feeds, against the real
// binary: the page's files are served from the binary and name nothing
// outside it; GET /events and GET /job/{id}/events stream snapshots as a
// `curl -N` reader sees them, end when the job goes or the server stops,
// and are refused with 503 past their bound. The page in a browser is
// test/ui_test.py's (make ui-test).

#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <regex>

#include "test/harness.hpp"

namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;

// One GET on a raw loopback connection, read as it arrives: how `curl -N`
// reads an event stream (no buffering, no end expected).
class RawStream {
 public:
  RawStream(int port, const std::string& path) {
    fd_ = socket(AF_INET, SOCK_STREAM, 0);
    REQUIRE(fd_ >= 0);
    sockaddr_in addr = {};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
    const std::string request = "GET " + path + " HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n";
    REQUIRE(write(fd_, request.data(), request.size()) == static_cast<ssize_t>(request.size()));
  }
  ~RawStream() { Close(); }
  RawStream(const RawStream&) = delete;
  RawStream& operator=(const RawStream&) = delete;

  // Reads until what was received from byte `from` on contains needle, or
  // timeout passes, or the server closes; returns whether needle came.
  // received() has it all.
  bool ReadUntil(const std::string& needle, milliseconds timeout = seconds(10), size_t from = 0) {
    auto deadline = std::chrono::steady_clock::now() + timeout;
    while (received_.find(needle, from) == std::string::npos) {
      auto left =
          std::chrono::duration_cast<milliseconds>(deadline - std::chrono::steady_clock::now());
      if (left.count() <= 0 || closed_) return false;
      pollfd p = {fd_, POLLIN, 0};
      if (poll(&p, 1, static_cast<int>(left.count())) <= 0) continue;
      char buf[65536];
      ssize_t n = read(fd_, buf, sizeof(buf));
      if (n <= 0) {
        closed_ = true;
        continue;
      }
      received_.append(buf, static_cast<size_t>(n));
    }
    return true;
  }
  // Reads until the server closes the connection or timeout passes.
  bool ReadToEnd(milliseconds timeout) {
    ReadUntil("\x01never\x02", timeout);
    return closed_;
  }
  void Close() {
    if (fd_ >= 0) close(fd_);
    fd_ = -1;
  }
  const std::string& received() const { return received_; }
  size_t Count(const std::string& needle) const {
    size_t n = 0;
    for (size_t at = received_.find(needle); at != std::string::npos;
         at = received_.find(needle, at + 1)) {
      ++n;
    }
    return n;
  }

 private:
  int fd_ = -1;
  bool closed_ = false;
  std::string received_;
};

}  // namespace

TEST_CASE("GET / serves the page from the binary, naming nothing outside it", "[page]") {
  PmmapProcess pmmap;
  HttpResult page = Http(pmmap.base_url(), "GET", "/");
  REQUIRE(page.status == 200);
  REQUIRE(HeaderOf(page.headers, "Content-Type").find("text/html") == 0);
  REQUIRE(page.body.find("<!doctype html>") == 0);
  REQUIRE(HeaderOf(page.headers, "Content-Security-Policy").find("default-src 'self'") == 0);
  // The page, its script and its style: every reference stays on this server.
  const std::regex external(
      R"((src|href|action)\s*=\s*["']?\s*(https?:)?//|url\(\s*["']?(https?:)?//|@import)",
      std::regex::icase);
  for (const std::string path : {"/", "/page/app.js", "/page/style.css"}) {
    HttpResult r = Http(pmmap.base_url(), "GET", path);
    INFO(path);
    REQUIRE(r.status == 200);
    REQUIRE(r.body.size() > 100);
    REQUIRE_FALSE(std::regex_search(r.body, external));
    REQUIRE(page.body.find(path.substr(1)) != std::string::npos);  // the page loads it
  }
  REQUIRE(HeaderOf(Http(pmmap.base_url(), "GET", "/page/app.js").headers, "Content-Type")
              .find("javascript") != std::string::npos);
  RequireError(Http(pmmap.base_url(), "GET", "/page/nothing.js"), 404);
  RequireError(Http(pmmap.base_url(), "POST", "/"), 405);
}

TEST_CASE("GET /events streams a snapshot at once, then each change, as curl -N reads it",
          "[page]") {
  Webhook hook;
  PmmapProcess pmmap;
  RawStream events(pmmap.port(), "/events");
  REQUIRE(events.ReadUntil("data: {\"total\":0,\"offset\":0,\"jobs\":[]}\n\n"));
  REQUIRE(events.received().find("Content-Type: text/event-stream") != std::string::npos);
  std::string id = CreateJob(pmmap, JobBody(hook.url()));
  REQUIRE(events.ReadUntil("\"id\":\"" + id + "\""));
  REQUIRE(events.received().find("\"total\":1") != std::string::npos);
  REQUIRE(Http(pmmap.base_url(), "PUT", "/job/" + id + "/input", MakeInputs(3)).status == 201);
  REQUIRE(Http(pmmap.base_url(), "POST", "/job/" + id + "/complete").status == 200);
  REQUIRE(events.ReadUntil("\"state\":\"done\",\"inputs\":3,\"outputs\":3"));
  // The list shows the stats' summary beside each job: the calls of the
  // last whole seconds, which leave that window a few seconds later.
  const size_t done_at = events.received().size();
  REQUIRE(events.ReadUntil("\"stats\":{\"recent_calls_per_sec\":0}}]}", seconds(15), done_at));
  // Nothing changes now: no new snapshot comes (the keepalive is 15 s away).
  const size_t snapshots = events.Count("data: ");
  REQUIRE_FALSE(events.ReadUntil("\x01never\x02", milliseconds(2500)));
  REQUIRE(events.Count("data: ") == snapshots);
  // Paging: newest first, with the total.
  std::string older = CreateJob(pmmap, JobBody(hook.url()));
  RawStream page(pmmap.port(), "/events?offset=1&limit=1");
  REQUIRE(page.ReadUntil("\n\n"));
  REQUIRE(page.received().find("\"total\":2,\"offset\":1,\"jobs\":[{\"id\":\"" + id) !=
          std::string::npos);
  RequireError(Http(pmmap.base_url(), "GET", "/events?limit=100000"), 400);
  RequireError(Http(pmmap.base_url(), "GET", "/events?page=2"), 400);
  (void)older;
}

TEST_CASE("GET /job/{id}/events shows the job with its stats, and ends when it is deleted",
          "[page]") {
  Webhook hook;
  hook.SetHandler([](const Webhook::Call& call, httplib::Response& res) {
    if (call.key == "bad") {
      res.status = 422;
      return;
    }
    Echo(call, res);
  });
  PmmapProcess pmmap;
  std::string id = CreateJob(pmmap, JobBody(hook.url()));
  RawStream events(pmmap.port(), "/job/" + id + "/events");
  REQUIRE(events.ReadUntil("\n\n"));
  REQUIRE(events.received().find("data: {\"job\":{\"id\":\"" + id) != std::string::npos);
  REQUIRE(Http(pmmap.base_url(), "PUT", "/job/" + id + "/input",
               R"([{"key":"good","value":1},{"key":"bad","value":2}])")
              .status == 201);
  REQUIRE(events.ReadUntil("\"recent_failures\":[{\"key\":\"bad\",\"status\":422"));
  REQUIRE(events.received().find("\"message\":\"the webhook answered HTTP 422\",\"count\":1") !=
          std::string::npos);
  rapidjson::Document stats =
      ParseJson(Http(pmmap.base_url(), "GET", "/job/" + id + "/stats").body);
  REQUIRE(U64(stats["latency"], "calls") == 2);
  REQUIRE(Http(pmmap.base_url(), "DELETE", "/job/" + id).status == 200);
  REQUIRE(events.ReadUntil("data: {\"gone\":true}\n\n"));
  REQUIRE(events.ReadToEnd(seconds(5)));
  RequireError(Http(pmmap.base_url(), "GET", "/job/" + id + "/events"), 404);
  RequireError(Http(pmmap.base_url(), "GET", "/job/" + id + "/stats"), 404);
}

TEST_CASE("event streams past the bound are refused with 503, and a closed one frees its place",
          "[page]") {
  // The bound is half of --http-threads, at most 256: here 4.
  PmmapProcess pmmap({"--http-threads", "8"});
  std::vector<std::unique_ptr<RawStream>> streams;
  for (int i = 0; i < 4; ++i) {
    streams.emplace_back(new RawStream(pmmap.port(), "/events"));
    REQUIRE(streams.back()->ReadUntil("data: "));
  }
  std::string error = RequireError(Http(pmmap.base_url(), "GET", "/events"), 503);
  REQUIRE(error.find("too many event streams") != std::string::npos);
  // Quick requests still get through.
  REQUIRE(Http(pmmap.base_url(), "GET", "/healthz").status == 200);
  // A caller that hangs up gives its place back within a second or two.
  streams[0]->Close();
  REQUIRE(WaitUntil(
      [&] {
        RawStream again(pmmap.port(), "/events");
        return again.ReadUntil("data: ", milliseconds(500));
      },
      seconds(10), milliseconds(200)));
}

TEST_CASE("a stop signal ends open event streams at once", "[page]") {
  PmmapProcess pmmap;
  RawStream events(pmmap.port(), "/events");
  REQUIRE(events.ReadUntil("data: "));
  auto start = std::chrono::steady_clock::now();
  REQUIRE(pmmap.Stop(SIGTERM, seconds(10)) == 0);
  REQUIRE(std::chrono::steady_clock::now() - start < seconds(3));
  REQUIRE(events.ReadToEnd(seconds(2)));
}
