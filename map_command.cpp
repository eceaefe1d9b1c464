#include "map_command.hpp"

#include <poll.h>
#include <rapidjson/document.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "dispatcher.hpp"
#include "flags.hpp"
#include "job.hpp"
#include "json.hpp"
#include "line_inputs.hpp"
#include "log.hpp"
#include "request.hpp"
#include "webhook.hpp"

namespace {

using std::chrono::milliseconds;

constexpr char kUsage[] =
    "usage: pmmap map URL [--concurrency N] [--maxsize N] [--secret S] [--timeout-ms N]\n"
    "                 [--max-attempts N] [--backoff-ms N] [--max-backoff-ms N]\n"
    "                 [--rate-per-sec X] [--max-outage-ms N] [--adaptive true|false]\n"
    "                 [--lines] [--progress] < inputs.ndjson > outputs.ndjson\n"
    "Runs one job through the webhook URL: an input a line of stdin, {\"key\": ..., \"value\": "
    "...}\n"
    "(with --lines, any line: its number is the key, the line a string value); an outcome a\n"
    "line of stdout, as GET /job/{id}/output?format=ndjson gives them. Exits 0 if every input\n"
    "succeeded, 1 if some failed (or on SIGINT), 2 on bad usage or a bad input line.\n";

// stdin is read in blocks of this many bytes.
constexpr size_t kReadBytes = 64 * 1024;
// How often the outcome file is looked at for new lines, and the progress
// line redrawn. The job has no way to signal a new outcome; polling keeps
// it untouched, and a 20 ms delay of an outcome on stdout is not seen.
constexpr milliseconds kOutputPoll{20};
constexpr milliseconds kProgressEvery{250};
// Without a server, the job's every-second Tick (outcomes written out,
// a failed write tried again) is called from the output thread.
constexpr milliseconds kTickEvery{1000};
// Inputs are handed to the job in batches of this many (fewer for a small maxsize).
constexpr size_t kBatchInputs = 64;
constexpr size_t kBatchBytes = 1 << 20;

// The job-field flags, each as the POST /job field it sets; the values are
// checked by ParseJobOptions, with POST /job's limits.
struct JobFlag {
  const char* flag;
  const char* field;
  bool is_string;
};
constexpr JobFlag kJobFlags[] = {
    {"--concurrency", "concurrency", false},
    {"--maxsize", "maxsize", false},
    {"--secret", "secret", true},
    {"--timeout-ms", "timeout_ms", false},
    {"--max-attempts", "max_attempts", false},
    {"--backoff-ms", "backoff_ms", false},
    {"--max-backoff-ms", "max_backoff_ms", false},
    {"--rate-per-sec", "rate_per_sec", false},
    {"--max-outage-ms", "max_outage_ms", false},
    {"--adaptive", "adaptive", false},
};

struct MapArgs {
  JobOptions options;
  bool lines = false;
  bool progress = false;
};

// ParseJobOptions names fields; the user typed flags. "timeout_ms: ..."
// becomes "--timeout-ms: ...".
std::string FlagMessage(const std::string& message) {
  for (const JobFlag& f : kJobFlags) {
    size_t n = strlen(f.field);
    if (message.compare(0, n + 1, std::string(f.field) + ":") == 0) {
      return f.flag + message.substr(n);
    }
  }
  return message;
}

// Adds "field": value to the JSON object text *json; a number is checked
// to be one, so that ParseJobOptions judges only its range.
bool AddField(const JobFlag& f, const std::string& value, std::string* json, std::string* error) {
  json->append(",");
  AppendJsonString(f.field, json);
  json->append(":");
  if (f.is_string) {
    AppendJsonString(value, json);
    return true;
  }
  rapidjson::Document number;
  number.Parse(value.c_str());
  if (number.HasParseError() || !(number.IsNumber() || number.IsBool())) {
    *error = std::string(f.flag) + ": expected a number (or true or false), not \"" + value + "\"";
    return false;
  }
  json->append(value);
  return true;
}

// Parses the arguments after "map" into *args: true, or false with *error.
bool ParseMapArgs(int argc, char** argv, MapArgs* args, std::string* error) {
  std::string url;
  std::string fields;
  for (int i = 0; i < argc; ++i) {
    std::string arg = argv[i];
    if (arg == "--lines" || arg == "--progress") {
      (arg == "--lines" ? args->lines : args->progress) = true;
      continue;
    }
    if (arg.compare(0, 2, "--") != 0) {
      if (!url.empty()) {
        *error = "one URL only (got \"" + url + "\" and \"" + arg + "\")";
        return false;
      }
      url = arg;
      continue;
    }
    // --flag value, or --flag=value.
    size_t eq = arg.find('=');
    std::string name = arg.substr(0, eq);
    const JobFlag* flag = nullptr;
    for (const JobFlag& f : kJobFlags) {
      if (name == f.flag) flag = &f;
    }
    if (flag == nullptr) {
      *error = "unknown flag " + name;
      return false;
    }
    if (eq == std::string::npos && i + 1 == argc) {
      *error = name + ": needs a value";
      return false;
    }
    std::string value = eq != std::string::npos ? arg.substr(eq + 1) : argv[++i];
    if (!AddField(*flag, value, &fields, error)) return false;
  }
  if (url.empty()) {
    *error = "the webhook URL is missing";
    return false;
  }
  std::string json = "{\"url\":";
  AppendJsonString(url, &json);
  Status s = ParseJobOptions(json + fields + "}", &args->options);
  if (!s.ok()) *error = FlagMessage(s.message());
  return s.ok();
}

// Writes all of [data, data+n) to fd; false on an error (EPIPE: the
// reader is gone).
bool WriteAll(int fd, const char* data, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, data, n);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) return false;
    data += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

