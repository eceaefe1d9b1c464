// A Job is one batch: its settings, its bounded queue of inputs waiting to
// be sent, its counters, and its outcome file, where every input ends as
// exactly one line of JSON (output.hpp). It is passive: HTTP handlers call
// the API side (Add, Complete, Cancel, WaitDone, OpenOutput, ToJson), the
// job table calls Discard and AbandonCalls, and the Dispatcher's worker
// threads call the worker side (NextInput, StoreOutcome, RetryLater).
//
// How a job moves between states (JobState):
//
//   open --Complete--> closing --every outcome stored--> done
//     |                   |
//     +------Cancel-------+--> cancelled (each input left gets a "cancelled" entry)
//
// Done and cancelled are the ended states: entering one runs the EndHook,
// once. Apart from that lifecycle, the job table may discard a job in any
// state (Discard, with why: deleted, expired, shutdown): it then stores
// nothing more, never ends, answers every waiter, and its files are removed
// (a durable job's stay on shutdown). A durable job (JobFiles) also
// journals its accepted inputs and saves its state on every change, so
// that a restarted server can Resume it where it stopped.
// Within a state, the job's Circuit (circuit.hpp) judges the webhook's
// health from each call's end: when it opens, no call starts but a probe,
// inputs come back unspent, and once it has been open for max_outage_ms
// every input left fails. It also sets how many calls may be in flight
// (effective concurrency, under the ceiling concurrency). Pause stops
// calls by hand; Change alters the live settings, which workers copy
// between calls (RefreshOptions).
// Two flags, read without the lock by calls in flight, say what must be
// abandoned: calls_abandoned (set by Cancel, by Discard, and by
// AbandonCalls) and callback_abandoned (set by Discard and AbandonCalls).
// A shutdown's Discard sets neither, so that calls in flight may finish
// within a grace period; AbandonCalls ends it.
//
// Thread-safe (provides internal synchronization): the fields marked
// GUARDED_BY(mutex_) are read and written only with mutex_ held, which
// clang's -Wthread-safety checks (make lint). Methods wait only on
// condition variables, which release the mutex; with it held they do no
// more than file writes (an outcome buffer written out, a batch appended
// to the journal in one write, the record saved on a state change) and,
// when the job ends, the EndHook; the journal's fdatasync under --fsync
// always is waited for without it. Nothing here calls the webhook, so a
// blocked Add never delays ToJson for long.

#ifndef PMMAP_JOB_HPP_
#define PMMAP_JOB_HPP_

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <deque>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "circuit.hpp"
#include "job_stats.hpp"
#include "key_table.hpp"
#include "mutex.hpp"
#include "output.hpp"
#include "status.hpp"
#include "thread_annotations.hpp"

// Defaults of the fields of POST /job (request.hpp holds their limits).
constexpr int kDefaultConcurrency = 1;
constexpr int64_t kDefaultMaxsize = 1000;
constexpr int64_t kDefaultTimeoutMs = 30000;
constexpr int kDefaultMaxAttempts = 5;
constexpr int64_t kDefaultBackoffMs = 100;
constexpr int64_t kDefaultMaxBackoffMs = 30000;
constexpr int64_t kDefaultMaxOutageMs = 10 * 60 * 1000;

struct JobOptions {
  std::string url;
  std::string secret;
  int concurrency = kDefaultConcurrency;
  int64_t maxsize = kDefaultMaxsize;
  int64_t timeout_ms = kDefaultTimeoutMs;
  int max_attempts = kDefaultMaxAttempts;
  int64_t backoff_ms = kDefaultBackoffMs;
  int64_t max_backoff_ms = kDefaultMaxBackoffMs;
  double rate_per_sec = 0;   // 0: no rate limit
  std::string callback_url;  // empty: no completion callback
  // How long the circuit may stay open before every input left fails; 0
  // turns the circuit breaker off (circuit.hpp).
  int64_t max_outage_ms = kDefaultMaxOutageMs;
  bool adaptive = true;  // whether concurrency is a ceiling the limit adapts under
  // Not a field of POST /job: the id of the job that POST /job/{id}/redrive
  // made this one from, or empty.
  std::string redrive_of;
};

