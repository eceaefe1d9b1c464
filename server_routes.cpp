// Server's route handlers, one a route of kRoutes (server.cpp), and what
// only they use. The rest of Server, its routes' registration and its life,
// is in server.cpp.

#include <algorithm>
#include <cctype>
#include <map>

#include "caller.hpp"
#include "line_inputs.hpp"
#include "log.hpp"
#include "metrics.hpp"
#include "page.hpp"
#include "redrive.hpp"
#include "request.hpp"
#include "server.hpp"

namespace {

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

}  // namespace

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
