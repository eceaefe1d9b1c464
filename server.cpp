#include "server.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/crypto.h>
#include <openssl/sha.h>
#include <signal.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <map>
#include <thread>

#include "http_pool.hpp"
#include "json.hpp"
#include "log.hpp"

namespace {

// How often ended jobs are checked for expiry.
constexpr std::chrono::seconds kExpiryInterval{1};
// On a stop signal, how long calls in flight may take to finish before they
// are aborted.
constexpr std::chrono::seconds kShutdownGrace{5};
// Then, how long API connections may take to finish.
constexpr std::chrono::seconds kDrainTimeout{2};
// A kept-alive API connection holds an HTTP thread while it idles, and
// shutdown waits for it: keep the idle time short.
constexpr time_t kKeepAliveSeconds = 3;
constexpr size_t kKeepAliveRequests = 10000;
// A caller reading a large output may pause; give it time before dropping it.
constexpr time_t kWriteTimeoutSeconds = 60;
// From a connection's accept (or a kept-alive one's next byte) to the end of
// its request's headers: a client that sends them slower is dropped.
constexpr std::chrono::seconds kHeaderTimeout{5};
// With the default --http-threads, threads beyond --max-connections, for
// the connections being answered 503 over the cap (which takes no wait).
constexpr size_t kRefusalThreads = 16;
// An API thread's stack, against glibc's 8 MiB. The deepest a request goes
// is libstdc++'s std::regex, about 512 bytes of stack a character (measured)
// over a request line or Range header of at most kMaxMatchedLineBytes, so
// about 512 KiB; RapidJSON's recursive parse of a POST /job body stops at
// kMaxJsonDepth levels. The sanitizers' frames are several times larger.
#if defined(__SANITIZE_ADDRESS__) || defined(__SANITIZE_THREAD__)
constexpr size_t kHttpThreadStackBytes = 8 << 20;
#else
constexpr size_t kHttpThreadStackBytes = 1 << 20;
#endif
// The scheme of the Authorization header that carries the API token.
constexpr char kBearer[] = "Bearer ";

// The file CheckWritable creates and removes in the data dir.
constexpr char kWriteProbe[] = ".pmmap-write-test";

// Proves that files can be created in dir by creating and removing one, so
// that a data dir pmmap cannot write is refused at start, not by a 500 on
// the first POST /job. On failure, says why in *error.
bool CheckWritable(const std::string& dir, std::string* error) {
  const std::string probe = dir + "/" + kWriteProbe;
  int fd = open(probe.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
  if (fd < 0 || close(fd) != 0 || unlink(probe.c_str()) != 0) {
    const int err = errno;
    *error = "cannot write to " + dir + ": " + strerror(err);
    // In a container the volume's owner is the usual culprit: name our uid.
    if (err == EACCES) {
      *error += " (the data dir must be writable by uid " + std::to_string(geteuid()) + ")";
    }
    return false;
  }
  return true;
}

// The most event streams open at once: kMaxEventStreams, or half of the
// connections (or threads) the API serves at once if that is fewer, so that
// streams never hold all of them.
size_t MaxEventStreams(const Flags& flags) {
  size_t serving = flags.max_connections;
  if (flags.http_threads != 0) serving = std::min(serving, flags.http_threads);
  return std::min(kMaxEventStreams, std::max<size_t>(1, serving / 2));
}

// The one place a Status becomes an HTTP status.
int HttpStatus(const Status& s) {
  switch (s.code()) {
    case Status::kOk:
      return 200;
    case Status::kInvalid:
      return 400;
    case Status::kNotFound:
      return 404;
    case Status::kConflict:
      return 409;
    case Status::kTooLarge:
      return 413;
    case Status::kTooMany:
      return 429;
    case Status::kUnavailable:
      return 503;
    case Status::kInternal:
      return 500;
    case Status::kInsufficientStorage:
      return 507;
  }
  return 500;
}

// Reads the whole request body, whatever its Content-Type says, into *body.
Status ReadBody(const httplib::Request& req, const httplib::ContentReader& reader, size_t max_body,
                std::string* body) {
  // A request with neither header has no body; asking cpp-httplib to read
  // one would wait for the caller to close the connection.
  if (!req.has_header("Content-Length") && !req.has_header("Transfer-Encoding")) {
    return Status::OK();
  }
  bool too_large = false;
  bool ok = reader([&](const char* data, size_t n) {
    // Past the limit reading stops: ApiServer skips a short rest before the
    // answer, so that the connection serves the caller's next request, and
    // closes the connection after it when the rest is long.
    if (body->size() + n > max_body) {
      std::string().swap(*body);
      too_large = true;
      return false;
    }
    body->append(data, n);
    return true;
  });
  if (too_large) {
    return Status::TooLarge("the body is larger than " + std::to_string(max_body) +
                            " bytes (--max-body)");
  }
  if (!ok) return Status::Invalid("the body could not be read whole");
  return Status::OK();
}

Dispatcher::Options DispatcherOptions(const Flags& flags,
                                      std::shared_ptr<const NetRules> net_rules) {
  Dispatcher::Options options;
  options.net_rules = std::move(net_rules);
  options.ca_file = flags.ca_file.empty() ? FindCaBundle() : flags.ca_file;
  if (options.ca_file.empty()) {
    LogMessage("warning: no CA bundle found; https webhooks will fail (see --ca-file)");
  }
  options.max_reply_bytes = flags.max_body;
  options.proxy_from_env = ProxyInEnvironment();
  return options;
}

// Whether host, where the server listens, is reachable from this machine only.
bool IsLoopback(const std::string& host) {
  in_addr v4;
  in6_addr v6;
  if (inet_pton(AF_INET, host.c_str(), &v4) == 1) return (ntohl(v4.s_addr) >> 24) == 127;
  if (inet_pton(AF_INET6, host.c_str(), &v6) == 1) return IN6_IS_ADDR_LOOPBACK(&v6);
  return host == "localhost";
}

// SIGINT and SIGTERM are taken by one thread with sigwait, so they are
// blocked in every thread; SIGPIPE is blocked so that a vanished peer is an
// error, not death. Threads inherit the mask of the thread that starts them.
sigset_t BlockSignals() {
  sigset_t signals;
  sigemptyset(&signals);
  sigaddset(&signals, SIGINT);
  sigaddset(&signals, SIGTERM);
  sigaddset(&signals, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &signals, nullptr);
  // A file over the size limit (RLIMIT_FSIZE) is a failed write (EFBIG),
  // refused with 507, not death.
  signal(SIGXFSZ, SIG_IGN);
  sigdelset(&signals, SIGPIPE);
  return signals;
}

}  // namespace

void Reply(httplib::Response& res, int status, std::string json) {
  res.status = status;
  json.push_back('\n');  // so that curl's output ends its line
  res.set_content(json, "application/json");
}

void ReplyError(httplib::Response& res, const Status& s) {
  Reply(res, HttpStatus(s), ErrorJson(s.message()));
}

// Routes

const Server::Route Server::kRoutes[] = {
    {"POST", R"(/job)", &Server::CreateJob},
    {"GET", R"(/jobs)", &Server::ListJobs},
    {"GET", R"(/job/([^/]+))", &Server::ShowJob},
    {"DELETE", R"(/job/([^/]+))", &Server::DeleteJob},
    {"PATCH", R"(/job/([^/]+))", &Server::ChangeJob},
    {"PUT", R"(/job/([^/]+)/input)", &Server::AddInputs, &Server::StreamInputs},
    {"POST", R"(/job/([^/]+)/complete)", &Server::CompleteJob},
    {"POST", R"(/job/([^/]+)/cancel)", &Server::CancelJob},
    {"POST", R"(/job/([^/]+)/pause)", &Server::PauseJob},
    {"POST", R"(/job/([^/]+)/resume)", &Server::ResumeJob},
    {"POST", R"(/job/([^/]+)/redrive)", &Server::RedriveJob},
    {"GET", R"(/job/([^/]+)/output)", &Server::StreamOutput},
    {"GET", R"(/healthz)", &Server::Health},
    {"GET", R"(/metrics)", &Server::ShowMetrics},
    {"GET", R"(/)", &Server::ServePage},
    {"GET", R"(/page/([^/]+))", &Server::ServePage},
    {"GET", R"(/events)", &Server::StreamJobsEvents},
    {"GET", R"(/job/([^/]+)/events)", &Server::StreamJobEvents},
    {"GET", R"(/job/([^/]+)/stats)", &Server::ShowJobStats},
};

void Server::InstallRoutes() {
  using httplib::ContentReader;
  using httplib::Request;
  using httplib::Response;
  std::map<std::string, std::string> methods_by_pattern;
  for (const Route& route : kRoutes) {
    std::string& methods = methods_by_pattern[route.pattern];
    methods.append(methods.empty() ? "" : ", ").append(route.method);
    Handler handler = route.handler;
    if (std::string(route.method) == "GET") {
      http_.Get(route.pattern, [this, handler](const Request& req, Response& res) {
        (this->*handler)(req, std::string(), res);
      });
      continue;
    }
    // Every other method reads its body itself, whatever its Content-Type,
    // and answers 413 past --max-body.
    StreamHandler streamed = route.streamed;
    auto with_body = [this, handler, streamed](const Request& req, Response& res,
                                               const ContentReader& reader) {
      if (streamed != nullptr && (this->*streamed)(req, reader, res)) return;
      std::string body;
      Status s = ReadBody(req, reader, flags_.max_body, &body);
      if (!s.ok()) return ReplyError(res, s);
      (this->*handler)(req, std::move(body), res);
    };
    std::string method = route.method;
    if (method == "POST") http_.Post(route.pattern, with_body);
    if (method == "PUT") http_.Put(route.pattern, with_body);
    if (method == "DELETE") http_.Delete(route.pattern, with_body);
    if (method == "PATCH") http_.Patch(route.pattern, with_body);
  }
  for (const auto& entry : methods_by_pattern) {
    allowed_methods_.emplace_back(std::regex(entry.first), entry.second);
  }

  // Without these, a POST, PUT, PATCH or DELETE that no route takes would
  // have its body read by cpp-httplib, which waits for the caller to close
  // the connection when the request has no Content-Length.
  auto unrouted = [this](const Request& req, Response& res, const ContentReader& reader) {
    std::string body;
    ReadBody(req, reader, flags_.max_body, &body);
    res.status = 404;  // AnswerUnrouted says more
  };
  http_.Post(".*", unrouted);
  http_.Put(".*", unrouted);
  http_.Patch(".*", unrouted);
  http_.Delete(".*", unrouted);
  // Before any body is read or any handler runs, unrouted paths included,
  // so that a refused request changes nothing and learns nothing.
  http_.set_pre_routing_handler([this](const Request& req, Response& res) {
    std::string refusal = Unauthorized(req);
    if (!refusal.empty()) {
      res.set_header("WWW-Authenticate", "Bearer");
      Reply(res, 401, ErrorJson(refusal));
      return httplib::Server::HandlerResponse::Handled;
    }
    // The one method cpp-httplib reads a body for that no route reads (PRI)
    // would have its body read into memory whole, now without a limit.
    if (req.method != "PRI") return httplib::Server::HandlerResponse::Unhandled;
    Reply(res, 405, ErrorJson("PRI is not allowed"));
    return httplib::Server::HandlerResponse::Handled;
  });
  http_.set_error_handler(httplib::Server::HandlerWithResponse(
      [this](const Request& req, Response& res) -> httplib::Server::HandlerResponse {
        if (!res.body.empty()) return httplib::Server::HandlerResponse::Unhandled;
        AnswerUnrouted(req, res);
        return httplib::Server::HandlerResponse::Handled;
      }));
  http_.set_exception_handler([](const Request&, Response& res, std::exception_ptr) {
    Reply(res, 500, ErrorJson("internal error"));
  });
}

std::string Server::Unauthorized(const httplib::Request& req) const {
  if (flags_.api_token.empty()) return "";
  // GET / is the web page's shell, which asks its user for the token; its
  // script and style (/page/...) are loaded by the browser, which cannot
  // add the token to those requests. All three are the same for everyone.
  if (req.method == "GET" &&
      (req.path == "/healthz" || req.path == "/" || req.path.compare(0, 6, "/page/") == 0 ||
       (req.path == "/metrics" && flags_.metrics_open))) {
    return "";
  }
  if (!req.has_header("Authorization")) {
    return "missing \"Authorization: Bearer <token>\": this server needs its API token";
  }
  const std::string& given = req.get_header_value("Authorization");
  if (given.size() < sizeof(kBearer) - 1 ||
      strncasecmp(given.c_str(), kBearer, sizeof(kBearer) - 1) != 0) {
    return "the Authorization header must be \"Bearer <token>\"";
  }
  // Digests of equal length, compared in constant time, so that neither
  // the token's length nor its first wrong byte shows in the time taken.
  unsigned char digest[SHA256_DIGEST_LENGTH];
  const std::string token = given.substr(sizeof(kBearer) - 1);
  SHA256(reinterpret_cast<const unsigned char*>(token.data()), token.size(), digest);
  if (CRYPTO_memcmp(digest, token_digest_, sizeof(digest)) != 0) return "wrong API token";
  return "";
}

void Server::AnswerUnrouted(const httplib::Request& req, httplib::Response& res) {
  std::string message = "HTTP " + std::to_string(res.status);
  if (res.status == 404) {
    message = "no route " + req.method + " " + req.path;
    for (const auto& entry : allowed_methods_) {
      if (std::regex_match(req.path, entry.first)) {
        res.status = 405;
        res.set_header("Allow", entry.second);
        message =
            req.method + " is not allowed on " + req.path + " (allowed: " + entry.second + ")";
        break;
      }
    }
  } else if (res.status == 413) {
    message = "the body is too large";
  }
  res.set_content(ErrorJson(message) + "\n", "application/json");
}

// Life

Server::Server(Flags flags)
    : flags_(std::move(flags)),
      events_(MaxEventStreams(flags_)),
      net_rules_(std::make_shared<const NetRules>(flags_.net_rules)),
      http_(flags_.max_connections, kHeaderTimeout,
            [this](const httplib::Request& req) { return !Unauthorized(req).empty(); }) {
  SHA256(reinterpret_cast<const unsigned char*>(flags_.api_token.data()), flags_.api_token.size(),
         token_digest_);
}

Server::~Server() {
  // Jobs, and with them their files, are gone once the table is and every
  // webhook thread has been joined; only then is the data dir empty.
  table_.reset();
  dispatcher_.reset();
  if (own_data_dir_) rmdir(flags_.data_dir.c_str());
  LogMessage("stopped");
}

bool Server::Start(std::string* error) {
  stop_signals_ = BlockSignals();
  if (!PrepareDataDir(error)) return false;
  dispatcher_.reset(new Dispatcher(DispatcherOptions(flags_, net_rules_), flags_.max_workers));
  Dispatcher* dispatcher = dispatcher_.get();
  JobFiles files;
  files.dir = flags_.data_dir;
  files.durable = !own_data_dir_;
  files.fsync = flags_.fsync;
  table_.reset(new JobTable(
      files, flags_.max_jobs,
      [dispatcher](std::shared_ptr<Job> job) { return dispatcher->StartWorker(std::move(job)); },
      [dispatcher](std::shared_ptr<Job> job) {
        return dispatcher->StartCallback(std::move(job));
      }));
  const size_t http_threads =
      flags_.http_threads != 0 ? flags_.http_threads : flags_.max_connections + kRefusalThreads;
  http_.new_task_queue = [http_threads] {
    return new HttpPool(http_threads, kHttpThreadStackBytes);
  };
  http_.set_keep_alive_timeout(kKeepAliveSeconds);
  http_.set_keep_alive_max_count(kKeepAliveRequests);
  http_.set_write_timeout(kWriteTimeoutSeconds, 0);
  // Whoever reads a body limits it: ReadBody to --max-body, a streamed PUT
  // to --max-body a line. cpp-httplib's limit, one for every request, would
  // refuse a streamed PUT with a Content-Length (curl -T) over it.
  http_.set_payload_max_length(std::numeric_limits<size_t>::max());
  InstallRoutes();
  if (files.durable) {
    size_t resumed = 0;
    table_->Resume(&resumed);
    LogMessage("resumed " + std::to_string(resumed) + " jobs from " + flags_.data_dir);
  }
  return Bind(error);
}

bool Server::PrepareDataDir(std::string* error) {
  if (flags_.data_dir.empty()) {
    const char* tmp = getenv("TMPDIR");
    std::string templ = std::string(tmp != nullptr && *tmp ? tmp : "/tmp") + "/pmmap.XXXXXX";
    if (mkdtemp(&templ[0]) == nullptr) {
      *error = "cannot create " + templ + ": " + strerror(errno);
      return false;
    }
    flags_.data_dir = templ;
    own_data_dir_ = true;
  } else if (mkdir(flags_.data_dir.c_str(), 0700) != 0 && errno != EEXIST) {
    *error = "cannot create " + flags_.data_dir + ": " + strerror(errno);
    return false;
  }
  return CheckWritable(flags_.data_dir, error);
}

bool Server::Bind(std::string* error) {
  // cpp-httplib listens with a backlog of 5, so a burst of connections
  // would be dropped: keep the socket and raise the backlog after binding.
  // Its default SO_REUSEPORT would also let a second pmmap share the port
  // unnoticed; SO_REUSEADDR only allows a quick restart. Accepted sockets
  // inherit TCP_NODELAY: cpp-httplib writes a reply's headers and body
  // separately, and Nagle's algorithm would hold the body for the
  // client's delayed ACK, 40 ms a request on a kept-alive connection.
  int listen_fd = -1;
  http_.set_socket_options([&listen_fd](int fd) {
    int yes = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &yes, sizeof(yes));
    listen_fd = fd;
  });
  // Port 0 picks a free port; Run's log line tells which.
  bound_port_ = flags_.port == 0
                    ? http_.bind_to_any_port(flags_.host)
                    : (http_.bind_to_port(flags_.host, flags_.port) ? flags_.port : -1);
  if (bound_port_ <= 0) {
    *error = "cannot listen on " + flags_.listen + ": " + strerror(errno);
    return false;
  }
  if (listen_fd >= 0) listen(listen_fd, SOMAXCONN);
  return true;
}

