#include "line_inputs.hpp"

#include <cstring>

#include "json.hpp"
#include "request.hpp"

namespace {

// A line buffer grown past this by one long line is given back afterwards,
// so that one large input does not hold its memory for the whole stream.
constexpr size_t kKeptLineCapacity = 64 * 1024;

bool IsBlank(const std::string& line) {
  return SkipJsonSpace(line.data(), line.data() + line.size()) == line.data() + line.size();
}

// kPlain's input: the line number as the key, the line as a JSON string.
Status PlainInput(std::string* line, uint64_t number, Input* input) {
  // A file written on Windows ends its lines with \r\n: the \r is not data.
  if (!line->empty() && line->back() == '\r') line->pop_back();
  if (!IsValidUtf8(line->data(), line->size())) return Status::Invalid("not valid UTF-8");
  input->key = std::to_string(number);
  input->value.clear();
  AppendJsonString(*line, &input->value);
  return Status::OK();
}

}  // namespace

LineInputs::LineInputs(Options options, AddBatch add)
    : options_(std::move(options)), add_(std::move(add)) {
  batch_.reserve(options_.batch_inputs);
}

bool LineInputs::Take(const char* data, size_t n) {
  const char* p = data;
  const char* end = data + n;
  while (status_.ok() && p < end) {
    const char* newline = static_cast<const char*>(memchr(p, '\n', end - p));
    size_t len = newline != nullptr ? static_cast<size_t>(newline - p) : end - p;
    if (line_.size() + len > options_.max_line_bytes) {
      // The inputs before the long line are accepted first, as promised.
      return Flush() &&
             Stop(Status::TooLarge("longer than " + std::to_string(options_.max_line_bytes) +
                                   " bytes, the limit of a line"),
                  lines_ + 1);
    }
    line_.append(p, len);
    if (newline == nullptr) break;
    p = newline + 1;
    if (!EndLine()) return false;
  }
  return status_.ok();
}

Status LineInputs::Finish(bool whole) {
  if (!status_.ok()) return status_;
  if (whole && !line_.empty()) EndLine();
  if (status_.ok()) Flush();
  return status_;
}

bool LineInputs::EndLine() {
  ++lines_;
  if (options_.format == Format::kNdjson && IsBlank(line_)) {
    line_.clear();
    return true;
  }
  Input input;
  Status s = options_.format == Format::kNdjson ? ParseInputLine(line_, &input)
                                                : PlainInput(&line_, lines_, &input);
  line_.clear();
  if (line_.capacity() > kKeptLineCapacity) std::string().swap(line_);
  // The inputs before the bad line are accepted first, as promised.
  if (!s.ok()) return Flush() && Stop(s, lines_);
  batch_bytes_ += input.key.size() + input.value.size();
  batch_.push_back(std::move(input));
  batch_lines_.push_back(lines_);
  if (batch_.size() >= options_.batch_inputs || batch_bytes_ >= options_.batch_bytes) {
    return Flush();
  }
  return true;
}

bool LineInputs::Flush() {
  if (batch_.empty()) return true;
  Status s = add_(batch_);
  if (s.ok()) {
    accepted_ += batch_.size();
  } else if (s.code() != Status::kConflict || batch_.size() == 1) {
    return Stop(s, batch_lines_[0]);
  } else {
    // A key clash (or a cancel) somewhere in the batch: find which line.
    for (size_t i = 0; i < batch_.size(); ++i) {
      s = add_(std::vector<Input>(1, batch_[i]));
      if (!s.ok()) return Stop(s, batch_lines_[i]);
      ++accepted_;
    }
  }
  batch_.clear();
  batch_lines_.clear();
  batch_bytes_ = 0;
  return true;
}

bool LineInputs::Stop(const Status& s, uint64_t line) {
  std::string message = s.message();
  // Job::Add names an input by its index in the batch; here the line says.
  if (message.compare(0, 8, "input[0]") == 0) message = "input" + message.substr(8);
  status_ = s.WithMessage("line " + std::to_string(line) + ": " + message + "; the " +
                          std::to_string(accepted_) + " inputs before it were accepted");
  batch_.clear();
  batch_lines_.clear();
  return false;
}
