// JobTable holds the server's jobs by id: it creates them (a fresh random
// id, the outcome file under the data dir), finds them for the API's
// handlers, detaches them on delete or expiry, and stops them all at
// shutdown. A detached job lives on while someone still holds it.
//
// Thread-safe (provides internal synchronization). Its mutex is held to
// look up, add or detach a job and to create a job's file, never while a
// job works or waits; it is never held while calling into a Job that might
// block, and a Job never calls back into the table.

#ifndef PMMAP_JOB_TABLE_HPP_
#define PMMAP_JOB_TABLE_HPP_

#include <chrono>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "job.hpp"
#include "mutex.hpp"
#include "status.hpp"

class JobTable {
 public:
  // Jobs keep their files as files says; at most max_jobs are held at
  // once. start_worker and on_end are given to every job (on_end only to
  // jobs with a callback_url).
  JobTable(JobFiles files, size_t max_jobs, Job::WorkerStarter start_worker, Job::EndHook on_end);
  JobTable(const JobTable&) = delete;
  JobTable& operator=(const JobTable&) = delete;

  // Durable tables: resumes every job whose files are in the data dir.
  // A job that cannot be read back is left on disk, logged and skipped.
  // Sets *resumed to how many were. Call once, before serving.
  void Resume(size_t* resumed);
  // Creates a job with options and a fresh id, and adds it to the table.
  // Refuses when the table is full or the server is stopping.
  Status Create(JobOptions options, std::shared_ptr<Job>* job);
  // The job with id, or null.
  std::shared_ptr<Job> Find(const std::string& id);
  // Removes the job with id from the table and returns it, or null; the
  // caller then stops it.
  std::shared_ptr<Job> Detach(const std::string& id);
  // Every job, oldest first.
  std::vector<std::shared_ptr<Job>> List();

  // Detaches and discards the jobs that ended at or before cutoff.
  void ExpireEndedBefore(std::chrono::system_clock::time_point cutoff);
  // Refuses new jobs and stops every job, waking whoever waits on one.
  // Calls in flight go on until AbortCallsInFlight.
  void StopAll();
  void AbortCallsInFlight();
  // Every second: Job::Tick for every job.
  void Tick();

 private:
  const JobFiles files_;
  const size_t max_jobs_;
  const Job::WorkerStarter start_worker_;
  const Job::EndHook on_end_;

  Mutex mutex_;
  std::mt19937_64 rng_ GUARDED_BY(mutex_);
  std::map<std::string, std::shared_ptr<Job>> jobs_ GUARDED_BY(mutex_);
  std::vector<std::string> order_ GUARDED_BY(mutex_);  // ids, oldest first
  bool stopping_ GUARDED_BY(mutex_) = false;
};

#endif  // PMMAP_JOB_TABLE_HPP_