// The counters of the job's JSON that the progress line and the exit code need.
struct Counts {
  uint64_t inputs = 0;
  uint64_t outputs = 0;
  uint64_t failed = 0;
  uint64_t retries = 0;
  std::string state;
  std::string circuit;  // "closed", "open" or "half_open"
};

Counts CountsOf(Job* job) {
  rapidjson::Document doc;
  doc.Parse(job->ToJson().c_str());
  Counts c;
  c.inputs = doc["inputs"].GetUint64();
  c.outputs = doc["outputs"].GetUint64();
  c.failed = doc["failed"].GetUint64();
  c.retries = doc["retries"].GetUint64();
  c.state = doc["state"].GetString();
  c.circuit = doc["circuit"].GetString();
  return c;
}

bool Ended(JobState state) { return state == JobState::kDone || state == JobState::kCancelled; }

// One run of `pmmap map`: the job, its workers, and the threads around it.
class MapRun {
 public:
  MapRun(MapArgs args, std::string dir);
  MapRun(const MapRun&) = delete;
  MapRun& operator=(const MapRun&) = delete;

  // Runs the job to its end; returns the exit code.
  int Run();

 private:
  // Reads stdin into the job until its end, a bad line or a cancel.
  void ReadInputs();
  // The output thread: copies outcome lines to stdout until the job ended
  // and all are copied, drawing the progress line meanwhile.
  void WriteOutputs();
  // Copies the entries from *written on to stdout; false if stdout failed.
  bool CopyOutcomes(uint64_t* written);
  void DrawProgress(bool last);
  // After the run: says what went wrong, if anything, and returns the exit code.
  int ExitCode();
  // The signal thread: cancels the job on SIGINT or SIGTERM.
  void WaitForSignal();

  const MapArgs args_;
  const std::string dir_;
  sigset_t signals_;
  std::unique_ptr<Dispatcher> dispatcher_;
  std::shared_ptr<Job> job_;
  bool draw_progress_ = false;
  bool progress_on_tty_ = false;
  // What ReadInputs has read, for the progress line's estimate of the total.
  std::atomic<uint64_t> bytes_read_{0};
  std::atomic<uint64_t> lines_read_{0};
  std::atomic<bool> input_ended_{false};
  uint64_t input_bytes_ = 0;  // stdin's size, if it is a regular file; else 0
  std::atomic<bool> interrupted_{false};
  std::atomic<bool> write_failed_{false};
  std::atomic<bool> finished_{false};  // the signal thread may go
  std::string input_error_;            // a bad line, said on stderr; exit 2
  std::vector<std::string> unsent_;    // keys read but refused after a cancel
  Clock::time_point started_ = Clock::now();
  Clock::time_point rate_at_ = started_;  // the calls/s window's start
  uint64_t rate_calls_ = 0;               // and the calls made by then
  double calls_per_sec_ = 0;
};

MapRun::MapRun(MapArgs args, std::string dir) : args_(std::move(args)), dir_(std::move(dir)) {
  struct stat st;
  if (fstat(0, &st) == 0 && S_ISREG(st.st_mode)) {
    off_t at = lseek(0, 0, SEEK_CUR);
    input_bytes_ = static_cast<uint64_t>(st.st_size - (at > 0 ? at : 0));
  }
  progress_on_tty_ = isatty(2) != 0;
  draw_progress_ = progress_on_tty_ || args_.progress;
}

