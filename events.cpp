#include "events.hpp"

#include <cstdlib>

#include "json.hpp"

namespace {

using SteadyClock = std::chrono::steady_clock;

// A stream's own state, which only its provider touches (cpp-httplib calls
// a provider from one thread at a time).
struct Stream {
  EventStreams::Snapshot snapshot;
  EventStreams::HungUp hung_up;
  std::string last;  // the snapshot sent last
  SteadyClock::time_point last_write;
  bool started = false;
};

bool ParseCount(const std::string& text, uint64_t* value) {
  if (text.empty() || text.size() > 18 ||
      text.find_first_not_of("0123456789") != std::string::npos) {
    return false;
  }
  *value = strtoull(text.c_str(), nullptr, 10);
  return true;
}

}  // namespace

Status ParseEventsQuery(const std::multimap<std::string, std::string>& params, EventsQuery* query) {
  EventsQuery parsed;
  for (const auto& param : params) {
    if (params.count(param.first) > 1) {
      return Status::Invalid("query parameter " + param.first + ": given twice");
    }
    if (param.first == "offset") {
      if (!ParseCount(param.second, &parsed.offset)) {
        return Status::Invalid("offset: expected a count (0 or more)");
      }
    } else if (param.first == "limit") {
      if (!ParseCount(param.second, &parsed.limit) || parsed.limit > kEventJobsLimit) {
        return Status::Invalid("limit: expected a count from 0 to " +
                               std::to_string(kEventJobsLimit));
      }
    } else {
      std::string name;
      AppendJsonString(param.first, &name);
      return Status::Invalid("unknown query parameter " + name + " (known: offset, limit)");
    }
  }
  *query = parsed;
  return Status::OK();
}

void EventStreams::Serve(httplib::Response& res, Snapshot snapshot, HungUp hung_up) {
  {
    MutexLock lock(&mutex_);
    if (stopped_ || open_ >= max_streams_) {
      res.status = 503;
      res.set_content(ErrorJson(stopped_ ? "the server is shutting down"
                                         : "too many event streams open (at most " +
                                               std::to_string(max_streams_) + ")") +
                          "\n",
                      "application/json");
      return;
    }
    ++open_;
  }
  auto stream = std::make_shared<Stream>();
  stream->snapshot = std::move(snapshot);
  stream->hung_up = std::move(hung_up);
  res.set_header("Cache-Control", "no-cache");
  res.set_header("X-Accel-Buffering", "no");  // nginx in front: pass each event at once
  // cpp-httplib calls the provider again as long as it returns true and
  // the server runs; it compresses no text/event-stream, so each event
  // leaves at once.
  res.set_chunked_content_provider(
      "text/event-stream",
      [this, stream](size_t, httplib::DataSink& sink) {
        if (stream->started) {
          if (!WaitUntil(SteadyClock::now() + kInterval)) {
            sink.done();
            return true;
          }
          if (stream->hung_up()) return false;
        }
        stream->started = true;
        std::string snap = stream->snapshot();
        std::string message;
        if (snap.empty()) {
          message = "data: {\"gone\":true}\n\n";
          if (!sink.write(message.data(), message.size())) return false;
          sink.done();
          return true;
        }
        const SteadyClock::time_point now = SteadyClock::now();
        if (snap != stream->last) {
          message = "data: " + snap + "\n\n";
          stream->last.swap(snap);
        } else if (now - stream->last_write >= kKeepAlive) {
          message = ": keepalive\n\n";
        } else {
          return true;  // nothing new: wait for the next tick
        }
        stream->last_write = now;
        return sink.write(message.data(), message.size());
      },
      [this](bool) { Close(); });
}

bool EventStreams::WaitUntil(SteadyClock::time_point deadline) {
  MutexLock lock(&mutex_);
  while (!stopped_) {
    if (!stop_cv_.WaitUntil(deadline)) break;
  }
  return !stopped_;
}

void EventStreams::Close() {
  MutexLock lock(&mutex_);
  --open_;
}

void EventStreams::Stop() {
  MutexLock lock(&mutex_);
  stopped_ = true;
  stop_cv_.SignalAll();
}

size_t EventStreams::open() {
  MutexLock lock(&mutex_);
  return open_;
}