int Server::Run() {
  // Blocked in sigwait until the process ends.
  std::thread(&Server::WaitForStopSignal, this).detach();
  std::thread housekeeper([this] {
    ExpireJobsUntilStopping();
    StopJobsAndListening();
    FinishCallsInFlight();
    DrainConnections();
  });
  const std::string& host = flags_.host;
  std::string shown_host = host.find(':') != std::string::npos ? "[" + host + "]" : host;
  LogMessage("listening on http://" + shown_host + ":" + std::to_string(bound_port_) +
             " with data in " + flags_.data_dir);
  if (flags_.api_token.empty() && !IsLoopback(host)) {
    LogMessage("warning: listening on " + shown_host +
               " without --api-token: anyone who can reach it can create, read and delete "
               "jobs, and make pmmap call any allowed address");
  }
  http_.listen_after_bind();
  {
    MutexLock lock(&stop_mutex_);
    stopping_ = true;  // in case the server stopped by itself
    http_done_ = true;
    stop_cv_.SignalAll();
  }
  housekeeper.join();
  return 0;
}

void Server::WaitForStopSignal() {
  int sig = 0;
  sigwait(&stop_signals_, &sig);
  LogMessage(std::string("stopping on ") + strsignal(sig));
  {
    // Signalled under the lock: once Run can take it, this thread is done
    // with stop_cv_, which the Server's destructor destroys.
    MutexLock lock(&stop_mutex_);
    stopping_ = true;
    stop_cv_.SignalAll();
  }
  // A second signal means now.
  sigwait(&stop_signals_, &sig);
  _exit(1);
}

