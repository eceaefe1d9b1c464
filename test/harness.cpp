#include "test/harness.hpp"

#include <arpa/inet.h>
#include <dirent.h>
#include <fcntl.h>
#include <grp.h>
#include <netinet/in.h>
#include <rapidjson/stringbuffer.h>
#include <rapidjson/writer.h>
#include <signal.h>
#include <stdlib.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <cerrno>
#include <fstream>
#include <sstream>

#include "http_pool.hpp"

namespace {

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

extern char** environ;

std::string ReadFile(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::vector<std::string> ListDir(const std::string& path) {
  std::vector<std::string> names;
  DIR* dir = opendir(path.c_str());
  INFO("directory " << path);
  REQUIRE(dir != nullptr);
  while (dirent* e = readdir(dir)) {
    std::string name = e->d_name;
    if (name != "." && name != "..") names.push_back(name);
  }
  closedir(dir);
  return names;
}

bool IsDirectory(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

void RemoveTree(const std::string& path) {
  struct stat st;
  if (lstat(path.c_str(), &st) != 0) return;
  if (!S_ISDIR(st.st_mode)) {
    unlink(path.c_str());
    return;
  }
  if (DIR* dir = opendir(path.c_str())) {
    std::vector<std::string> names;
    while (dirent* e = readdir(dir)) {
      std::string name = e->d_name;
      if (name != "." && name != "..") names.push_back(name);
    }
    closedir(dir);
    for (const auto& name : names) RemoveTree(path + "/" + name);
  }
  rmdir(path.c_str());
}

TempDir::TempDir(const std::string& prefix) {
  const char* base = getenv("TMPDIR");
  std::string templ =
      std::string(base != nullptr && *base != '\0' ? base : "/tmp") + "/" + prefix + ".XXXXXX";
  REQUIRE(mkdtemp(&templ[0]) != nullptr);
  path_ = templ;
}

std::string PmmapBinary() {
  const char* bin = getenv("PMMAP_BIN");
  return bin != nullptr ? bin : "./pmmap";
}

pid_t Spawn(const std::vector<std::string>& args, const std::map<std::string, std::string>& env,
            int out_fd, int err_fd, int run_as_uid) {
  // Everything the child needs is built before fork: after it, only
  // async-signal-safe calls.
  std::vector<std::string> env_strings;
  for (char** e = environ; *e != nullptr; ++e) {
    std::string entry = *e;
    if (env.count(entry.substr(0, entry.find('='))) == 0) env_strings.push_back(entry);
  }
  for (const auto& kv : env) env_strings.push_back(kv.first + "=" + kv.second);
  std::vector<std::string> arg_strings = args;
  std::vector<char*> argv;
  for (auto& a : arg_strings) argv.push_back(&a[0]);
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (auto& e : env_strings) envp.push_back(&e[0]);
  envp.push_back(nullptr);
  pid_t pid = fork();
  REQUIRE(pid >= 0);
  if (pid == 0) {
    int devnull = open("/dev/null", O_RDWR);
    dup2(devnull, 0);
    dup2(out_fd, 1);
    dup2(err_fd, 2);
    // The test process blocks some signals and ignores SIGPIPE; the child
    // starts clean.
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    signal(SIGPIPE, SIG_DFL);
    if (run_as_uid != kSameUid &&
        (setgroups(0, nullptr) != 0 || setgid(static_cast<gid_t>(run_as_uid)) != 0 ||
         setuid(static_cast<uid_t>(run_as_uid)) != 0)) {
      _exit(126);
    }
    execve(argv[0], argv.data(), envp.data());
    _exit(127);
  }
  return pid;
}

int WaitExit(pid_t pid, std::chrono::milliseconds timeout) {
  auto deadline = std::chrono::steady_clock::now() + timeout;
  int status = 0;
  for (;;) {
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    if (r < 0 && errno != EINTR) return -2;
    if (std::chrono::steady_clock::now() > deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  kill(pid, SIGKILL);
  waitpid(pid, &status, 0);
  return -1;
}

PmmapProcess::PmmapProcess(const std::vector<std::string>& extra_args,
                           const std::map<std::string, std::string>& env) {
  char templ[] = "/tmp/pmmap-test-log.XXXXXX";
  int log_fd = mkstemp(templ);
  REQUIRE(log_fd >= 0);
  log_path_ = templ;
  std::vector<std::string> args = {PmmapBinary(), "--listen", "127.0.0.1:0"};
  args.insert(args.end(), extra_args.begin(), extra_args.end());
  int devnull = open("/dev/null", O_WRONLY | O_CLOEXEC);
  REQUIRE(devnull >= 0);
  pid_ = Spawn(args, env, devnull, log_fd);
  close(devnull);
  close(log_fd);
  // Wait (bounded) for the line that names the port.
  const std::string marker = "listening on http://127.0.0.1:";
  for (int i = 0; i < 2000 && port_ == 0; ++i) {
    std::string text = log();
    size_t at = text.find(marker);
    if (at != std::string::npos && text.find(' ', at + marker.size()) != std::string::npos) {
      port_ = std::stoi(text.substr(at + marker.size()));
      break;
    }
    int status;
    if (waitpid(pid_, &status, WNOHANG) == pid_) {
      pid_ = -1;
      FAIL("pmmap exited at start: " << text);
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
  if (sig != 0) kill(pid_, sig);
  int code = WaitExit(pid_, timeout);
  pid_ = -1;
  return code;
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

std::string HeaderOf(const httplib::Headers& headers, const std::string& name) {
  for (const auto& h : headers) {
    if (strcasecmp(h.first.c_str(), name.c_str()) == 0) return h.second;
  }
  return "";
}

size_t HeaderCount(const httplib::Headers& headers, const std::string& name) {
  size_t n = 0;
  for (const auto& h : headers) n += strcasecmp(h.first.c_str(), name.c_str()) == 0;
  return n;
}

std::string RequireError(const HttpResult& r, int status) {
  INFO("reply " << r.status << ": " << r.body);
  REQUIRE(r.status == status);
  rapidjson::Document doc = ParseJson(r.body);
  std::string message = Text(doc, "error");
  REQUIRE_FALSE(message.empty());
  return message;
}

rapidjson::Document ParseJson(const std::string& text) {
  rapidjson::Document doc;
  doc.Parse(text.c_str(), text.size());
  INFO("JSON text: " << text);
  REQUIRE_FALSE(doc.HasParseError());
  return doc;
}

std::string Json(const rapidjson::Value& v) {
  rapidjson::StringBuffer buf;
  rapidjson::Writer<rapidjson::StringBuffer> writer(buf);
  v.Accept(writer);
  return std::string(buf.GetString(), buf.GetSize());
}

std::string Quote(const std::string& s) {
  rapidjson::StringBuffer buf;
  rapidjson::Writer<rapidjson::StringBuffer> writer(buf);
  writer.String(s.c_str(), static_cast<rapidjson::SizeType>(s.size()));
  return std::string(buf.GetString(), buf.GetSize());
}

uint64_t U64(const rapidjson::Value& v, const char* name) {
  INFO("field " << name << " of " << Json(v));
  REQUIRE(v.IsObject());
  REQUIRE(v.HasMember(name));
  REQUIRE(v[name].IsUint64());
  return v[name].GetUint64();
}

std::string Text(const rapidjson::Value& v, const char* name) {
  INFO("field " << name << " of " << Json(v));
  REQUIRE(v.IsObject());
  REQUIRE(v.HasMember(name));
  REQUIRE(v[name].IsString());
  return std::string(v[name].GetString(), v[name].GetStringLength());
}

std::string JobBody(const std::string& url, const std::string& fields) {
  return "{\"url\":" + Quote(url) + (fields.empty() ? "" : "," + fields) + "}";
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
    if (pred(doc)) return doc;
    if (std::chrono::steady_clock::now() > deadline) {
      FAIL("job " << id << " did not reach the awaited state within " << timeout.count()
                  << " ms; its last read: " << Json(doc));
    }
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

RefusingPort::RefusingPort() {
  fd_ = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  REQUIRE(fd_ >= 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  REQUIRE(bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0);
  socklen_t len = sizeof(addr);
  REQUIRE(getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
  port_ = ntohs(addr.sin_port);
}

RefusingPort::~RefusingPort() { close(fd_); }

std::vector<TcpSocket> TcpSockets() {
  std::ifstream in("/proc/net/tcp");
  REQUIRE(in.good());
  std::vector<TcpSocket> sockets;
  std::string line;
  std::getline(in, line);  // the header
  auto port_of = [](const std::string& address) {
    return static_cast<int>(std::stoul(address.substr(address.find(':') + 1), nullptr, 16));
  };
  while (std::getline(in, line)) {
    std::istringstream fields(line);
    std::string slot, queues, timer, retransmits, uid, timeout;
    TcpSocket s;
    if (!(fields >> slot >> s.local >> s.remote >> s.state >> queues >> timer >> retransmits >>
          uid >> timeout >> s.inode)) {
      continue;
    }
    s.local_port = port_of(s.local);
    s.remote_port = port_of(s.remote);
    s.tx_queue = std::stoul(queues.substr(0, queues.find(':')), nullptr, 16);
    s.rx_queue = std::stoul(queues.substr(queues.find(':') + 1), nullptr, 16);
    sockets.push_back(s);
  }
  return sockets;
}

std::string LoopbackAddress(int port) {
  char address[32];
  snprintf(address, sizeof(address), "0100007F:%04X", port);
  return address;
}

Webhook::Webhook(int port) {
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
      Echo(call, res);
    }
    --in_flight_;
  };
  server_.Post(".*", handle);
  if (port == 0) {
    port_ = server_.bind_to_any_port("127.0.0.1");
  } else if (server_.bind_to_port("127.0.0.1", port)) {
    port_ = port;
  }
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

int AttemptOf(const Webhook::Call& call) {
  return atoi(HeaderOf(call.headers, "PMMAP-attempt").c_str());
}

void Echo(const Webhook::Call& call, httplib::Response& res) {
  res.set_content("{\"key\":" + Quote(call.key) + ",\"value\":" + call.body + "}",
                  "application/json");
}
