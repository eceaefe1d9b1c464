// Status is the outcome of an operation that can be refused: a code that
// server.cpp maps to an HTTP status (HttpStatus), and a message for the
// caller that says what was wrong and where. Functions return it instead
// of throwing, so no exception ever crosses a thread.

#ifndef PMMAP_STATUS_HPP_
#define PMMAP_STATUS_HPP_

#include <string>
#include <utility>

class Status {
 public:
  enum Code {
    kOk,
    kInvalid,              // the request is malformed: 400
    kNotFound,             // no such job: 404
    kConflict,             // the request clashes with the job's state: 409
    kTooLarge,             // a body over the limit: 413
    kTooMany,              // a server limit is reached: 429
    kUnavailable,          // the server is shutting down, or the caller left: 503
    kInternal,             // the server failed, e.g. its disk is full: 500
    kInsufficientStorage,  // the disk refused a write: 507
  };

  Status() = default;
  static Status OK() { return Status(); }
  static Status Invalid(std::string msg) { return Status(kInvalid, std::move(msg)); }
  static Status NotFound(std::string msg) { return Status(kNotFound, std::move(msg)); }
  static Status Conflict(std::string msg) { return Status(kConflict, std::move(msg)); }
  static Status TooLarge(std::string msg) { return Status(kTooLarge, std::move(msg)); }
  static Status TooMany(std::string msg) { return Status(kTooMany, std::move(msg)); }
  static Status Unavailable(std::string msg) { return Status(kUnavailable, std::move(msg)); }
  static Status Internal(std::string msg) { return Status(kInternal, std::move(msg)); }
  static Status InsufficientStorage(std::string msg) {
    return Status(kInsufficientStorage, std::move(msg));
  }

  bool ok() const { return code_ == kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }
  // The same code with another message (one that says more: where, say).
  Status WithMessage(std::string message) const { return Status(code_, std::move(message)); }

 private:
  Status(Code code, std::string message) : code_(code), message_(std::move(message)) {}

  Code code_ = kOk;
  std::string message_;
};

#endif  // PMMAP_STATUS_HPP_
