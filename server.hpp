// Server is pmmap's HTTP API and its life: it owns the Dispatcher (the
// webhook threads), the JobTable and the cpp-httplib server, serves the
// routes of one table (kRoutes in server.cpp, which drives both their
// registration and the 404/405 answers; the handlers are in
// server_routes.cpp), expires old jobs, and runs the shutdown when SIGINT or
// SIGTERM comes.
//
// main calls Start, then Run, from one thread; everything else runs on the
// server's own threads: the HTTP pool's (handlers), a signal thread and a
// housekeeper, which expires jobs and then runs the shutdown's steps.

#ifndef PMMAP_SERVER_HPP_
#define PMMAP_SERVER_HPP_

#include <httplib.h>
#include <signal.h>

#include <memory>
#include <regex>
#include <string>
#include <vector>

#include "api_server.hpp"
#include "dispatcher.hpp"
#include "events.hpp"
#include "flags.hpp"
#include "job_table.hpp"
#include "mutex.hpp"
#include "status.hpp"

// Answers with status and json, ended by a newline so that curl's output
// ends its line. Shared by the routes' registration and their handlers.
void Reply(httplib::Response& res, int status, std::string json);
// Answers with s's HTTP status (the one mapping, in server.cpp) and its
// message as JSON.
void ReplyError(httplib::Response& res, const Status& s);

class Server {
 public:
  explicit Server(Flags flags);
  // Removes the data dir if the server made it.
  ~Server();
  Server(const Server&) = delete;
  Server& operator=(const Server&) = delete;

  // Blocks the stop signals in every thread to come, prepares the data dir
  // and binds the listening socket. Returns false with *error if it could
  // not; then the process should exit 1.
  bool Start(std::string* error);
  // Serves until a stop signal, then shuts down: stops every job (waking
  // their waiters), lets calls in flight finish for a grace period, aborts
  // the rest, and lets API connections drain. Returns the exit code.
  int Run();

  // A route handler. body is the request's whole body, read before the
  // handler runs whatever its Content-Type, and empty for a GET.
  using Handler = void (Server::*)(const httplib::Request& req, std::string body,
                                   httplib::Response& res);
  // A route's handler of a body read as it arrives, for the routes that
  // take bodies of any size. It answers and returns true if the request is
  // one it streams; else it returns false, having read nothing, and the
  // route's Handler gets the body whole, within --max-body, as usual.
  using StreamHandler = bool (Server::*)(const httplib::Request& req,
                                         const httplib::ContentReader& reader,
                                         httplib::Response& res);
  struct Route {
    const char* method;
    const char* pattern;  // a regex over the path; its groups are the handler's
    Handler handler;
    StreamHandler streamed = nullptr;
  };

 private:
  // Every route of the API.
  static const Route kRoutes[];

  // The routes' handlers, one a route.
  void CreateJob(const httplib::Request& req, std::string body, httplib::Response& res);
  void ListJobs(const httplib::Request& req, std::string body, httplib::Response& res);
  void ShowJob(const httplib::Request& req, std::string body, httplib::Response& res);
  void DeleteJob(const httplib::Request& req, std::string body, httplib::Response& res);
  void AddInputs(const httplib::Request& req, std::string body, httplib::Response& res);
  bool StreamInputs(const httplib::Request& req, const httplib::ContentReader& reader,
                    httplib::Response& res);
  void CompleteJob(const httplib::Request& req, std::string body, httplib::Response& res);
  void CancelJob(const httplib::Request& req, std::string body, httplib::Response& res);
  void RedriveJob(const httplib::Request& req, std::string body, httplib::Response& res);
  void PauseJob(const httplib::Request& req, std::string body, httplib::Response& res);
  void ResumeJob(const httplib::Request& req, std::string body, httplib::Response& res);
  void ChangeJob(const httplib::Request& req, std::string body, httplib::Response& res);
  void StreamOutput(const httplib::Request& req, std::string body, httplib::Response& res);
  void Health(const httplib::Request& req, std::string body, httplib::Response& res);
  void ShowMetrics(const httplib::Request& req, std::string body, httplib::Response& res);
  // The page at / and its files (page.hpp), its live feeds and a job's stats.
  void ServePage(const httplib::Request& req, std::string body, httplib::Response& res);
  void StreamJobsEvents(const httplib::Request& req, std::string body, httplib::Response& res);
  void StreamJobEvents(const httplib::Request& req, std::string body, httplib::Response& res);
  void ShowJobStats(const httplib::Request& req, std::string body, httplib::Response& res);

