// Tests of what makes pmmap safe to expose: the API token, the address
// rules for webhooks and callbacks (NetRules, unit and end to end), and an
// API that idle or slow connections cannot stall (ApiServer).

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cstdio>
#include <string>
#include <thread>

#include "net_rules.hpp"
#include "test/harness.hpp"

namespace {

using std::chrono::milliseconds;
using std::chrono::seconds;
using SteadyClock = std::chrono::steady_clock;

const char kToken[] = "s3cret-token";

httplib::Headers Bearer(const std::string& token) { return {{"Authorization", "Bearer " + token}}; }

// A TCP connection to 127.0.0.1:port, closed when the object goes.
class RawConnection {
 public:
  explicit RawConnection(int port) {
    fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    REQUIRE(fd_ >= 0);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<uint16_t>(port));
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    REQUIRE(connect(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  }
  ~RawConnection() { close(fd_); }
  int fd() const { return fd_; }
  RawConnection(const RawConnection&) = delete;
  RawConnection& operator=(const RawConnection&) = delete;

  void Send(const std::string& bytes) {
    REQUIRE(send(fd_, bytes.data(), bytes.size(), MSG_NOSIGNAL) ==
            static_cast<ssize_t>(bytes.size()));
  }
  // Reads until the server closes the connection or timeout passes; sets
  // *closed to whether it closed.
  std::string ReadUntilClosed(milliseconds timeout, bool* closed) {
    std::string got;
    auto deadline = SteadyClock::now() + timeout;
    *closed = false;
    for (;;) {
      auto left = std::chrono::duration_cast<milliseconds>(deadline - SteadyClock::now());
      pollfd p = {fd_, POLLIN, 0};
      if (left.count() <= 0 || poll(&p, 1, static_cast<int>(left.count())) <= 0) return got;
      char buf[4096];
      ssize_t n = recv(fd_, buf, sizeof(buf), 0);
      if (n <= 0) {
        *closed = true;
        return got;
      }
      got.append(buf, static_cast<size_t>(n));
    }
  }

 private:
  int fd_ = -1;
};

// Raises this process's open-file limit to at least files (children
// inherit it), or fails the test if the hard limit is lower.
void NeedOpenFiles(rlim_t files) {
  rlimit limit;
  REQUIRE(getrlimit(RLIMIT_NOFILE, &limit) == 0);
  if (limit.rlim_cur >= files) return;
  INFO("RLIMIT_NOFILE hard limit " << limit.rlim_max << ", need " << files);
  REQUIRE(limit.rlim_max >= files);
  limit.rlim_cur = files;
  REQUIRE(setrlimit(RLIMIT_NOFILE, &limit) == 0);
}

// Runs one job of a single input against url and returns its output entry.
rapidjson::Document RunOneInput(const PmmapProcess& pmmap, const std::string& url) {
  std::string id = CreateJob(pmmap, JobBody(url, "\"max_attempts\":5,\"backoff_ms\":10"));
  httplib::Headers none;
  REQUIRE(Http(pmmap.base_url(), "PUT", "/job/" + id + "/input", "[{\"key\":\"k\",\"value\":1}]")
              .status == 201);
  REQUIRE(Http(pmmap.base_url(), "POST", "/job/" + id + "/complete").status == 200);
  HttpResult out = Http(pmmap.base_url(), "GET", "/job/" + id + "/output", "", none, seconds(20));
  INFO("output: " << out.body);
  REQUIRE(out.status == 200);
  rapidjson::Document doc = ParseJson(out.body);
  REQUIRE(doc.IsArray());
  REQUIRE(doc.Size() == 1);
  rapidjson::Document entry;
  entry.CopyFrom(doc[0], entry.GetAllocator());
  return entry;
}

bool Contains(const std::string& text, const std::string& part) {
  return text.find(part) != std::string::npos;
}

}  // namespace

// ---------------------------------------------------------------------------
// NetRules, as a unit.

TEST_CASE("ParseCidr reads IPv4 and IPv6 nets and bare addresses, and says what is wrong",
          "[security]") {
  Cidr net;
  std::string error;
  REQUIRE(ParseCidr("10.0.0.0/8", &net, &error));
  CHECK(net.family == AF_INET);
  CHECK(net.prefix == 8);
  REQUIRE(ParseCidr("fe80::/10", &net, &error));
  CHECK(net.family == AF_INET6);
  CHECK(net.prefix == 10);
  REQUIRE(ParseCidr("192.0.2.7", &net, &error));
  CHECK(net.prefix == 32);
  REQUIRE(ParseCidr("::1", &net, &error));
  CHECK(net.prefix == 128);
  REQUIRE(ParseCidr("0.0.0.0/0", &net, &error));
  CHECK(net.prefix == 0);
  // An IPv4-mapped net is the IPv4 net it maps.
  REQUIRE(ParseCidr("::ffff:169.254.0.0/112", &net, &error));
  CHECK(net.family == AF_INET);
  CHECK(net.prefix == 16);

  const std::vector<std::pair<std::string, std::string>> bad = {
      {"", "not an IPv4 or IPv6"},
      {"junk", "not an IPv4 or IPv6"},
      {"10.0.0.0/", "prefix length"},
      {"10.0.0.0/33", "0 to 32"},
      {"fe80::/129", "0 to 128"},
      {"10.0.0.0/-1", "prefix length"},
      {"10.0.0.0/8x", "prefix length"},
      {"10.0.0/8", "not an IPv4 or IPv6"},
      {"10.0.0.1/8", "did you mean 10.0.0.0/8"},
      {"fe80::1/10", "did you mean fe80::/10"},
      {"10.0.0.0/8/8", "prefix length"},
      {" 10.0.0.0/8", "not an IPv4 or IPv6"},
  };
  for (const auto& b : bad) {
    INFO("text \"" << b.first << "\"");
    error.clear();
    CHECK_FALSE(ParseCidr(b.first, &net, &error));
    CHECK(Contains(error, b.second));
  }
}

TEST_CASE(
    "NetRules deny link-local by default, judge mapped addresses as IPv4, and let allowed "
    "nets win",
    "[security]") {
  NetRules rules;
  NetJudgement j;
  REQUIRE(rules.JudgeLiteral("169.254.169.254", &j));
  CHECK_FALSE(j.allowed);
  CHECK(j.Reason() == "address 169.254.169.254 is in denied net 169.254.0.0/16");
  REQUIRE(rules.JudgeLiteral("::ffff:169.254.169.254", &j));
  CHECK_FALSE(j.allowed);
  CHECK(j.address == "169.254.169.254");
  REQUIRE(rules.JudgeLiteral("fe80::1", &j));
  CHECK_FALSE(j.allowed);
  CHECK(j.rule == "fe80::/10");
  for (const char* open : {"127.0.0.1", "10.1.2.3", "::1", "169.253.255.255", "169.255.0.0",
                           "fec0::1", "2001:db8::1"}) {
    INFO(open);
    REQUIRE(rules.JudgeLiteral(open, &j));
    CHECK(j.allowed);
  }
  CHECK_FALSE(rules.JudgeLiteral("localhost", &j));
  CHECK_FALSE(rules.JudgeLiteral("[::1]", &j));

  Cidr net;
  std::string error;
  REQUIRE(ParseCidr("127.0.0.0/8", &net, &error));
  rules.Deny(net);
  REQUIRE(ParseCidr("127.0.0.1", &net, &error));
  rules.Allow(net);
  REQUIRE(rules.JudgeLiteral("127.0.0.1", &j));
  CHECK(j.allowed);
  CHECK(j.rule == "127.0.0.1");
  REQUIRE(rules.JudgeLiteral("127.0.0.2", &j));
  CHECK_FALSE(j.allowed);
  REQUIRE(rules.JudgeLiteral("::ffff:127.0.0.2", &j));
  CHECK_FALSE(j.allowed);

  // A sockaddr is judged the same way.
  sockaddr_in6 mapped{};
  mapped.sin6_family = AF_INET6;
  REQUIRE(inet_pton(AF_INET6, "::ffff:169.254.1.1", &mapped.sin6_addr) == 1);
  j = rules.Judge(reinterpret_cast<const sockaddr*>(&mapped));
  CHECK_FALSE(j.allowed);
  CHECK(j.rule == "169.254.0.0/16");
  sockaddr unix_family{};
  unix_family.sa_family = AF_UNIX;
  CHECK_FALSE(rules.Judge(&unix_family).allowed);
}

TEST_CASE("CheckUrlAddress names the field, the address and the rule of a denied literal",
          "[security]") {
  NetRules rules;
  CHECK(CheckUrlAddress(rules, "url", "http://169.254.169.254/latest/meta-data") ==
        "url: address 169.254.169.254 is in denied net 169.254.0.0/16");
  CHECK(CheckUrlAddress(rules, "callback_url", "http://[fe80::1%25eth0]:81/x") ==
        "callback_url: address fe80::1 is in denied net fe80::/10");
  CHECK(CheckUrlAddress(rules, "url", "http://example.com/x").empty());
  CHECK(CheckUrlAddress(rules, "url", "http://10.0.0.1/x").empty());
}

// ---------------------------------------------------------------------------
// The API token.

TEST_CASE(
    "with --api-token every route but /healthz needs the token, and a refusal changes "
    "nothing",
    "[security]") {
  Webhook hook;
  PmmapProcess pmmap({"--api-token", kToken});
  const std::string base = pmmap.base_url();
  const std::string body = JobBody(hook.url());
  struct Route {
    const char* method;
    std::string path;
  };
  const std::vector<Route> routes = {
      {"POST", "/job"},          {"GET", "/jobs"},          {"GET", "/job/x"},
      {"DELETE", "/job/x"},      {"PUT", "/job/x/input"},   {"POST", "/job/x/complete"},
      {"POST", "/job/x/cancel"}, {"GET", "/job/x/output"},  {"GET", "/metrics"},
      {"GET", "/no/such/path"},  {"POST", "/no/such/path"}, {"PATCH", "/jobs"},
      {"GET", "/healthz/"},      {"GET", "/job/x/events"},  {"GET", "/job/x/stats"},
  };
  for (const Route& route : routes) {
    INFO(route.method << " " << route.path);
    HttpResult missing = Http(base, route.method, route.path, body);
    CHECK(Contains(RequireError(missing, 401), "Authorization"));
    CHECK(HeaderOf(missing.headers, "WWW-Authenticate") == "Bearer");
    HttpResult wrong = Http(base, route.method, route.path, body, Bearer("s3cret-tokeN"));
    CHECK(Contains(RequireError(wrong, 401), "wrong API token"));
    HttpResult basic =
        Http(base, route.method, route.path, body, {{"Authorization", "Basic czNjcmV0LXRva2Vu"}});
    CHECK(Contains(RequireError(basic, 401), "Bearer"));
    HttpResult right = Http(base, route.method, route.path, body, Bearer(kToken));
    CHECK(right.status != 401);
    CHECK(right.status != 0);
  }
  // /healthz needs nothing, nor the web page's shell and its files, which
  // ask for the token; the page's event stream does (a stream, so only
  // refused here).
  CHECK(Http(base, "GET", "/healthz").status == 200);
  CHECK(Http(base, "GET", "/").status == 200);
  CHECK(Http(base, "GET", "/page/app.js").status == 200);
  CHECK(Http(base, "GET", "/page/nothing.js").status == 404);
  CHECK(Contains(RequireError(Http(base, "GET", "/events"), 401), "Authorization"));
  // Of all those POST /job, only the one with the token made a job.
  HttpResult jobs = Http(base, "GET", "/jobs", "", Bearer(kToken));
  REQUIRE(jobs.status == 200);
  CHECK(ParseJson(jobs.body).Size() == 1);
  CHECK(hook.call_count() == 0);
}

TEST_CASE(
    "a refused request with a body closes its connection, so its body is never read as a "
    "request",
    "[security]") {
  PmmapProcess pmmap({"--api-token", kToken});
  RawConnection c(pmmap.port());
  const std::string smuggled = "GET /jobs HTTP/1.1\r\nHost: x\r\n\r\n";
  c.Send("POST /job HTTP/1.1\r\nHost: x\r\nContent-Length: " + std::to_string(smuggled.size()) +
         "\r\n\r\n" + smuggled);
  bool closed = false;
  std::string reply = c.ReadUntilClosed(seconds(5), &closed);
  INFO(reply);
  CHECK(closed);
  CHECK(reply.rfind("HTTP/1.1 401", 0) == 0);
  CHECK(reply.find("HTTP/1.1", 5) == std::string::npos);  // one reply, not two
}

namespace {

// A chunked body of size bytes in chunks of chunk bytes, with its last chunk.
std::string ChunkedBody(size_t size, size_t chunk) {
  std::string body;
  for (size_t at = 0; at < size; at += chunk) {
    size_t n = std::min(chunk, size - at);
    char line[16];
    snprintf(line, sizeof(line), "%zx\r\n", n);
    body += line + std::string(n, 'x') + "\r\n";
  }
  return body + "0\r\n\r\n";
}

}  // namespace

// The rest of a refused body is skipped to keep the connection; when it is
// large, the reply says Connection: close and the connection closes.
TEST_CASE("a body refused with 413 keeps its connection, or closes it when its rest is large",
          "[security]") {
  PmmapProcess pmmap({"--max-body", "1000"});
  const std::string head = "POST /job HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
  SECTION("the rest comes later, in pieces") {
    RawConnection c(pmmap.port());
    std::string body = ChunkedBody(3000, 600);
    c.Send(head + body.substr(0, 1300));
    std::this_thread::sleep_for(milliseconds(200));
    c.Send(body.substr(1300, 1000));
    std::this_thread::sleep_for(milliseconds(200));
    c.Send(body.substr(2300) + "GET /jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    bool closed = false;
    std::string reply = c.ReadUntilClosed(seconds(10), &closed);
    INFO(reply);
    CHECK(closed);
    CHECK(reply.rfind("HTTP/1.1 413", 0) == 0);
    size_t second = reply.find("HTTP/1.1", 5);
    REQUIRE(second != std::string::npos);
    CHECK(reply.compare(second, 12, "HTTP/1.1 200") == 0);
    CHECK(reply.find("HTTP/1.1", second + 5) == std::string::npos);
  }
  SECTION("the rest is past kMaxDrainBytes") {
    RawConnection c(pmmap.port());
    std::string request = head + ChunkedBody(200 << 10, 4096) +
                          "GET /jobs HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
    // The server may close before taking it all; what it answers is what counts.
    ssize_t ignored = send(c.fd(), request.data(), request.size(), MSG_NOSIGNAL);
    (void)ignored;
    bool closed = false;
    std::string reply = c.ReadUntilClosed(seconds(10), &closed);
    INFO(reply.substr(0, 300));
    CHECK(closed);
    CHECK(reply.rfind("HTTP/1.1 413", 0) == 0);
    CHECK(reply.find("\r\nConnection: close\r\n") != std::string::npos);
    CHECK(reply.find("HTTP/1.1", 5) == std::string::npos);  // the GET was never read
  }
  // Nothing was created, and the server still answers.
  CHECK(ParseJson(Http(pmmap.base_url(), "GET", "/jobs").body).Size() == 0);
}

TEST_CASE("the token may come from a file or the environment; --metrics-open opens /metrics only",
          "[security]") {
  TempDir dir;
  const std::string file = dir.File("token");
  {
    FILE* f = fopen(file.c_str(), "w");
    REQUIRE(f != nullptr);
    fprintf(f, "%s\n", kToken);
    fclose(f);
  }
  SECTION("from a file, its newline dropped") {
    PmmapProcess pmmap({"--api-token-file", file});
    CHECK(Http(pmmap.base_url(), "GET", "/jobs").status == 401);
    CHECK(Http(pmmap.base_url(), "GET", "/jobs", "", Bearer(kToken)).status == 200);
    CHECK(Http(pmmap.base_url(), "GET", "/metrics").status == 401);
  }
  SECTION("from PMMAP_API_TOKEN, with --metrics-open") {
    PmmapProcess pmmap({"--metrics-open"}, {{"PMMAP_API_TOKEN", kToken}});
    CHECK(Http(pmmap.base_url(), "GET", "/jobs").status == 401);
    CHECK(Http(pmmap.base_url(), "GET", "/jobs", "", Bearer(kToken)).status == 200);
    CHECK(Http(pmmap.base_url(), "GET", "/metrics").status == 200);
  }
  SECTION("an empty or missing file is a flag error") {
    const std::string empty = dir.File("empty");
    FILE* f = fopen(empty.c_str(), "w");
    REQUIRE(f != nullptr);
    fputs("\n", f);
    fclose(f);
    for (const std::string& path : {empty, dir.File("missing")}) {
      INFO(path);
      int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
      pid_t pid = Spawn({PmmapBinary(), "--listen", "127.0.0.1:0", "--api-token-file", path}, {},
                        devnull, devnull);
      close(devnull);
      CHECK(WaitExit(pid, seconds(10)) == 2);
    }
  }
}

TEST_CASE("listening beyond loopback without a token logs a warning", "[security]") {
  // PmmapProcess listens on loopback; these listen on every address.
  auto log_of = [](const std::vector<std::string>& extra) {
    TempDir dir;
    const std::string path = dir.File("log");
    int log_fd = open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC, 0600);
    REQUIRE(log_fd >= 0);
    std::vector<std::string> args = {PmmapBinary(), "--listen", "0.0.0.0:0"};
    args.insert(args.end(), extra.begin(), extra.end());
    pid_t pid = Spawn(args, {}, log_fd, log_fd);
    close(log_fd);
    CHECK(WaitUntil([&] { return Contains(ReadFile(path), "listening on"); }));
    kill(pid, SIGTERM);
    CHECK(WaitExit(pid, seconds(10)) == 0);
    return ReadFile(path);
  };
  CHECK(Contains(log_of({}), "warning: listening on 0.0.0.0 without --api-token"));
  CHECK_FALSE(Contains(log_of({"--api-token", kToken}), "warning"));
  PmmapProcess loopback;
  CHECK_FALSE(Contains(loopback.log(), "warning"));
}

// ---------------------------------------------------------------------------
// Address rules, end to end.

TEST_CASE("POST /job refuses a denied IP literal in url or callback_url, naming address and rule",
          "[security]") {
  Webhook hook;
  PmmapProcess pmmap({"--deny-net", "127.0.0.0/8"});
  const std::string base = pmmap.base_url();
  struct Case {
    std::string body;
    std::string message;
  };
  const std::vector<Case> cases = {
      {JobBody("http://169.254.169.254/latest"),
       "url: address 169.254.169.254 is in denied net 169.254.0.0/16"},
      {JobBody("http://[::ffff:169.254.169.254]/x"),
       "url: address 169.254.169.254 is in denied net 169.254.0.0/16"},
      {JobBody("http://[fe80::1]/x"), "url: address fe80::1 is in denied net fe80::/10"},
      {JobBody("http://8.8.8.8/x", "\"callback_url\":\"http://169.254.1.1/cb\""),
       "callback_url: address 169.254.1.1 is in denied net 169.254.0.0/16"},
      // Odd spellings of 127.0.0.1, as libcurl reads them.
      {JobBody("http://2130706433:" + std::to_string(hook.port()) + "/"),
       "url: address 127.0.0.1 is in denied net 127.0.0.0/8"},
      {JobBody("http://127.1:" + std::to_string(hook.port()) + "/"),
       "url: address 127.0.0.1 is in denied net 127.0.0.0/8"},
      {JobBody("http://0x7f.0.0.1/"), "url: address 127.0.0.1 is in denied net 127.0.0.0/8"},
  };
  for (const Case& c : cases) {
    INFO(c.body);
    CHECK(Contains(RequireError(Http(base, "POST", "/job", c.body), 400), c.message));
  }
  CHECK(ParseJson(Http(base, "GET", "/jobs").body).Size() == 0);
  CHECK(hook.call_count() == 0);
}

TEST_CASE("a host name that resolves to denied addresses fails at once, without a call",
          "[security]") {
  Webhook hook;
  PmmapProcess pmmap({"--deny-net", "127.0.0.0/8", "--deny-net", "::1/128"});
  const std::string url = "http://localhost:" + std::to_string(hook.port()) + "/hook";
  rapidjson::Document entry = RunOneInput(pmmap, url);
  INFO(Json(entry));
  REQUIRE(entry.HasMember("error"));
  CHECK(U64(entry, "attempts") == 1);
  std::string message = Text(entry["error"], "message");
  CHECK(Contains(message, "is in denied net"));
  CHECK((Contains(message, "127.0.0.1") || Contains(message, "::1")));
  CHECK(hook.call_count() == 0);
  // The job's counters say the same: one failure, no retry.
  HttpResult jobs = Http(pmmap.base_url(), "GET", "/jobs");
  rapidjson::Document list = ParseJson(jobs.body);
  REQUIRE(list.Size() == 1);
  CHECK(U64(list[0], "failed") == 1);
  CHECK(U64(list[0], "retries") == 0);
}

TEST_CASE("--allow-net lets calls through inside a denied net; PMMAP_DENY_NET lists add",
          "[security]") {
  Webhook hook;
  SECTION("flags") {
    PmmapProcess pmmap({"--deny-net", "127.0.0.0/8", "--allow-net", "127.0.0.1/32"});
    rapidjson::Document entry = RunOneInput(pmmap, hook.url());
    INFO(Json(entry));
    CHECK(entry.HasMember("value"));
    CHECK(hook.call_count() == 1);
  }
  SECTION("variables, comma-separated") {
    PmmapProcess pmmap({}, {{"PMMAP_DENY_NET", "10.0.0.0/8,127.0.0.0/8"}});
    RequireError(Http(pmmap.base_url(), "POST", "/job", JobBody(hook.url())), 400);
    RequireError(Http(pmmap.base_url(), "POST", "/job", JobBody("http://10.1.1.1/")), 400);
    CHECK(hook.call_count() == 0);
  }
  SECTION("a bad net is a flag error") {
    for (const char* bad : {"10.0.0.1/8", "nonsense", "10.0.0.0/40"}) {
      INFO(bad);
      int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
      pid_t pid = Spawn({PmmapBinary(), "--listen", "127.0.0.1:0", "--deny-net", bad}, {}, devnull,
                        devnull);
      close(devnull);
      CHECK(WaitExit(pid, seconds(10)) == 2);
    }
  }
}

TEST_CASE("redirects are not followed: a 3xx is a final failure", "[security]") {
  Webhook target;
  Webhook redirector;
  redirector.SetHandler([&target](const Webhook::Call&, httplib::Response& res) {
    res.status = 302;
    res.set_header("Location", target.url("/elsewhere"));
  });
  PmmapProcess pmmap;
  rapidjson::Document entry = RunOneInput(pmmap, redirector.url());
  INFO(Json(entry));
  REQUIRE(entry.HasMember("error"));
  CHECK(U64(entry["error"], "status") == 302);
  CHECK(target.call_count() == 0);
}

// ---------------------------------------------------------------------------
// Idle and slow connections.

TEST_CASE("1,500 idle and 300 half-sent connections leave /healthz answering within a second",
          "[security]") {
  constexpr int kIdle = 1500;
  constexpr int kHalf = 300;
  // This process holds the client ends, pmmap (which inherits the limit)
  // the others.
  NeedOpenFiles(kIdle + kHalf + 1024);
  PmmapProcess pmmap({"--max-connections", "4000"});
  std::vector<std::unique_ptr<RawConnection>> held;
  for (int i = 0; i < kIdle + kHalf; ++i) {
    held.emplace_back(new RawConnection(pmmap.port()));
    if (i >= kIdle) held.back()->Send("GET /healthz HTTP/1.1\r\nHost: x\r\n");
  }
  // Every connection has been accepted by pmmap before the probes.
  REQUIRE(WaitUntil(
      [&] {
        int accepted = 0;
        for (const TcpSocket& s : TcpSockets()) {
          accepted += s.local == LoopbackAddress(pmmap.port()) && s.state == "01" && s.inode != "0";
        }
        return accepted >= kIdle + kHalf;
      },
      seconds(30), milliseconds(50)));
  for (int probe = 0; probe < 3; ++probe) {
    auto start = SteadyClock::now();
    HttpResult r = Http(pmmap.base_url(), "GET", "/healthz", "", {}, seconds(10));
    auto took = std::chrono::duration_cast<milliseconds>(SteadyClock::now() - start);
    INFO("probe " << probe << " took " << took.count() << " ms");
    CHECK(r.status == 200);
    CHECK(took < milliseconds(1000));
  }
}

TEST_CASE("connections past --max-connections are answered 503 and closed, not queued",
          "[security]") {
  PmmapProcess pmmap({"--max-connections", "4"});
  std::vector<std::unique_ptr<RawConnection>> idle;
  for (int i = 0; i < 4; ++i) idle.emplace_back(new RawConnection(pmmap.port()));
  // Once pmmap has taken all four, the next is refused at once.
  HttpResult refused;
  REQUIRE(WaitUntil(
      [&] {
        refused = Http(pmmap.base_url(), "GET", "/healthz", "", {}, seconds(5));
        return refused.status == 503;
      },
      seconds(5), milliseconds(50)));
  CHECK(Contains(RequireError(refused, 503), "--max-connections"));
  auto start = SteadyClock::now();
  RawConnection past(pmmap.port());
  past.Send("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
  bool closed = false;
  std::string reply = past.ReadUntilClosed(seconds(3), &closed);
  CHECK(closed);
  CHECK(SteadyClock::now() - start < milliseconds(1000));
  // With the idle ones gone, requests are served again, and /metrics
  // counts the refusals.
  idle.clear();
  HttpResult metrics;
  REQUIRE(WaitUntil(
      [&] {
        metrics = Http(pmmap.base_url(), "GET", "/metrics", "", {}, seconds(5));
        return metrics.status == 200;
      },
      seconds(5), milliseconds(50)));
  CHECK(Contains(metrics.body, "pmmap_api_connections 1\n"));  // this request's own
  CHECK_FALSE(Contains(metrics.body, "pmmap_api_connections_refused_total 0\n"));
}

TEST_CASE("a client sending its headers a byte at a time is dropped at the header deadline",
          "[security]") {
  PmmapProcess pmmap;
  RawConnection slow(pmmap.port());
  const std::string request =
      "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + std::string(200, 'p') + "\r\n\r\n";
  auto start = SteadyClock::now();
  bool closed = false;
  for (size_t i = 0; i < request.size(); ++i) {
    if (send(slow.fd(), &request[i], 1, MSG_NOSIGNAL) != 1) break;
    pollfd p = {slow.fd(), POLLIN, 0};
    if (poll(&p, 1, 50) > 0) break;  // the server closed it (or, wrongly, answered)
  }
  std::string reply = slow.ReadUntilClosed(seconds(2), &closed);
  auto took = std::chrono::duration_cast<milliseconds>(SteadyClock::now() - start);
  INFO("closed after " << took.count() << " ms; reply: " << reply);
  CHECK(closed);
  CHECK(reply.empty());
  CHECK(took >= milliseconds(4000));  // the deadline is 5 s from the accept
  CHECK(took < milliseconds(8000));
}

TEST_CASE("long request lines and Range headers are bounded, and the server survives them",
          "[security]") {
  PmmapProcess pmmap;
  // Within the bound: answered, on a small stack.
  CHECK(Http(pmmap.base_url(), "GET", "/" + std::string(980, 'a')).status == 404);
  std::string ranges = "bytes=0-1";
  while (ranges.size() < 900) ranges += ",0-1";
  CHECK(Http(pmmap.base_url(), "GET", "/healthz", "", {{"Range", ranges}}).status != 0);
  // Past it: the connection is closed unanswered.
  for (const std::string& request :
       {"GET /" + std::string(8000, 'a') + " HTTP/1.1\r\nHost: x\r\n\r\n",
        "GET /healthz HTTP/1.1\r\nRange: bytes=0-1" + std::string(8000, ',') + "\r\n\r\n"}) {
    RawConnection c(pmmap.port());
    c.Send(request);
    bool closed = false;
    std::string reply = c.ReadUntilClosed(seconds(5), &closed);
    CHECK(closed);
    CHECK(reply.empty());
  }
  CHECK(Http(pmmap.base_url(), "GET", "/healthz").status == 200);
}