int MapRun::Run() {
  // Signals go to the signal thread only; a closed stdout is an error, not death.
  sigemptyset(&signals_);
  sigaddset(&signals_, SIGINT);
  sigaddset(&signals_, SIGTERM);
  sigset_t blocked = signals_;
  sigaddset(&blocked, SIGPIPE);
  pthread_sigmask(SIG_BLOCK, &blocked, nullptr);

  Dispatcher::Options options;
  options.ca_file = FindCaBundle();
  options.max_reply_bytes = kDefaultMaxBody;
  options.proxy_from_env = ProxyInEnvironment();
  // The job's workers are all the budget it needs.
  dispatcher_.reset(new Dispatcher(options, static_cast<size_t>(args_.options.concurrency)));
  Dispatcher* dispatcher = dispatcher_.get();
  JobFiles files;
  files.dir = dir_;
  job_ = std::make_shared<Job>("map", args_.options, files, [dispatcher](std::shared_ptr<Job> job) {
    return dispatcher->StartWorker(std::move(job));
  });
  Status s = job_->Open();
  if (!s.ok()) {
    fprintf(stderr, "pmmap map: %s\n", s.message().c_str());
    return kMapSomeFailed;
  }
  std::thread signal_thread(&MapRun::WaitForSignal, this);
  std::thread output_thread(&MapRun::WriteOutputs, this);
  ReadInputs();
  if (!interrupted_) job_->Complete();
  job_->WaitDone();
  output_thread.join();
  // The signal thread is told to go by one more signal, aimed at it.
  interrupted_ = interrupted_.load();
  finished_ = true;
  pthread_kill(signal_thread.native_handle(), SIGTERM);
  signal_thread.join();
  dispatcher_.reset();  // joins the workers
  return ExitCode();
}

int MapRun::ExitCode() {
  if (write_failed_) {
    fprintf(stderr, "pmmap map: cannot write to stdout: %s\n", strerror(EPIPE));
    return kMapSomeFailed;
  }
  if (!input_error_.empty()) {
    fprintf(stderr, "pmmap map: stdin: %s\n", input_error_.c_str());
    return kMapBadUsage;
  }
  if (interrupted_) {
    // Inputs read but refused once the job was cancelled get their entries too.
    std::string entries;
    for (const std::string& key : unsent_) {
      entries.append(ErrorEntry(key, 0, "cancelled", "", 0)).push_back('\n');
    }
    WriteAll(1, entries.data(), entries.size());
    fprintf(stderr, "pmmap map: interrupted; the inputs not sent have \"cancelled\" entries\n");
    return kMapSomeFailed;
  }
  return CountsOf(job_.get()).failed > 0 ? kMapSomeFailed : kMapAllSucceeded;
}

void MapRun::WaitForSignal() {
  bool cancelled = false;
  for (;;) {
    int sig = 0;
    sigwait(&signals_, &sig);
    if (finished_) return;
    // A second signal means now.
    if (cancelled) _exit(kMapSomeFailed);
    cancelled = true;
    interrupted_ = true;
    job_->Cancel();
  }
}

void MapRun::ReadInputs() {
  LineInputs::Options options;
  options.format = args_.lines ? LineInputs::Format::kPlain : LineInputs::Format::kNdjson;
  options.max_line_bytes = kDefaultMaxBody;
  options.batch_inputs =
      std::min<size_t>(kBatchInputs, std::max<int64_t>(1, args_.options.maxsize / 4));
  options.batch_bytes = kBatchBytes;
  LineInputs lines(options, [this](const std::vector<Input>& batch) {
    // Room first, so that Add takes all of the batch or none of it.
    Status s = job_->WaitForRoom(batch.size());
    if (s.ok()) s = job_->Add(batch);
    if (!s.ok() && interrupted_) {
      for (const Input& input : batch) unsent_.push_back(input.key);
      return Status::Unavailable("interrupted");
    }
    return s;
  });
  std::vector<char> buffer(kReadBytes);
  bool whole = true;
  while (!interrupted_) {
    // A terminal or an idle pipe may not send for long: look for a cancel meanwhile.
    pollfd p = {0, POLLIN, 0};
    if (poll(&p, 1, static_cast<int>(kOutputPoll.count() * 5)) == 0) continue;
    ssize_t n = read(0, buffer.data(), buffer.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      input_error_ = std::string("cannot read: ") + strerror(errno);
      whole = false;
    }
    if (n <= 0) break;
    bytes_read_ += static_cast<uint64_t>(n);
    bool go = lines.Take(buffer.data(), static_cast<size_t>(n));
    lines_read_ = lines.lines();
    if (!go) break;
  }
  Status s = lines.Finish(whole && !interrupted_);
  lines_read_ = lines.lines();
  input_ended_ = true;
  if (!s.ok() && !interrupted_ && input_error_.empty()) input_error_ = s.message();
}