// The completion callback's progress, shown in the job JSON.
struct CallbackStatus {
  enum State { kWaiting, kSending, kSucceeded, kFailed };
  State state = kWaiting;
  int attempts = 0;
  long status = 0;      // the last reply's HTTP status; 0 when none came
  std::string message;  // why it failed
};

struct Input {
  std::string key;
  std::string value;             // compact JSON, sent as the body
  int attempts = 0;              // attempts spent so far (max_attempts bounds them)
  int calls = 0;                 // calls made so far, spent or not (PMMAP-attempt)
  Clock::time_point not_before;  // earliest start of the next attempt
  size_t in_flight_slot = 0;     // the Job's bookkeeping while it is sent
  Circuit::Ticket ticket;        // the circuit's, while it is sent
};

// How a call ended, for the job's circuit (circuit.hpp).
struct CallEnd {
  Signal signal = Signal::kAnswer;
  std::string error;  // what went wrong, unless signal is kAnswer
  bool spent = true;  // RetryLater only: false if the attempt does not count
};

enum class JobState { kOpen, kClosing, kDone, kCancelled };
const char* JobStateName(JobState state);

class Journal;
class JournalReader;
enum class FsyncPolicy;  // journal.hpp
struct JobRecord;        // job_store.hpp

// Where a job keeps its files (job_store.hpp names them), and whether they
// outlive the process. A durable job also journals every accepted input
// and saves its settings and state, so that a restarted pmmap resumes it;
// its files stay on shutdown. Without durability only the outcome file
// exists, and it is removed whenever the job goes.
struct JobFiles {
  std::string dir;
  bool durable = false;
  FsyncPolicy fsync{};  // durable only: when an accepted batch reaches the disk
};

class Job : public std::enable_shared_from_this<Job> {
 public:
  // Starts one more worker thread for the job; returns false if it could not.
  using WorkerStarter = std::function<bool(std::shared_ptr<Job>)>;
  // Called once, with mutex_ held, when the job becomes done or cancelled.
  // Lock order: a job's mutex_ may be held while the hook takes others, so
  // no other lock may be held while calling into a Job.
  // Returns false if it could not start the completion callback.
  using EndHook = std::function<bool(std::shared_ptr<Job>)>;
  // Why the job table let go of a job: DELETE, its TTL, or the server stopping.
  enum class DiscardReason { kNone, kDeleted, kExpired, kShutdown };

  // The job keeps its files in files.dir, made by Open or read back by Resume.
  Job(std::string id, JobOptions options, JobFiles files, WorkerStarter start_worker);
  ~Job();
  Job(const Job&) = delete;
  Job& operator=(const Job&) = delete;

  // Creates the job's files. Call once, before anything else, or Resume.
  Status Open();
  // Reads back the files of a durable job that a previous process left, as
  // described by record: counts and outcomes as stored, and every journaled
  // input without an outcome to be sent again, in journal order, read
  // lazily so that at most maxsize of them are in memory. Torn tails are
  // cut off. An open job accepts more inputs; a closing one finishes; an
  // ended one stays readable. Call once, after SetEndHook, instead of Open.
  Status Resume(const JobRecord& record);
  // Sets the hook called when the job ends. Call before anything can end
  // the job (Add, Complete, Cancel).
  void SetEndHook(EndHook on_end) { on_end_ = std::move(on_end); }

  const std::string& id() const { return id_; }
  // The job's settings as they are now (Change alters some of them).
  JobOptions options();
  // Copies the settings into *options if they changed since *version, as
  // a worker does between calls, and updates *version. Returns whether
  // they changed.
  bool RefreshOptions(uint32_t* version, JobOptions* options);

  // API side.

