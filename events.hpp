// EventStreams serves GET /events and GET /job/{id}/events as Server-Sent
// Events: a JSON snapshot (`data: {...}` and a blank line) at once, then
// once a second while it changes, and a `: keepalive` comment line after
// kKeepAlive without one, so that proxies and `curl -N` see the stream
// alive. It bounds how many streams are open at once, because each holds
// one of the API's threads for as long as its caller reads: past the bound
// Open refuses and the handler answers 503, so that pages left open cannot
// starve the quick requests. Stop, at shutdown, ends every stream.
//
// Thread-safe (provides internal synchronization): mutex_ guards the count
// and the stop flag; a stream's own state is its provider's alone.

#ifndef PMMAP_EVENTS_HPP_
#define PMMAP_EVENTS_HPP_

#include <httplib.h>

#include <chrono>
#include <functional>
#include <map>
#include <memory>
#include <string>

#include "mutex.hpp"
#include "status.hpp"
#include "thread_annotations.hpp"

// The most event streams open at once, whatever --http-threads allows
// (Server takes the smaller of this and half of --http-threads).
constexpr size_t kMaxEventStreams = 256;
// The jobs list's snapshot shows at most this many jobs, newest first,
// with the total; ?offset= and ?limit= page through the rest.
constexpr size_t kEventJobsLimit = 200;

// The query of GET /events: which page of the jobs, newest first.
struct EventsQuery {
  uint64_t offset = 0;
  uint64_t limit = kEventJobsLimit;
};
// Parses ?offset=N&limit=M (limit at most kEventJobsLimit); refuses
// anything else.
Status ParseEventsQuery(const std::multimap<std::string, std::string>& params, EventsQuery* query);

class EventStreams {
 public:
  // How often a snapshot is taken, and how long a stream may stay silent.
  static constexpr std::chrono::seconds kInterval{1};
  static constexpr std::chrono::seconds kKeepAlive{15};

  // A snapshot of what the stream shows, as one line of JSON; "" when the
  // thing watched is gone, which ends the stream after one last
  // `data: {"gone":true}`.
  using Snapshot = std::function<std::string()>;
  // Whether the caller hung up; asked every kInterval.
  using HungUp = std::function<bool()>;

  explicit EventStreams(size_t max_streams) : max_streams_(max_streams) {}
  EventStreams(const EventStreams&) = delete;
  EventStreams& operator=(const EventStreams&) = delete;

  // Makes res a stream of snapshot, or answers 503 when max_streams are
  // open already (or 503 after Stop). The stream ends when its caller hangs
  // up, when a write fails, when the snapshot is gone, or on Stop.
  void Serve(httplib::Response& res, Snapshot snapshot, HungUp hung_up);
  // Ends every stream (each within a moment) and refuses new ones.
  void Stop();
  size_t open();

 private:
  // Waits until deadline or Stop; false once stopped.
  bool WaitUntil(std::chrono::steady_clock::time_point deadline);
  void Close();

  const size_t max_streams_;
  Mutex mutex_;
  CondVar stop_cv_{&mutex_};  // Stop was called
  size_t open_ GUARDED_BY(mutex_) = 0;
  bool stopped_ GUARDED_BY(mutex_) = false;
};

#endif  // PMMAP_EVENTS_HPP_