void MapRun::WriteOutputs() {
  uint64_t written = 0;
  Clock::time_point draw_at = Clock::now();
  Clock::time_point tick_at = Clock::now() + kTickEvery;
  const milliseconds draw_every = progress_on_tty_ ? kProgressEvery : kTickEvery;
  for (;;) {
    // Read before the entries are counted, so that none is missed at the end.
    bool ended = Ended(job_->state());
    uint64_t before = written;
    if (!write_failed_ && !CopyOutcomes(&written)) {
      write_failed_ = true;
      job_->Cancel();
    }
    Clock::time_point now = Clock::now();
    if (draw_progress_ && now >= draw_at) {
      DrawProgress(false);
      draw_at = now + draw_every;
    }
    if (now >= tick_at) {
      job_->Tick();
      tick_at = now + kTickEvery;
    }
    if (ended && (written == before || write_failed_)) break;
    if (written == before) std::this_thread::sleep_for(kOutputPoll);
  }
  if (draw_progress_) DrawProgress(true);
}

bool MapRun::CopyOutcomes(uint64_t* written) {
  std::unique_ptr<OutputReader> reader;
  if (!job_->OpenOutput(*written, UINT64_MAX, OutputReader::kNdjson, &reader).ok()) return true;
  std::string chunk;
  bool failed = false;
  while (reader->Next(&chunk, &failed)) {
    if (!WriteAll(1, chunk.data(), chunk.size())) return false;
    *written += static_cast<uint64_t>(std::count(chunk.begin(), chunk.end(), '\n'));
  }
  return true;
}

void MapRun::DrawProgress(bool last) {
  Counts c = CountsOf(job_.get());
  Clock::time_point now = Clock::now();
  const uint64_t calls = c.outputs + c.retries;
  double window = std::chrono::duration<double>(now - rate_at_).count();
  if (window >= 1 || last) {
    if (window > 0) calls_per_sec_ = (calls - rate_calls_) / window;
    if (!last) {
      rate_at_ = now;
      rate_calls_ = calls;
    }
  }
  // The total: exact once stdin ended; else, for a file, its lines so far
  // scaled to its size; else what was read so far.
  uint64_t total = c.inputs;
  const uint64_t bytes = bytes_read_;
  if (!input_ended_ && input_bytes_ > 0 && bytes > 0) {
    total = std::max<uint64_t>(total, lines_read_ * input_bytes_ / bytes);
  }
  double elapsed = std::chrono::duration<double>(now - started_).count();
  double done_per_sec = elapsed > 0 ? c.outputs / elapsed : 0;
  char eta[32] = "-";
  if (done_per_sec > 0 && total >= c.outputs) {
    snprintf(eta, sizeof(eta), "%.0fs", (total - c.outputs) / done_per_sec);
  }
  // The circuit shows only when it is not closed: the webhook is down.
  const std::string circuit = c.circuit == "closed" ? "" : ", circuit " + c.circuit;
  char line[320];
  snprintf(line, sizeof(line),
           "%llu/%llu%s done, %.0f calls/s, %llu failed, %llu retries, ETA %s%s",
           static_cast<unsigned long long>(c.outputs), static_cast<unsigned long long>(total),
           input_ended_ || input_bytes_ > 0 ? "" : "+", calls_per_sec_,
           static_cast<unsigned long long>(c.failed), static_cast<unsigned long long>(c.retries),
           eta, circuit.c_str());
  // On a terminal the line is redrawn in place; elsewhere each is a line.
  std::string out = progress_on_tty_ ? "\r" + std::string(line) + "\x1b[K" : line;
  if (last || !progress_on_tty_) out.push_back('\n');
  WriteAll(2, out.data(), out.size());
}

}  // namespace

int RunMapCommand(int argc, char** argv) {
  MapArgs args;
  std::string error;
  if (argc == 1 && (strcmp(argv[0], "--help") == 0 || strcmp(argv[0], "-h") == 0)) {
    fputs(kUsage, stdout);
    return kMapAllSucceeded;
  }
  if (!ParseMapArgs(argc, argv, &args, &error)) {
    fprintf(stderr, "pmmap map: %s\n%s", error.c_str(), kUsage);
    return kMapBadUsage;
  }
  // Per-failure log lines would bury the progress line; outcomes say all.
  SetLogFormat(LogFormat::kSilent);
  const char* tmp = getenv("TMPDIR");
  std::string dir = std::string(tmp != nullptr && *tmp ? tmp : "/tmp") + "/pmmap-map.XXXXXX";
  if (mkdtemp(&dir[0]) == nullptr) {
    fprintf(stderr, "pmmap map: cannot create %s: %s\n", dir.c_str(), strerror(errno));
    return kMapSomeFailed;
  }
  int code;
  {
    MapRun run(std::move(args), dir);
    code = run.Run();
  }  // the job's files go with it
  rmdir(dir.c_str());
  return code;
}