  // Queues the batch, blocking while the queue is full, and returns once all
  // of it is queued. The batch is checked whole first (the job is open, no
  // key comes again, from an earlier batch or earlier in this one, with a
  // different value), so a refused batch adds nothing. An input whose key
  // came before with the same value is a repeat: accepted, but neither
  // queued nor counted again, so that a client may resend a PUT.
  Status Add(std::vector<Input> batch);
  // Blocks until the queue has room for n inputs, so that an Add of n
  // will not wait (unless another Add takes the room first). Returns at
  // once if the job is not open; Add then says why. give_up, if given, is
  // asked every kGiveUpInterval, without the job's lock, whether to stop
  // waiting (the caller hung up): then returns Unavailable. For a streamed
  // PUT, whose caller must be able to leave while it waits for room.
  // n > max(1, maxsize / 4) is waited for as that: workers wake waiters
  // once a quarter of the queue is free.
  Status WaitForRoom(size_t n, const std::function<bool()>& give_up = nullptr);
  // No more inputs will come. Harmless to repeat.
  Status Complete();
  // Stops sending: every input without an outcome gets a "cancelled" error
  // entry at once, and calls in flight are abandoned.
  Status Cancel();
  // Stops starting calls until Unpause; calls in flight finish, and Add
  // keeps queuing while there is room. A paused job's outage clock stops.
  // Conflict if the job has ended.
  Status Pause();
  Status Unpause();
  // Changes the live settings (concurrency, rate_per_sec, timeout_ms,
  // max_attempts, backoff_ms, max_backoff_ms, max_outage_ms, adaptive) as
  // edit does to a copy of the settings, under the job's lock, so that
  // changes never cross; a refusal from edit changes nothing, and so do
  // its changes to any other field. Conflict if the job has ended.
  Status Change(const std::function<Status(JobOptions*)>& edit);
  // Takes the job out of service for reason (never kNone), the job table
  // having removed it: stores nothing more, wakes every waiter (they answer
  // 404 for kDeleted and kExpired, 503 for kShutdown) and removes the
  // job's files (a durable job's stay on kShutdown, for the next start). Calls in flight and the
  // completion callback are abandoned, except on kShutdown, which leaves them a grace period: call
  // AbandonCalls when it is over. Only the first call counts.
  void Discard(DiscardReason reason);
  // Abandons every call of the job in flight, the completion callback's
  // too. Safe from any thread, with or without the job's lock.
  void AbandonCalls() {
    calls_abandoned_ = true;
    callback_abandoned_ = true;
  }
  // The server calls it every second: flushes a durable job's journal to
  // disk if it changed (--fsync everysec), writes out the outcomes stored
  // since, and tries again when a write failed (a full disk). Safe from
  // any thread.
  void Tick();
  // True if the job ended (done or cancelled) at or before cutoff.
  bool EndedBy(std::chrono::system_clock::time_point cutoff);
  // Waits for duration unless the job is discarded first; returns false if it was.
  bool SleepUnlessDiscarded(Clock::duration duration);
  // Records the completion callback's progress.
  void SetCallbackStatus(const CallbackStatus& status);
  // Blocks until the job is done or cancelled. If give_up is given, it is
  // asked every kGiveUpInterval, without the job's lock, whether to stop
  // waiting; if it says so, returns Unavailable.
  Status WaitDone(const std::function<bool()>& give_up = nullptr);
  static constexpr std::chrono::milliseconds kGiveUpInterval{1000};
  // Opens the outcome file for reading the entries [offset, offset+limit)
  // stored so far.
  Status OpenOutput(uint64_t offset, uint64_t limit, OutputReader::Format format,
                    std::unique_ptr<OutputReader>* reader);
  // Opens a reader over the inputs whose values the job kept, in the order
  // accepted: a durable job's journal (every input), or else the journal
  // of the inputs whose outcome is a failure (FailuresPath). Sets *reader
  // to null if there is none (no failure yet).
  Status OpenKeptInputs(std::unique_ptr<JournalReader>* reader);
  // The job as JSON, its counters read at one instant. Never shows the secret.
  std::string ToJson();
  JobState state();

  // Worker side.

