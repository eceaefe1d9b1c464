#include "redrive.hpp"

#include <rapidjson/document.h>

#include <memory>
#include <string>
#include <vector>

#include "journal.hpp"
#include "key_table.hpp"

namespace {

// Inputs are added to the new job in batches of this many.
constexpr size_t kRedriveBatch = 64;

// Adds the key of the outcome line to *keys.
Status AddKeyOf(const std::string& line, KeyTable* keys) {
  rapidjson::Document entry;
  entry.Parse(line.data(), line.size());
  if (entry.HasParseError() || !entry.IsObject() || !entry.HasMember("key") ||
      !entry["key"].IsString()) {
    return Status::Internal("an outcome line cannot be read: " + line.substr(0, 80));
  }
  keys->Insert(
      KeyTable::KeyHash(std::string(entry["key"].GetString(), entry["key"].GetStringLength())), 0);
  return Status::OK();
}

// The hashes of the keys whose outcome is a failure, into *keys; their
// number into *failed.
Status FailedKeys(Job* old, KeyTable* keys, uint64_t* failed) {
  std::unique_ptr<OutputReader> reader;
  Status s = old->OpenOutput(0, UINT64_MAX, OutputReader::kNdjson, &reader);
  if (!s.ok()) return s;
  reader->Filter(OutputReader::kFailed, 0, UINT64_MAX);
  std::string chunk;
  std::string line;
  bool read_failed = false;
  *failed = 0;
  while (reader->Next(&chunk, &read_failed)) {
    // Chunks end anywhere; lines end with a newline.
    size_t start = 0;
    for (size_t nl; (nl = chunk.find('\n', start)) != std::string::npos; start = nl + 1) {
      line.append(chunk, start, nl - start);
      s = AddKeyOf(line, keys);
      if (!s.ok()) return s;
      ++*failed;
      line.clear();
    }
    line.append(chunk, start, std::string::npos);
  }
  if (read_failed)
    return Status::Internal("the outcome file of job " + old->id() + " cannot be read");
  return Status::OK();
}

}  // namespace

Status CopyFailedInputs(Job* old, Job* fresh, uint64_t* copied) {
  *copied = 0;
  KeyTable keys;
  uint64_t failed = 0;
  Status s = FailedKeys(old, &keys, &failed);
  std::unique_ptr<JournalReader> kept;
  if (s.ok() && failed > 0) s = old->OpenKeptInputs(&kept);
  if (!s.ok() || failed == 0) return s;
  std::vector<Input> batch;
  Input input;
  std::string error;
  while (kept != nullptr && *copied + batch.size() < failed && kept->Next(&input, &error)) {
    // Each failed key once, at its first record.
    if (!keys.MarkDone(KeyTable::KeyHash(input.key))) continue;
    batch.push_back(std::move(input));
    if (batch.size() == kRedriveBatch) {
      s = fresh->Add(std::move(batch));
      if (!s.ok()) return s;
      *copied += kRedriveBatch;
      batch.clear();
    }
  }
  if (!batch.empty()) {
    s = fresh->Add(batch);
    if (!s.ok()) return s;
    *copied += batch.size();
  }
  if (*copied < failed) {
    return Status::Internal("the values of " + std::to_string(failed - *copied) + " of the " +
                            std::to_string(failed) + " failed inputs of job " + old->id() +
                            " cannot be found" + (error.empty() ? "" : ": " + error));
  }
  return Status::OK();
}