  // What GET /events shows: the page of jobs that query asks for, newest
  // first, each with its stats' summary, and how many jobs there are.
  // Streams that ask for the same page within kSnapshotReuse share one
  // (BuildJobsSnapshot), so that many open pages cost one a second.
  std::string JobsSnapshot(const EventsQuery& query);
  std::string BuildJobsSnapshot(const EventsQuery& query);
  // What GET /job/{id}/events shows: the job and its stats; "" once it is gone.
  std::string JobSnapshot(const std::string& id);
  // Whether the caller of req hung up; finds its socket on the first call.
  static EventStreams::HungUp CallerHungUp(const httplib::Request& req);

  // Does act to the job named in the path and answers with the job, or
  // with act's refusal (complete, cancel, pause and resume).
  void ActOnJob(const httplib::Request& req, Status (Job::*act)(), httplib::Response& res);
  // The job named by the path's first group, or null after answering 404.
  std::shared_ptr<Job> FindJob(const httplib::Request& req, httplib::Response& res);
  // Registers every route of kRoutes, and the answers to what none takes.
  void InstallRoutes();
  // Why req may not pass for want of the API token (--api-token), or "" if
  // it may: no token is set, the route is open, or the token is right.
  std::string Unauthorized(const httplib::Request& req) const;
  // Answers a request no route took: 405 with Allow if a route has its
  // path, else 404, as JSON.
  void AnswerUnrouted(const httplib::Request& req, httplib::Response& res);
  // Makes or opens the data dir and proves that files can be created in it;
  // false, saying why in *error, if not.
  bool PrepareDataDir(std::string* error);
  bool Bind(std::string* error);

  // The shutdown's steps, in order.
  void WaitForStopSignal();
  void ExpireJobsUntilStopping();
  void StopJobsAndListening();
  void FinishCallsInFlight();
  void DrainConnections();

  Flags flags_;
  EventStreams events_;        // bounded by flags_.http_threads: after it
  sigset_t stop_signals_;      // SIGINT and SIGTERM, blocked by Start
  bool own_data_dir_ = false;  // made by Start, removed by the destructor
  int bound_port_ = 0;
  std::unique_ptr<Dispatcher> dispatcher_;
  std::unique_ptr<JobTable> table_;            // after dispatcher_: destroyed first
  std::shared_ptr<const NetRules> net_rules_;  // shared with every WebhookClient
  unsigned char token_digest_[32];             // SHA-256 of flags_.api_token
  ApiServer http_;
  // Each path pattern of kRoutes, compiled, with the methods it allows ("GET, DELETE").
  std::vector<std::pair<std::regex, std::string>> allowed_methods_;

  // The last jobs snapshot of GET /events, for JobsSnapshot to share.
  Mutex snapshot_mutex_;
  EventsQuery snapshot_query_ GUARDED_BY(snapshot_mutex_);
  std::chrono::steady_clock::time_point snapshot_at_ GUARDED_BY(snapshot_mutex_);
  std::string snapshot_ GUARDED_BY(snapshot_mutex_);

  Mutex stop_mutex_;
  CondVar stop_cv_{&stop_mutex_};
  bool stopping_ GUARDED_BY(stop_mutex_) = false;   // a stop signal came
  bool http_done_ GUARDED_BY(stop_mutex_) = false;  // listen_after_bind returned
};

#endif  // PMMAP_SERVER_HPP_