void Server::ExpireJobsUntilStopping() {
  MutexLock lock(&stop_mutex_);
  while (!stopping_) {
    stop_cv_.WaitFor(kExpiryInterval);
    if (stopping_) break;
    stop_mutex_.Unlock();
    table_->ExpireEndedBefore(std::chrono::system_clock::now() -
                              std::chrono::seconds(flags_.job_ttl_seconds));
    table_->Tick();
    stop_mutex_.Lock();
  }
}

void Server::StopJobsAndListening() {
  table_->StopAll();  // answers every waiting caller; removes the files unless durable
  events_.Stop();     // ends every event stream, which holds an API thread
  http_.stop();
}

void Server::FinishCallsInFlight() {
  if (!dispatcher_->WaitForExit(kShutdownGrace)) {
    LogMessage("aborting webhook calls still in flight");
    table_->AbortCallsInFlight();
  }
}

void Server::DrainConnections() {
  // An API caller that stopped reading holds its connection's thread until
  // the write timeout; its job is gone, so do not wait for it.
  auto deadline = std::chrono::steady_clock::now() + kDrainTimeout;
  MutexLock lock(&stop_mutex_);
  while (!http_done_) {
    if (!stop_cv_.WaitUntil(deadline) && !http_done_) {
      dispatcher_->JoinExited();
      if (own_data_dir_) rmdir(flags_.data_dir.c_str());
      LogMessage("stopped, dropping API connections still open");
      _exit(0);
    }
  }
}
