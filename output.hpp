// The outcome file's format and its reader. A job's outcome file holds one
// line of compact JSON per input, in the order the outcomes were stored:
// {"key":...,"value":...} for a success, {"key":...,"error":{...},
// "attempts":n} for a failure. Dispatcher's workers format the lines, Job
// appends them, and OutputReader streams them back to GET /job/{id}/output.
//
// The formatters are pure functions, safe from any thread; an OutputReader
// is not thread-safe: one reader serves one response.

#ifndef PMMAP_OUTPUT_HPP_
#define PMMAP_OUTPUT_HPP_

#include <cstdint>
#include <string>

// The lines of the outcome file. Neither contains a newline.
void AppendSuccessEntry(const std::string& key, const std::string& value_json, std::string* out);
inline std::string SuccessEntry(const std::string& key, const std::string& value_json) {
  std::string entry;
  AppendSuccessEntry(key, value_json, &entry);
  return entry;
}
std::string ErrorEntry(const std::string& key, long status, const std::string& message,
                       const std::string& body, int attempts);

// Streams part of an outcome file as one JSON array or as NDJSON, reading
// it in blocks so that memory stays flat however large the file.
class OutputReader {
 public:
  enum Format { kArray, kNdjson };

  // Reads from the open descriptor fd (which it closes) starting at byte
  // begin: skips `skip` entries, then yields `count` entries.
  OutputReader(int fd, uint64_t begin, uint64_t skip, uint64_t count, Format format);
  ~OutputReader();
  OutputReader(const OutputReader&) = delete;
  OutputReader& operator=(const OutputReader&) = delete;

  // Replaces *chunk with the next piece of output. Returns false when all
  // has been yielded, or on a read error (*failed is then set).
  bool Next(std::string* chunk, bool* failed);

 private:
  bool Fill();

  int fd_;
  uint64_t pos_;
  uint64_t skip_;
  uint64_t remaining_;
  Format format_;
  bool started_ = false;
  bool finished_ = false;
  std::string buffer_;
  size_t buffer_pos_ = 0;
};

#endif  // PMMAP_OUTPUT_HPP_
