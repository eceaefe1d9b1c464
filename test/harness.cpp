#include "test/harness.hpp"

#include <fcntl.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <fstream>
#include <sstream>

#include "http_pool.hpp"

namespace {

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string PercentDecode(const std::string& s) {
  std::string out;
  for (size_t i = 0; i < s.size(); ++i) {
    if (s[i] == '%' && i + 2 < s.size()) {
      out.push_back(static_cast<char>(std::stoi(s.substr(i + 1, 2), nullptr, 16)));
      i += 2;
    } else {
      out.push_back(s[i]);
    }
  }
  return out;
}

}  // namespace

PmmapProcess::PmmapProcess(std::vector<std::string> extra_args) {
  const char* bin = getenv("PMMAP_BIN");
  std::string binary = bin != nullptr ? bin : "./pmmap";
  char templ[] = "/tmp/pmmap-test-log.XXXXXX";
  int log_fd = mkstemp(templ);
  REQUIRE(log_fd >= 0);
  log_path_ = templ;
  std::vector<std::string> args = {binary, "--listen", "127.0.0.1:0"};
  args.insert(args.end(), extra_args.begin(), extra_args.end());
  pid_ = fork();
  REQUIRE(pid_ >= 0);
  if (pid_ == 0) {
    dup2(log_fd, 2);
    int devnull = open("/dev/null", O_RDWR);
    dup2(devnull, 0);
    dup2(devnull, 1);
    // The test process blocks some signals; the server must start clean.
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    std::vector<char*> argv;
    for (auto& a : args) argv.push_back(&a[0]);
    argv.push_back(nullptr);
    execv(binary.c_str(), argv.data());
    _exit(127);
  }
  close(log_fd);
  // Wait (bounded) for the line that names the port.
  const std::string marker = "listening on http://127.0.0.1:";
  for (int i = 0; i < 1000 && port_ == 0; ++i) {
    std::string log = ReadFile(log_path_);
    size_t at = log.find(marker);
    if (at != std::string::npos && log.find(' ', at + marker.size()) != std::string::npos) {
      port_ = std::stoi(log.substr(at + marker.size()));
      break;
    }
    int status;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      FAIL("pmmap exited at start: " << log);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  REQUIRE(port_ != 0);
}

PmmapProcess::~PmmapProcess() {
  if (pid_ > 0) Stop(SIGTERM);
  // A sanitizer report in the server under test fails the test that ran it.
  std::string text = log();
  bool sanitizer_report = text.find("Sanitizer") != std::string::npos ||
                          text.find("runtime error:") != std::string::npos;
  INFO("pmmap's log: " << text);
  CHECK_FALSE(sanitizer_report);
  unlink(log_path_.c_str());
}

std::string PmmapProcess::log() const { return ReadFile(log_path_); }

int PmmapProcess::Stop(int sig, std::chrono::milliseconds timeout) {
  if (pid_ <= 0) return -1;
  kill(pid_, sig);
  auto deadline = std::chrono::steady_clock::now() + timeout;
  int status = 0;
  while (std::chrono::steady_clock::now() < deadline) {
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  kill(pid_, SIGKILL);
  waitpid(pid_, &status, 0);
  pid_ = -1;
  return -1;
}

HttpResult Http(const std::string& base_url, const std::string& method, const std::string& path,
                const std::string& body, const httplib::Headers& headers,
                std::chrono::seconds timeout) {
  httplib::Client client(base_url);
  client.set_connection_timeout(5, 0);
  client.set_read_timeout(timeout.count(), 0);
  client.set_write_timeout(timeout.count(), 0);
  auto send = [&]() -> httplib::Result {
    if (method == "POST") return client.Post(path.c_str(), headers, body, "application/json");
    if (method == "PUT") return client.Put(path.c_str(), headers, body, "application/json");
    if (method == "DELETE") return client.Delete(path.c_str(), headers, body, "application/json");
    if (method == "PATCH") return client.Patch(path.c_str(), headers, body, "application/json");
    return client.Get(path.c_str(), headers);
  };
  httplib::Result r = send();
  HttpResult result;
  if (r) {
    result.status = r->status;
    result.body = r->body;
    result.headers = r->headers;
  }
  return result;
}

rapidjson::Document ParseJson(const std::string& text) {
  rapidjson::Document doc;
  doc.Parse(text.c_str(), text.size());
  INFO("JSON text: " << text);
  REQUIRE_FALSE(doc.HasParseError());
  return doc;
}

std::string CreateJob(const PmmapProcess& pmmap, const std::string& body) {
  HttpResult r = Http(pmmap.base_url(), "POST", "/job", body);
  INFO("POST /job " << body << " -> " << r.body);
  REQUIRE(r.status == 201);
  rapidjson::Document doc = ParseJson(r.body);
  REQUIRE(doc.HasMember("id"));
  return doc["id"].GetString();
}

std::string MakeInputs(int n, const std::string& prefix) {
  std::string out = "[";
  for (int i = 0; i < n; ++i) {
    if (i > 0) out.push_back(',');
    out += "{\"key\":\"" + prefix + std::to_string(i) + "\",\"value\":{\"i\":" + std::to_string(i) +
           "}}";
  }
  out.push_back(']');
  return out;
}

rapidjson::Document GetJob(const PmmapProcess& pmmap, const std::string& id) {
  HttpResult r = Http(pmmap.base_url(), "GET", "/job/" + id);
  INFO("GET /job/" << id << " -> " << r.status << " " << r.body);
  REQUIRE(r.status == 200);
  return ParseJson(r.body);
}

rapidjson::Document WaitForJob(const PmmapProcess& pmmap, const std::string& id,
                               const std::function<bool(const rapidjson::Document&)>& pred,
                               std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  for (;;) {
    rapidjson::Document doc = GetJob(pmmap, id);
    if (pred(doc) || std::chrono::steady_clock::now() > deadline) return doc;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
}

std::vector<rapidjson::Document> ParseLines(const std::string& ndjson) {
  std::vector<rapidjson::Document> lines;
  std::istringstream in(ndjson);
  std::string line;
  while (std::getline(in, line)) {
    if (!line.empty()) lines.push_back(ParseJson(line));
  }
  return lines;
}

Webhook::Webhook() {
  server_.new_task_queue = [] { return new HttpPool(2048); };
  // Headers and body are written separately: without this, Nagle's
  // algorithm and delayed ACKs add about 40 ms to every reply with a body.
  server_.set_tcp_nodelay(true);
  auto handle = [this](const httplib::Request& req, httplib::Response& res) {
    int now = ++in_flight_;
    int peak = peak_.load();
    while (now > peak && !peak_.compare_exchange_weak(peak, now)) {
    }
    Call call;
    call.path = req.path;
    // req.path is decoded already, so take the key from the raw target.
    std::string target = req.target.substr(0, req.target.find('?'));
    call.key = PercentDecode(target.substr(target.rfind('/') + 1));
    call.body = req.body;
    call.headers = req.headers;
    call.at = std::chrono::steady_clock::now();
    Handler handler;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      calls_.push_back(call);
      handler = handler_;
    }
    if (handler) {
      handler(call, res);
    } else {
      std::string key_json;
      rapidjson::StringBuffer buf;
      rapidjson::Writer<rapidjson::StringBuffer> w(buf);
      w.String(call.key.c_str(), static_cast<rapidjson::SizeType>(call.key.size()));
      res.set_content("{\"key\":" + std::string(buf.GetString()) + ",\"value\":" + call.body + "}",
                      "application/json");
    }
    --in_flight_;
  };
  server_.Post(".*", handle);
  port_ = server_.bind_to_any_port("127.0.0.1");
  REQUIRE(port_ > 0);
  thread_ = std::thread([this] { server_.listen_after_bind(); });
  for (int i = 0; i < 500 && !server_.is_running(); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(2));
  }
}

Webhook::~Webhook() { Stop(); }

void Webhook::Stop() {
  if (thread_.joinable()) {
    server_.stop();
    thread_.join();
  }
}

void Webhook::SetHandler(Handler handler) {
  std::lock_guard<std::mutex> lock(mutex_);
  handler_ = std::move(handler);
}

std::vector<Webhook::Call> Webhook::calls() {
  std::lock_guard<std::mutex> lock(mutex_);
  return calls_;
}

size_t Webhook::call_count() {
  std::lock_guard<std::mutex> lock(mutex_);
  return calls_.size();
}