  // Blocks until an input may be sent, then moves it into *input and counts
  // it in flight. Returns false when the worker should exit.
  bool NextInput(Input* input);
  // Stores entry as the outcome of *input, given by NextInput, whose call
  // ended as end says. Does nothing if *input is no longer in flight
  // (cancelled, discarded, stored before). If the circuit is open and the
  // call got no real answer, puts *input back instead, the attempt unspent.
  void StoreOutcome(Input* input, const std::string& entry, bool success,
                    const CallEnd& end = CallEnd());
  // Puts *input back to be sent again after delay. If pause_job, nothing of
  // this job is sent before then (the webhook asked it to slow down). The
  // attempt counts unless end.spent is false or the circuit is open.
  void RetryLater(Input* input, Clock::duration delay, bool pause_job,
                  const CallEnd& end = CallEnd());
  // StoreOutcome or RetryLater, then NextInput, under one lock: a worker's
  // step from one input to the next takes the job's mutex once, not twice,
  // which halves the contention between many workers.
  // If spent is given, the stored input's value is moved there, so that the
  // caller frees it without the lock. Until then a worker leaves the value
  // of an input in flight as it is: a cancel reads it.
  bool StoreOutcomeAndNext(Input* input, const std::string& entry, bool success,
                           const CallEnd& end = CallEnd(), std::string* spent = nullptr);
  bool RetryLaterAndNext(Input* input, Clock::duration delay, bool pause_job,
                         const CallEnd& end = CallEnd());
  // Hands back *input, given by NextInput and not sent, to be sent first:
  // nothing is spent. The worker leaves, yielding its slot of the
  // Dispatcher's budget; it stays counted in workers_, since the Dispatcher
  // starts another for the job when its turn comes.
  void GiveBack(Input* input);
  // The page's numbers of the job's calls (job_stats.hpp): the workers
  // record each finished attempt. Internally synchronized.
  JobStats& stats() { return stats_; }
  // True once calls in flight must be abandoned. Safe from any thread.
  const std::atomic<bool>& calls_abandoned() const { return calls_abandoned_; }
  // True once the completion callback must be abandoned too.
  const std::atomic<bool>& callback_abandoned() const { return callback_abandoned_; }

 private:
  // Entries are indexed every kIndexStride, so that an offset is found
  // without reading the file from the start.
  static constexpr uint64_t kIndexStride = 1024;
  // How often a job paused by a failed outcome write tries it again.
  static constexpr std::chrono::seconds kStorageRetry{1};

