// STUB (replaced by branch journal at merge)
#ifndef PMMAP_JOURNAL_HPP_
#define PMMAP_JOURNAL_HPP_
#include <memory>
#include <string>
#include <vector>
#include "job.hpp"
#include "status.hpp"
enum class FsyncPolicy { kEverySecond, kAlways };
class Journal {
 public:
  static Status Open(const std::string& path, FsyncPolicy policy,
                     std::unique_ptr<Journal>* journal, uint64_t* records);
  Status Append(const std::vector<Input>& inputs, size_t first, size_t last, uint64_t* end);
  Status WaitDurable(uint64_t end);
  Status SyncIfDirty();
  uint64_t size() const;
  const std::string& path() const;
};
class JournalReader {
 public:
  JournalReader(std::string path, uint64_t offset, uint64_t end);
  bool Next(Input* input, std::string* error);
  uint64_t offset() const;
};
#endif
