#include "job_table.hpp"

#include <algorithm>
#include <cstdio>

#include "job_store.hpp"
#include "log.hpp"

JobTable::JobTable(JobFiles files, size_t max_jobs, Job::WorkerStarter start_worker,
                   Job::EndHook on_end)
    : files_(std::move(files)),
      max_jobs_(max_jobs),
      start_worker_(std::move(start_worker)),
      on_end_(std::move(on_end)),
      rng_(std::random_device{}()) {}

Status JobTable::Create(JobOptions options, std::shared_ptr<Job>* job) {
  MutexLock lock(&mutex_);
  if (stopping_) return Status::Unavailable("the server is shutting down");
  if (jobs_.size() >= max_jobs_) {
    return Status::TooMany("the server holds " + std::to_string(jobs_.size()) +
                           " jobs, its limit (--max-jobs): delete finished jobs first");
  }
  std::string id;
  do {
    char buf[17];
    snprintf(buf, sizeof(buf), "%016llx", static_cast<unsigned long long>(rng_()));
    id = buf;
  } while (jobs_.count(id) > 0);
  bool has_callback = !options.callback_url.empty();
  auto created = std::make_shared<Job>(id, std::move(options), files_, start_worker_);
  if (has_callback) created->SetEndHook(on_end_);
  Status s = created->Open();
  if (!s.ok()) return s;
  jobs_[id] = created;
  order_.push_back(id);
  *job = created;
  return Status::OK();
}

void JobTable::Resume(size_t* resumed) {
  *resumed = 0;
  std::vector<std::string> ids;
  Status s = ListJobRecords(files_.dir, &ids);
  if (!s.ok()) LogMessage("cannot list the jobs of " + files_.dir + ": " + s.message());
  for (const std::string& id : ids) {
    JobRecord record;
    s = LoadJobRecord(JobRecordPath(files_.dir, id), &record);
    auto job = std::make_shared<Job>(id, record.options, files_, start_worker_);
    if (!record.options.callback_url.empty()) job->SetEndHook(on_end_);
    if (s.ok()) s = job->Resume(record);
    if (!s.ok()) {
      LogJobEvent(id, "failure", "not resumed, its files are left as they are: " + s.message());
      continue;
    }
    MutexLock lock(&mutex_);
    jobs_[id] = job;
    order_.push_back(id);
    ++*resumed;
  }
}

std::shared_ptr<Job> JobTable::Find(const std::string& id) {
  MutexLock lock(&mutex_);
  auto it = jobs_.find(id);
  return it == jobs_.end() ? nullptr : it->second;
}

std::shared_ptr<Job> JobTable::Detach(const std::string& id) {
  MutexLock lock(&mutex_);
  auto it = jobs_.find(id);
  if (it == jobs_.end()) return nullptr;
  std::shared_ptr<Job> job = std::move(it->second);
  jobs_.erase(it);
  order_.erase(std::find(order_.begin(), order_.end(), id));
  return job;
}

std::vector<std::shared_ptr<Job>> JobTable::List() {
  MutexLock lock(&mutex_);
  std::vector<std::shared_ptr<Job>> all;
  all.reserve(order_.size());
  for (const std::string& id : order_) all.push_back(jobs_[id]);
  return all;
}

void JobTable::ExpireEndedBefore(std::chrono::system_clock::time_point cutoff) {
  for (const auto& job : List()) {
    if (job->EndedBy(cutoff) && Detach(job->id())) {
      job->Discard(Job::DiscardReason::kExpired);
      LogJobEvent(job->id(), "expired");
    }
  }
}

void JobTable::StopAll() {
  std::vector<std::shared_ptr<Job>> all;
  {
    MutexLock lock(&mutex_);
    stopping_ = true;
    for (auto& entry : jobs_) all.push_back(entry.second);
  }
  for (auto& job : all) job->Discard(Job::DiscardReason::kShutdown);
}

void JobTable::AbortCallsInFlight() {
  for (auto& job : List()) job->AbandonCalls();
}

void JobTable::Tick() {
  for (auto& job : List()) job->Tick();
}
