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

#include "caller.hpp"
#include "http_pool.hpp"
#include "json.hpp"
#include "line_inputs.hpp"
#include "log.hpp"
#include "metrics.hpp"
#include "page.hpp"
#include "redrive.hpp"
#include "request.hpp"

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

// How old a jobs snapshot of GET /events another stream may reuse: under
// the streams' interval, so that each of them still sees every second.
constexpr std::chrono::milliseconds kSnapshotReuse{500};

// A streamed PUT hands its lines to the job in batches of this many
// inputs (fewer for a small maxsize: see StreamBatchInputs), or of this
// many bytes of values: few enough to keep memory flat, enough that the
// job's lock and a durable job's journal write are taken once a batch.
constexpr size_t kStreamBatchMaxInputs = 64;
constexpr size_t kStreamBatchBytes = 1 << 20;

// A batch small enough that a quarter of the job's queue makes room for it.
size_t StreamBatchInputs(int64_t maxsize) {
  return std::min<size_t>(kStreamBatchMaxInputs, std::max<int64_t>(1, maxsize / 4));
}

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

void Reply(httplib::Response& res, int status, std::string json) {
  res.status = status;
  json.push_back('\n');  // so that curl's output ends its line
  res.set_content(json, "application/json");
}

void ReplyError(httplib::Response& res, const Status& s) {
  Reply(res, HttpStatus(s), ErrorJson(s.message()));
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

// Reads and drops what is left of a body, at most max_bytes of it, so that
// the caller, still sending, reads the answer instead of a reset connection.
void SkipBody(const httplib::ContentReader& reader, size_t max_bytes) {
  size_t skipped = 0;
  reader([&](const char*, size_t n) {
    skipped += n;
    return skipped <= max_bytes;
  });
}

// Whether a PUT /job/{id}/input streams NDJSON: ?format=ndjson, or its
// Content-Type without ?format=json. *error says what is wrong with format.
bool WantsNdjson(const httplib::Request& req, std::string* error) {
  std::string format = req.get_param_value("format");
  if (format == "ndjson") return true;
  if (format == "json") return false;
  if (!format.empty()) *error = "format: expected json or ndjson";
  std::string type = req.get_header_value("Content-Type");
  for (char& c : type) c = static_cast<char>(tolower(static_cast<unsigned char>(c)));
  return type.compare(0, 20, "application/x-ndjson") == 0;
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

// Refuses a job whose url or callback_url names an address the rules deny.
// A host name is judged later, on each address it resolves to.
Status CheckUrlAddresses(const NetRules& rules, const JobOptions& options) {
  std::string error = CheckUrlAddress(rules, "url", options.url);
  if (error.empty() && !options.callback_url.empty()) {
    error = CheckUrlAddress(rules, "callback_url", options.callback_url);
  }
  if (error.empty()) return Status::OK();
  return Status::Invalid(error + " (see --deny-net and --allow-net)");
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

std::shared_ptr<Job> Server::FindJob(const httplib::Request& req, httplib::Response& res) {
  std::shared_ptr<Job> job = table_->Find(req.matches[1]);
  if (!job) ReplyError(res, Status::NotFound("no job with id \"" + req.matches[1].str() + "\""));
  return job;
}

void Server::CreateJob(const httplib::Request&, std::string body, httplib::Response& res) {
  JobOptions options;
  std::shared_ptr<Job> job;
  Status s = ParseJobOptions(body, &options);
  if (s.ok()) s = CheckUrlAddresses(*net_rules_, options);
  if (s.ok()) s = table_->Create(std::move(options), &job);
  if (!s.ok()) return ReplyError(res, s);
  LogJobEvent(job->id(), "created", job->options().url);
  res.set_header("Location", "/job/" + job->id());
  Reply(res, 201, job->ToJson());
}

void Server::ListJobs(const httplib::Request&, std::string, httplib::Response& res) {
  std::string out = "[";
  for (const auto& job : table_->List()) {
    if (out.size() > 1) out.push_back(',');
    out.append(job->ToJson());
  }
  out.push_back(']');
  Reply(res, 200, out);
}

void Server::ShowJob(const httplib::Request& req, std::string, httplib::Response& res) {
  if (auto job = FindJob(req, res)) Reply(res, 200, job->ToJson());
}

void Server::DeleteJob(const httplib::Request& req, std::string, httplib::Response& res) {
  std::shared_ptr<Job> job = table_->Detach(req.matches[1]);
  if (!job) {
    return ReplyError(res, Status::NotFound("no job with id \"" + req.matches[1].str() + "\""));
  }
  std::string json = job->ToJson();
  job->Discard(Job::DiscardReason::kDeleted);
  LogJobEvent(job->id(), "deleted");
  Reply(res, 200, json);
}

void Server::AddInputs(const httplib::Request& req, std::string body, httplib::Response& res) {
  std::shared_ptr<Job> job = FindJob(req, res);
  if (!job) return;
  std::vector<Input> inputs;
  Status s = ParseInputs(body, &inputs);
  body = std::string();  // the inputs hold their own copies now, and Add may wait long
  if (s.ok()) s = job->Add(std::move(inputs));
  if (!s.ok()) return ReplyError(res, s);
  Reply(res, 201, job->ToJson());
}

bool Server::StreamInputs(const httplib::Request& req, const httplib::ContentReader& reader,
                          httplib::Response& res) {
  std::string error;
  bool ndjson = WantsNdjson(req, &error);
  if (!ndjson && error.empty()) return false;
  // A caller who sends no body (neither header) sends no lines.
  const bool has_body = req.has_header("Content-Length") || req.has_header("Transfer-Encoding");
  std::shared_ptr<Job> job = error.empty() ? FindJob(req, res) : nullptr;
  if (!job) {
    if (has_body) SkipBody(reader, flags_.max_body);
    if (!error.empty()) ReplyError(res, Status::Invalid(error));
    return true;
  }
  // Waiting for room, the caller's socket is not read: ask it whether the
  // caller hung up. Its socket is looked for only once a wait lasts.
  std::unique_ptr<CallerSocket> caller;
  auto hung_up = [&] {
    if (!caller) {
      caller.reset(
          new CallerSocket(req.local_addr, req.local_port, req.remote_addr, req.remote_port));
    }
    return caller->HungUp();
  };
  LineInputs::Options options;
  options.max_line_bytes = flags_.max_body;
  options.batch_inputs = StreamBatchInputs(job->options().maxsize);
  options.batch_bytes = kStreamBatchBytes;
  LineInputs lines(options, [&](const std::vector<Input>& batch) {
    Status s = job->WaitForRoom(batch.size(), hung_up);
    if (s.ok()) s = job->Add(batch);
    return s;
  });
  size_t skipped = 0;
  bool whole = !has_body || reader([&](const char* data, size_t n) {
    if (lines.Take(data, n)) return true;
    // Stopped: the rest is read and dropped, up to --max-body of it, so
    // that the caller, still sending, reads the answer, not a reset.
    skipped += n;
    return skipped <= flags_.max_body;
  });
  Status s = lines.Finish(whole);
  // Not whole and not stopped: the caller vanished; no answer reaches it.
  if (s.ok() && !whole) s = Status::Invalid("the body could not be read whole");
  if (!s.ok()) {
    ReplyError(res, s);
    return true;
  }
  std::string json = job->ToJson();
  Reply(res, 201, "{\"accepted\":" + std::to_string(lines.accepted()) + "," + json.substr(1));
  return true;
}

void Server::CompleteJob(const httplib::Request& req, std::string, httplib::Response& res) {
  ActOnJob(req, &Job::Complete, res);
}

void Server::CancelJob(const httplib::Request& req, std::string, httplib::Response& res) {
  ActOnJob(req, &Job::Cancel, res);
}

void Server::RedriveJob(const httplib::Request& req, std::string body, httplib::Response& res) {
  std::shared_ptr<Job> old = FindJob(req, res);
  if (!old) return;
  JobState state = old->state();
  if (state != JobState::kDone && state != JobState::kCancelled) {
    return ReplyError(res, Status::Conflict("job " + old->id() + " is " + JobStateName(state) +
                                            ": only a done or cancelled job can be redriven"));
  }
  JobOptions options;
  std::shared_ptr<Job> job;
  uint64_t copied = 0;
  Status s = ParseJobOptionsOver(body, old->options(), &options);
  options.redrive_of = old->id();
  if (s.ok()) s = table_->Create(std::move(options), &job);
  if (s.ok()) s = CopyFailedInputs(old.get(), job.get(), &copied);
  if (s.ok()) s = job->Complete();
  if (!s.ok()) {
    // A new job that could not be filled whole is not left half made.
    if (job && table_->Detach(job->id())) job->Discard(Job::DiscardReason::kDeleted);
    return ReplyError(res, s);
  }
  LogJobEvent(job->id(), "created",
              "redrive of " + old->id() + ", " + std::to_string(copied) + " inputs");
  res.set_header("Location", "/job/" + job->id());
  Reply(res, 201, job->ToJson());
}

void Server::PauseJob(const httplib::Request& req, std::string, httplib::Response& res) {
  ActOnJob(req, &Job::Pause, res);
}

void Server::ResumeJob(const httplib::Request& req, std::string, httplib::Response& res) {
  ActOnJob(req, &Job::Unpause, res);
}

void Server::ChangeJob(const httplib::Request& req, std::string body, httplib::Response& res) {
  std::shared_ptr<Job> job = FindJob(req, res);
  if (!job) return;
  Status s = job->Change([&body](JobOptions* options) { return ParseJobPatch(body, options); });
  if (!s.ok()) return ReplyError(res, s);
  Reply(res, 200, job->ToJson());
}

void Server::ActOnJob(const httplib::Request& req, Status (Job::*act)(), httplib::Response& res) {
  std::shared_ptr<Job> job = FindJob(req, res);
  if (!job) return;
  Status s = ((*job).*act)();
  if (!s.ok()) return ReplyError(res, s);
  Reply(res, 200, job->ToJson());
}

void Server::StreamOutput(const httplib::Request& req, std::string, httplib::Response& res) {
  OutputQuery query;
  Status s = ParseOutputQuery(req.params, req.get_header_value("Accept"), &query);
  if (!s.ok()) return ReplyError(res, s);
  std::shared_ptr<Job> job = FindJob(req, res);
  if (!job) return;
  if (query.wait) {
    // A caller who hangs up before the job ends gives this thread back.
    // Its socket is looked for only once a wait lasts, not on every GET.
    std::unique_ptr<CallerSocket> caller;
    s = job->WaitDone([&] {
      if (!caller) {
        caller.reset(
            new CallerSocket(req.local_addr, req.local_port, req.remote_addr, req.remote_port));
      }
      return caller->HungUp();
    });
  }
  // Read before the entries are counted, so that "done" is never shown
  // over an output that misses some.
  const char* state = JobStateName(job->state());
  std::unique_ptr<OutputReader> opened;
  if (s.ok() && query.result == OutputReader::kAll) {
    s = job->OpenOutput(query.offset, query.limit, query.format, &opened);
  } else if (s.ok()) {
    // Which entries match is known only by reading them: the reader reads
    // every entry stored so far and pages within the matching ones.
    s = job->OpenOutput(0, UINT64_MAX, query.format, &opened);
    if (s.ok()) opened->Filter(query.result, query.offset, query.limit);
  }
  if (!s.ok()) return ReplyError(res, s);
  std::shared_ptr<OutputReader> reader(std::move(opened));
  auto chunk = std::make_shared<std::string>();
  res.set_header("PMMAP-state", state);
  res.set_chunked_content_provider(
      query.format == OutputReader::kArray ? "application/json" : "application/x-ndjson",
      [reader, chunk](size_t, httplib::DataSink& sink) {
        bool failed = false;
        while (reader->Next(chunk.get(), &failed)) {
          // cpp-httplib takes an empty write for the end of the body.
          if (!chunk->empty()) return sink.write(chunk->data(), chunk->size());
        }
        if (failed) return false;
        sink.done();
        return true;
      });
}

void Server::Health(const httplib::Request&, std::string, httplib::Response& res) {
  Reply(res, 200, "{\"status\":\"ok\"}");
}

void Server::ShowMetrics(const httplib::Request&, std::string, httplib::Response& res) {
  std::map<std::string, uint64_t> jobs_by_state = {
      {"open", 0}, {"closing", 0}, {"done", 0}, {"cancelled", 0}};
  for (const auto& job : table_->List()) ++jobs_by_state[JobStateName(job->state())];
  std::string text = Metrics::Global().Render(jobs_by_state);
  text +=
      "# HELP pmmap_api_connections API connections open now.\n"
      "# TYPE pmmap_api_connections gauge\npmmap_api_connections " +
      std::to_string(http_.open_connections()) +
      "\n# HELP pmmap_api_connections_refused_total API connections refused past "
      "--max-connections.\n# TYPE pmmap_api_connections_refused_total counter\n"
      "pmmap_api_connections_refused_total " +
      std::to_string(http_.refused_connections()) + "\n";
  res.set_content(text, "text/plain; version=0.0.4");
}

void Server::ServePage(const httplib::Request& req, std::string, httplib::Response& res) {
  const std::string name = req.matches.size() > 1 ? req.matches[1].str() : "index.html";
  for (size_t i = 0; i < kPageFileCount; ++i) {
    const PageFile& file = kPageFiles[i];
    if (name != file.name) continue;
    // The page loads nothing from elsewhere, and the browser is told so
    // (its bars' widths are inline styles).
    res.set_header(
        "Content-Security-Policy",
        "default-src 'self'; img-src 'self' data: blob:; style-src 'self' 'unsafe-inline'; "
        "script-src 'self'; connect-src 'self'; frame-ancestors 'none'");
    res.set_header("Cache-Control", "no-cache");
    res.set_header("X-Content-Type-Options", "nosniff");
    res.set_content(reinterpret_cast<const char*>(file.data), file.size, file.content_type);
    return;
  }
  ReplyError(res, Status::NotFound("no page file \"" + name + "\""));
}

EventStreams::HungUp Server::CallerHungUp(const httplib::Request& req) {
  auto caller = std::make_shared<std::unique_ptr<CallerSocket>>();
  const std::string local_addr = req.local_addr;
  const std::string remote_addr = req.remote_addr;
  const int local_port = req.local_port;
  const int remote_port = req.remote_port;
  return [=] {
    if (!*caller) caller->reset(new CallerSocket(local_addr, local_port, remote_addr, remote_port));
    return (*caller)->HungUp();
  };
}

std::string Server::JobsSnapshot(const EventsQuery& query) {
  const auto now = std::chrono::steady_clock::now();
  {
    MutexLock lock(&snapshot_mutex_);
    if (!snapshot_.empty() && snapshot_query_.offset == query.offset &&
        snapshot_query_.limit == query.limit && now - snapshot_at_ < kSnapshotReuse) {
      return snapshot_;
    }
  }
  std::string snapshot = BuildJobsSnapshot(query);
  MutexLock lock(&snapshot_mutex_);
  snapshot_query_ = query;
  snapshot_at_ = now;
  snapshot_ = snapshot;
  return snapshot;
}

std::string Server::BuildJobsSnapshot(const EventsQuery& query) {
  const std::vector<std::shared_ptr<Job>> jobs = table_->List();  // oldest first
  const Clock::time_point now = Clock::now();
  std::string out = "{\"total\":" + std::to_string(jobs.size()) +
                    ",\"offset\":" + std::to_string(query.offset) + ",\"jobs\":[";
  for (uint64_t i = query.offset, shown = 0; i < jobs.size() && shown < query.limit; ++i, ++shown) {
    const std::shared_ptr<Job>& job = jobs[jobs.size() - 1 - i];
    std::string json = job->ToJson();
    json.pop_back();  // its closing brace: the stats' summary joins the object
    out.append(shown > 0 ? "," : "").append(json).append(",\"stats\":");
    out.append(job->stats().SummaryJson(now)).push_back('}');
  }
  out.append("]}");
  return out;
}

std::string Server::JobSnapshot(const std::string& id) {
  std::shared_ptr<Job> job = table_->Find(id);
  if (!job) return std::string();
  return "{\"job\":" + job->ToJson() + ",\"stats\":" + job->stats().ToJson(Clock::now()) + "}";
}

void Server::StreamJobsEvents(const httplib::Request& req, std::string, httplib::Response& res) {
  EventsQuery query;
  Status s = ParseEventsQuery(req.params, &query);
  if (!s.ok()) return ReplyError(res, s);
  events_.Serve(
      res, [this, query] { return JobsSnapshot(query); }, CallerHungUp(req));
}

void Server::StreamJobEvents(const httplib::Request& req, std::string, httplib::Response& res) {
  std::shared_ptr<Job> job = FindJob(req, res);
  if (!job) return;
  const std::string id = job->id();
  events_.Serve(
      res, [this, id] { return JobSnapshot(id); }, CallerHungUp(req));
}

void Server::ShowJobStats(const httplib::Request& req, std::string, httplib::Response& res) {
  if (auto job = FindJob(req, res)) Reply(res, 200, job->stats().ToJson(Clock::now()));
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
