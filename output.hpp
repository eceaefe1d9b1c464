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
// Whether the outcome line that starts at line (n bytes of it, at least
// kEntryHeadBytes or up to its newline) is a success: its key is followed by
// "value", not "error". Reads only the line's head, never a whole value.
bool IsSuccessEntry(const char* line, size_t n);
// Enough of a line's head to hold its key, each byte escaped as \uXXXX,
// and the name of the field after it.
constexpr size_t kEntryHeadBytes = 8 * 1024;

// Streams part of an outcome file as one JSON array or as NDJSON, reading
// it in blocks so that memory stays flat however large the file.
class OutputReader {
 public:
  enum Format { kArray, kNdjson };
  // Which entries to yield: all, or only successes or failures.
  enum Result { kAll, kSucceeded, kFailed };

  // Reads from the open descriptor fd (which it closes) starting at byte
  // begin: skips `skip` entries, then yields `count` entries.
  OutputReader(int fd, uint64_t begin, uint64_t skip, uint64_t count, Format format);
  ~OutputReader();
  OutputReader(const OutputReader&) = delete;
  OutputReader& operator=(const OutputReader&) = delete;

  // Replaces *chunk with the next piece of output. Returns false when all
  // has been yielded, or on a read error (*failed is then set).
  bool Next(std::string* chunk, bool* failed);
  // Keeps only the entries of kind result (not kAll) among those the reader
  // was opened on: skips the first `skip` of them and yields at most
  // `count`. Call before Next. The reader still reads every entry it was
  // opened on, but only each one's head to judge it.
  void Filter(Result result, uint64_t skip, uint64_t count);

 private:
  bool Fill();
  // Next, with a filter.
  bool NextFiltered(std::string* chunk, bool* failed);
  // Makes the head of the line at buffer_pos_ readable whole: up to its
  // newline, or kEntryHeadBytes of it; false if the file ends first.
  bool FillLineHead();

  int fd_;
  uint64_t pos_;
  uint64_t skip_;
  uint64_t remaining_;
  Format format_;
  bool started_ = false;
  bool finished_ = false;
  std::string buffer_;
  size_t buffer_pos_ = 0;
  // Filter's, when result_ is not kAll: matching entries to skip and to
  // yield, how many were yielded, and whether the line being read, once
  // judged (not at_line_start_), is yielded.
  Result result_ = kAll;
  uint64_t match_skip_ = 0;
  uint64_t match_left_ = 0;
  uint64_t yielded_ = 0;
  bool at_line_start_ = true;
  bool keep_line_ = false;
};

#endif  // PMMAP_OUTPUT_HPP_