  // NextInput, StoreOutcome and RetryLater, for a caller holding mutex_.
  bool NextInputLocked(Input* input) REQUIRES(mutex_);
  void StoreOutcomeLocked(Input* input, const std::string& entry, bool success, const CallEnd& end)
      REQUIRES(mutex_);
  void RetryLaterLocked(Input* input, Clock::duration delay, bool pause_job, const CallEnd& end)
      REQUIRES(mutex_);
  // Tells the circuit how *input's call ended; returns true if *input must
  // go back to the queue, its attempt unspent (the circuit is open).
  bool RecordCall(Input* input, const CallEnd& end) REQUIRES(mutex_);
  // Queues *input again at once, its attempt unspent.
  void PutBack(Input* input) REQUIRES(mutex_);
  // Whether a call may start at now: no Retry-After pause, the circuit
  // allows it (*probe: as its probe), and the rate limiter has a token.
  // If not, may set *wake to when to ask again.
  bool MayCall(Clock::time_point now, Clock::time_point* wake, bool* probe) REQUIRES(mutex_);
  // The circuit stayed open for max_outage_ms: every input without an
  // outcome fails, and the circuit closes.
  void GiveUpOutage() REQUIRES(mutex_);
  // An input's hashes (key_table.hpp), and whether its key came before with
  // the same value: then it is accepted but neither queued nor counted again.
  struct InputHashes {
    uint64_t key = 0;
    uint64_t value = 0;
    bool repeat = false;
  };
  // Add's parts, in order. HashBatch, which needs no lock, fills (*hashes)[i]
  // with batch[i]'s hashes and marks the inputs whose key came earlier in the
  // batch with the same value; it returns the index of the first input
  // whose key came earlier in the batch with a different value, or
  // batch.size().
  static size_t HashBatch(const std::vector<Input>& batch, std::vector<InputHashes>* hashes);
  // Refuses the batch unless the job is open and no key comes again with a
  // different value (first_clash: what HashBatch returned); marks the inputs
  // whose key was accepted before with the same value.
  Status CheckBatch(const std::vector<Input>& batch, size_t first_clash,
                    std::vector<InputHashes>* hashes) REQUIRES(mutex_);
  // Drops the batch's repeats, and their hashes, keeping the new inputs in
  // order; Add records their keys once they are journaled.
  static void KeepNewInputs(std::vector<InputHashes>* hashes, std::vector<Input>* batch);
  // Queues the n inputs from first on and wakes workers for them. Returns
  // how many more workers to start, already counted in workers_.
  int Enqueue(Input* first, size_t n) REQUIRES(mutex_);
  // Gives input an error outcome saying message.
  void StoreFailure(const Input& input, const std::string& message) REQUIRES(mutex_);
  // Gives every input without an outcome (in flight, waiting, queued, in
  // the backlog) an error outcome saying message.
  void FailEveryInputLeft(const std::string& message) REQUIRES(mutex_);
  // Non-durable jobs: appends inputs[first, last), whose outcomes are
  // failures, to failures_, opening it at the first. A durable job's
  // journal holds them already.
  void KeepFailed(const std::vector<Input>& inputs, size_t first, size_t last) REQUIRES(mutex_);
  // Moves inputs from the backlog to the queue until it holds maxsize.
  void RefillQueue() REQUIRES(mutex_);
  // Gives every input of the backlog an error outcome saying message.
  void FailBacklog(const std::string& message) REQUIRES(mutex_);
  // Forgets the backlog; what is left of it (a read failed: error) is lost.
  void DropBacklog(const std::string& error) REQUIRES(mutex_);
  // Resume's parts: the journal's records (records of them) into keys_;
  // the outcome file's counts and index, marking in keys_ the keys that
  // have an outcome if mark_keys (*marked: how many); then sending or
  // ending what is left.
  Status ReadBackJournal(uint64_t records) REQUIRES(mutex_);
  Status ReadBackOutcomes(bool mark_keys, uint64_t* marked) REQUIRES(mutex_);
  void ResumeWork() REQUIRES(mutex_);
  // Opens the outcome file for appending, creating it if create.
  Status OpenOutcomeFile(bool create) REQUIRES(mutex_);
  // Flushes and closes the outcome file, and removes the job's files
  // unless it is durable and discarded by a shutdown.
  void CloseFiles() REQUIRES(mutex_);
  // The settings and state, as a restart reads them back.
  JobRecord Record() const REQUIRES(mutex_);
  // Durable jobs: saves Record(), so that a restart sees the state.
  void SaveRecord() REQUIRES(mutex_);
  // How many more workers the queue wants, up to concurrency; counts them
  // in workers_ before StartWorkers starts them.
  int CountMoreWorkers() REQUIRES(mutex_);
  // Starts n more workers, dropping mutex_ meanwhile.
  void StartWorkers(int n) REQUIRES(mutex_);
  // Moves the queue's first input into *input and counts it in flight.
  void PopQueue(Input* input) REQUIRES(mutex_);
  // Counts *input, just taken, in flight.
  void StartFlight(Input* input) REQUIRES(mutex_);
  // Removes input from in_flight_; false if it was not there.
  bool EndFlight(Input* input) REQUIRES(mutex_);
  // Stores entry as the outcome file's next line.
  void WriteEntry(const std::string& entry) REQUIRES(mutex_);
  // Writes unwritten_ to the outcome file; on failure keeps what is left,
  // sets storage_error_ and returns false.
  bool WriteOutcomes() REQUIRES(mutex_);
  // While the outcome file cannot be written, tries again when it is time;
  // returns whether inputs may be sent, else sets *wake to the next try.
  bool StorageWritable(Clock::time_point* wake) REQUIRES(mutex_);
  // Moves a closing job to done once every input has its outcome.
  void MaybeDone() REQUIRES(mutex_);
  // Called once, on entering done or cancelled.
  void OnEnd() REQUIRES(mutex_);
  // Takes a token from the rate limiter, if any; if there is none yet,
  // sets *wake to when there will be and returns false.
  bool SpendToken(Clock::time_point now, Clock::time_point* wake) REQUIRES(mutex_);
  Status DiscardedStatus() const REQUIRES(mutex_);
  size_t pending() const REQUIRES(mutex_) {
    return queue_.size() + delayed_.size() + backlog_left_;
  }
  bool discarded() const REQUIRES(mutex_) { return discarded_ != DiscardReason::kNone; }
  bool ended() const REQUIRES(mutex_) {
    return state_ == JobState::kDone || state_ == JobState::kCancelled;
  }
  // Cancelled or discarded: nothing more is queued or sent.
  bool stopped() const REQUIRES(mutex_) { return discarded() || state_ == JobState::kCancelled; }

  const std::string id_;
  const JobFiles files_;
  const std::string path_;  // of the outcome file
  const WorkerStarter start_worker_;
  EndHook on_end_;
  // Durable jobs only; set by Open or Resume, before the job is shared.
  // Internally synchronized: appended to under mutex_, waited on without.
  std::unique_ptr<Journal> journal_;
  // See the top of this file. callback_abandoned_ implies calls_abandoned_.
  std::atomic<bool> calls_abandoned_{false};
  std::atomic<bool> callback_abandoned_{false};
  JobStats stats_;

