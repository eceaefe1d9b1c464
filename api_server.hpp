// ApiServer is cpp-httplib's Server with pmmap's own handling of each API
// connection, where cpp-httplib 0.11 has no setting for what pmmap needs
// so that idle or slow clients cannot stall the API:
//  - a cap on the connections open at once: one past it is answered 503
//    and closed at once, never queued;
//  - one deadline for a request's headers, from when the connection is
//    accepted (or a kept-alive one sends its next byte) to the blank line,
//    where cpp-httplib allows each read its own timeout, which a client
//    sending a byte at a time (slowloris) renews forever;
//  - a bounded request line and Range header: cpp-httplib matches both
//    with libstdc++'s std::regex, which recurses once per character, so
//    that these bounds are what lets the HTTP threads have a small stack.
// cpp-httplib parses each request and runs the routes, through its
// protected process_request, on a Stream of this file's making.
//
// Thread-safe: cpp-httplib's listening thread hands it connections, each
// served on a thread of the task queue (HttpPool).

#ifndef PMMAP_API_SERVER_HPP_
#define PMMAP_API_SERVER_HPP_

#include <httplib.h>

#include <atomic>
#include <chrono>
#include <functional>

// The longest request line and Range header accepted; a longer one closes
// the connection unanswered. The longest of pmmap's own request lines is
// about 120 bytes.
constexpr size_t kMaxMatchedLineBytes = 1024;

class ApiServer : public httplib::Server {
 public:
  // Called once a request's headers are read, before its route runs: true
  // means the connection is closed after the reply, so that a request
  // refused before its body was read leaves no body behind.
  using CloseAfter = std::function<bool(const httplib::Request& req)>;

  // Serves at most max_connections connections at once, each request's
  // headers within header_timeout.
  ApiServer(size_t max_connections, std::chrono::milliseconds header_timeout, CloseAfter close);
  ApiServer(const ApiServer&) = delete;
  ApiServer& operator=(const ApiServer&) = delete;

  // The connections open now, and those refused so far for the cap.
  size_t open_connections() const { return open_.load(); }
  uint64_t refused_connections() const { return refused_.load(); }

 private:
  // cpp-httplib's listening thread calls this, through its task queue, for
  // each connection it accepts. Serves it until it closes, then closes it.
  bool process_and_close_socket(socket_t sock) override;
  void Serve(socket_t sock);

  const size_t max_connections_;
  const std::chrono::milliseconds header_timeout_;
  const CloseAfter close_after_;
  std::atomic<size_t> open_{0};
  std::atomic<uint64_t> refused_{0};
};

#endif  // PMMAP_API_SERVER_HPP_
