// LineInputs turns a stream of bytes that arrives in pieces (a streamed
// PUT /job/{id}/input body, or pmmap map's stdin) into inputs, one a line,
// and hands them on in small batches, in order, so that memory holds one
// line and one batch whatever the stream's length. The one who hands them
// on (AddBatch: Job::Add, after waiting for room) may block: then no more
// is read, and the stream's sender waits on TCP's (or the pipe's) window.
//
// A line is NDJSON, {"key": ..., "value": ...}, checked as ParseInputs
// checks an input (ParseInputLine), and blank lines are skipped; or, for
// kPlain, the line itself is the value, as a JSON string, and its number
// the key. Lines are numbered from 1, blank ones included. A last line
// without a newline counts. The first bad line, or a batch the job refuses,
// stops the stream: status() names the line and says how many inputs
// before it were accepted (they stay accepted).
//
// Thread-compatible: one stream, one caller.

#ifndef PMMAP_LINE_INPUTS_HPP_
#define PMMAP_LINE_INPUTS_HPP_

#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "job.hpp"
#include "status.hpp"

class LineInputs {
 public:
  enum class Format { kNdjson, kPlain };
  // Queues a batch; returns OK once all of it is accepted, or why none of
  // it was (Job::Add's contract: a refused batch adds nothing).
  using AddBatch = std::function<Status(const std::vector<Input>& batch)>;

  struct Options {
    Format format = Format::kNdjson;
    size_t max_line_bytes = 0;  // a longer line is refused (TooLarge)
    size_t batch_inputs = 1;    // a batch is handed on at this many inputs...
    size_t batch_bytes = 0;     // ...or once its values hold this many bytes
  };

  LineInputs(Options options, AddBatch add);
  LineInputs(const LineInputs&) = delete;
  LineInputs& operator=(const LineInputs&) = delete;

  // Takes the next n bytes of the stream. Returns false once the stream
  // is stopped (status() says why); later calls do nothing.
  bool Take(const char* data, size_t n);
  // The stream ended. If whole, a last line without a newline is taken
  // too; if not (the sender vanished), it is dropped, since it may be cut
  // short. Hands on what is batched; returns status().
  Status Finish(bool whole);

  const Status& status() const { return status_; }
  uint64_t accepted() const { return accepted_; }  // inputs handed on and accepted
  uint64_t lines() const { return lines_; }        // lines ended so far, blank ones included

 private:
  // Parses line_ as line lines_ and batches it; false if it stops the stream.
  bool EndLine();
  // Hands the batch on; if the job refuses it, hands its inputs on one at
  // a time, so that those before the refused one are accepted and the
  // refusal names its own line.
  bool Flush();
  // Stops the stream with s, about line number line.
  bool Stop(const Status& s, uint64_t line);

  const Options options_;
  const AddBatch add_;
  Status status_;
  std::string line_;  // the line read so far
  uint64_t lines_ = 0;
  uint64_t accepted_ = 0;
  std::vector<Input> batch_;
  std::vector<uint64_t> batch_lines_;  // the line number of each input of batch_
  size_t batch_bytes_ = 0;
};

#endif  // PMMAP_LINE_INPUTS_HPP_