  // Every CondVar waits on mutex_; every field below it guards.
  Mutex mutex_;
  CondVar room_cv_{&mutex_};  // the queue has room, or the job was cancelled or discarded
  CondVar work_cv_{&mutex_};  // an input may be ready for a worker
  CondVar done_cv_{&mutex_};  // the job ended or was discarded
  JobState state_ GUARDED_BY(mutex_) = JobState::kOpen;
  JobOptions options_ GUARDED_BY(mutex_);
  // Bumped by every Change; workers read it without the lock to learn
  // that their copy of the settings is stale.
  std::atomic<uint32_t> options_version_{0};
  Circuit circuit_ GUARDED_BY(mutex_);
  bool paused_ GUARDED_BY(mutex_) = false;  // by hand: Pause
  Clock::time_point paused_at_ GUARDED_BY(mutex_);
  std::chrono::system_clock::time_point created_at_ GUARDED_BY(mutex_);
  // Why the job table let go of the job; kNone until then.
  DiscardReason discarded_ GUARDED_BY(mutex_) = DiscardReason::kNone;
  std::chrono::system_clock::time_point done_at_ GUARDED_BY(mutex_);
  std::deque<Input> queue_ GUARDED_BY(mutex_);
  std::vector<Input> delayed_ GUARDED_BY(mutex_);  // a min-heap on not_before: retries waiting
  // The inputs taken and not yet finished, each at its in_flight_slot: a
  // vector, so that taking and finishing allocate nothing.
  std::vector<Input*> in_flight_ GUARDED_BY(mutex_);
  KeyTable keys_ GUARDED_BY(mutex_);  // every accepted key, with its value's hash
  // A resumed job's journaled inputs without an outcome that are not yet
  // queued: backlog_ reads them in order, skipping the keys that keys_
  // marks done (with an outcome, or queued already); backlog_left_ remain.
  std::unique_ptr<JournalReader> backlog_ GUARDED_BY(mutex_);
  // Non-durable jobs: the inputs whose outcome is a failure, key and value,
  // so that POST /job/{id}/redrive can send them again. A Journal, never
  // flushed on purpose; null until the first failure.
  std::unique_ptr<Journal> failures_ GUARDED_BY(mutex_);
  uint64_t backlog_left_ GUARDED_BY(mutex_) = 0;
  int adders_ GUARDED_BY(mutex_) = 0;   // Add calls still queuing a batch
  int workers_ GUARDED_BY(mutex_) = 0;  // worker threads started and not yet exited
  uint64_t inputs_ GUARDED_BY(mutex_) = 0;
  uint64_t outputs_ GUARDED_BY(mutex_) = 0;
  uint64_t succeeded_ GUARDED_BY(mutex_) = 0;
  uint64_t failed_ GUARDED_BY(mutex_) = 0;
  uint64_t retries_ GUARDED_BY(mutex_) = 0;
  Clock::time_point paused_until_ GUARDED_BY(mutex_);
  double tokens_ GUARDED_BY(mutex_) = 0;
  Clock::time_point tokens_at_ GUARDED_BY(mutex_);
  int fd_ GUARDED_BY(mutex_) = -1;  // the outcome file, opened for appending
  // Outcome lines stored but not yet written to fd_: written in runs of
  // kFileBufferBytes, and whenever a reader or the job's end needs them, so
  // that storing an outcome is a memcpy, not a system call. A failed write
  // keeps what it could not write here, to try again.
  std::string unwritten_ GUARDED_BY(mutex_);
  uint64_t file_bytes_ GUARDED_BY(mutex_) = 0;  // written and unwritten
  // Why the last write to the outcome file failed (a full disk, say); ""
  // once one succeeds. While it is set, no input is sent: the job pauses
  // and tries the write again every kStorageRetry.
  std::string storage_error_ GUARDED_BY(mutex_);
  Clock::time_point storage_retry_at_ GUARDED_BY(mutex_);
  std::vector<uint64_t> index_ GUARDED_BY(mutex_);  // byte offset of entry i * kIndexStride
  CallbackStatus callback_ GUARDED_BY(mutex_);
};

#endif  // PMMAP_JOB_HPP_
