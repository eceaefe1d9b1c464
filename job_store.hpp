// STUB (replaced by branch jobstore at merge)
#ifndef PMMAP_JOB_STORE_HPP_
#define PMMAP_JOB_STORE_HPP_
#include <chrono>
#include <string>
#include <vector>
#include "job.hpp"
#include "key_set.hpp"
#include "status.hpp"
struct JobRecord {
  std::string id;
  JobOptions options;
  JobState state = JobState::kOpen;
  std::chrono::system_clock::time_point created_at;
  std::chrono::system_clock::time_point done_at;
};
std::string JobRecordPath(const std::string& dir, const std::string& id);
std::string JournalPath(const std::string& dir, const std::string& id);
std::string OutcomePath(const std::string& dir, const std::string& id);
Status SaveJobRecord(const std::string& dir, const JobRecord& record);
Status LoadJobRecord(const std::string& path, JobRecord* record);
Status ListJobRecords(const std::string& dir, std::vector<std::string>* ids);
struct OutcomeScan {
  uint64_t entries = 0;
  uint64_t succeeded = 0;
  uint64_t failed = 0;
  uint64_t bytes = 0;
  std::vector<uint64_t> index;
  KeySet keys;
};
Status ScanOutcomes(const std::string& path, uint64_t stride, OutcomeScan* scan);
#endif
