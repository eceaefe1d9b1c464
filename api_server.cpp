#include "api_server.hpp"

#include <netdb.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <cstring>

namespace {

using Clock = std::chrono::steady_clock;

// How often a connection waiting for bytes looks whether the server is
// stopping: often enough for a quick shutdown, seldom enough that thousands
// of idle connections cost little.
constexpr std::chrono::milliseconds kStopCheck{250};
// A read takes what is there, up to this much, and serves it byte by byte
// to cpp-httplib's line reader, which asks for one at a time.
constexpr size_t kReadBufferBytes = 4096;
// The answer to a connection past the cap, written without waiting.
const std::string& TooManyConnectionsReply() {
  static const std::string body =
      "{\"error\":\"too many connections (--max-connections); retry later\"}\n";
  static const std::string reply =
      "HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
      "Content-Length: " +
      std::to_string(body.size()) + "\r\nConnection: close\r\n\r\n" + body;
  return reply;
}

// Waits until fd is readable (or writable, with POLLOUT), until the
// deadline passes, or until stopping() holds; returns whether it is.
bool WaitFor(int fd, short events, Clock::time_point deadline,
             const std::function<bool()>& stopping) {
  for (;;) {
    auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now());
    if (left.count() <= 0 || stopping()) return false;
    pollfd p = {fd, events, 0};
    int n = poll(&p, 1, static_cast<int>(std::min(left, kStopCheck).count()));
    if (n > 0) return true;
    if (n < 0 && errno != EINTR) return false;
  }
}

void AddressText(int fd, bool peer, std::string& ip, int& port) {
  sockaddr_storage addr;
  socklen_t len = sizeof(addr);
  int r = peer ? getpeername(fd, reinterpret_cast<sockaddr*>(&addr), &len)
               : getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  char host[NI_MAXHOST];
  char service[NI_MAXSERV];
  if (r != 0 || getnameinfo(reinterpret_cast<sockaddr*>(&addr), len, host, sizeof(host), service,
                            sizeof(service), NI_NUMERICHOST | NI_NUMERICSERV) != 0) {
    return;
  }
  ip = host;
  port = atoi(service);
}

// One API connection as cpp-httplib reads and writes it. Until HeadersDone,
// reads end at the header deadline and the request line and any Range
// header are bounded (kMaxMatchedLineBytes); then each read and write may
// take the server's read and write timeouts.
class ConnectionStream : public httplib::Stream {
 public:
  ConnectionStream(int fd, Clock::duration read_timeout, Clock::duration write_timeout,
                   std::function<bool()> stopping)
      : fd_(fd),
        read_timeout_(read_timeout),
        write_timeout_(write_timeout),
        stopping_(std::move(stopping)) {}

  // The next request's headers must be read by deadline.
  void StartRequest(Clock::time_point deadline) {
    header_deadline_ = deadline;
    in_headers_ = true;
    line_bytes_ = 0;
    lines_ = 0;
  }
  void HeadersDone() { in_headers_ = false; }
  // Whether the headers came too slowly or too long: the connection is then
  // closed without an answer, which cpp-httplib would otherwise give.
  bool failed() const { return failed_; }
  bool buffered() const { return start_ < end_; }

  bool is_readable() const override { return buffered() || WaitFor(fd_, POLLIN, ReadBy(), Never); }
  bool is_writable() const override {
    return !failed_ && WaitFor(fd_, POLLOUT, Clock::now() + write_timeout_, stopping_);
  }
  ssize_t read(char* ptr, size_t size) override;
  ssize_t write(const char* ptr, size_t size) override;
  void get_remote_ip_and_port(std::string& ip, int& port) const override {
    AddressText(fd_, true, ip, port);
  }
  void get_local_ip_and_port(std::string& ip, int& port) const override {
    AddressText(fd_, false, ip, port);
  }
  socket_t socket() const override { return fd_; }

 private:
  static bool Never() { return false; }
  Clock::time_point ReadBy() const {
    return in_headers_ ? header_deadline_ : Clock::now() + read_timeout_;
  }
  // Counts the header bytes handed out; false once a bounded line is too long.
  bool WithinBounds(const char* data, size_t n);

  const int fd_;
  const Clock::duration read_timeout_;
  const Clock::duration write_timeout_;
  const std::function<bool()> stopping_;
  char buffer_[kReadBufferBytes];
  size_t start_ = 0;
  size_t end_ = 0;
  bool in_headers_ = false;
  Clock::time_point header_deadline_;
  size_t line_bytes_ = 0;  // of the header line being read
  size_t lines_ = 0;       // header lines finished; the first is the request line
  bool bounded_line_ = true;
  bool failed_ = false;
};

ssize_t ConnectionStream::read(char* ptr, size_t size) {
  if (!buffered()) {
    // While waiting for headers the stop check ends the wait; a body being
    // read is let finish.
    if (!WaitFor(fd_, POLLIN, ReadBy(), in_headers_ ? stopping_ : Never)) {
      failed_ = in_headers_;
      return -1;
    }
    ssize_t n;
    do {
      n = recv(fd_, buffer_, sizeof(buffer_), 0);
    } while (n < 0 && errno == EINTR);
    if (n <= 0) return n;
    start_ = 0;
    end_ = static_cast<size_t>(n);
  }
  size_t n = std::min(size, end_ - start_);
  if (in_headers_ && !WithinBounds(buffer_ + start_, n)) {
    failed_ = true;
    return -1;
  }
  memcpy(ptr, buffer_ + start_, n);
  start_ += n;
  return static_cast<ssize_t>(n);
}

bool ConnectionStream::WithinBounds(const char* data, size_t n) {
  static constexpr char kRange[] = "range:";
  for (size_t i = 0; i < n; ++i) {
    // The request line is bounded; a header line is, while its first bytes
    // may still spell "Range:".
    if (line_bytes_ == 0) bounded_line_ = true;
    if (lines_ > 0 && line_bytes_ < sizeof(kRange) - 1 &&
        tolower(static_cast<unsigned char>(data[i])) != kRange[line_bytes_]) {
      bounded_line_ = false;
    }
    ++line_bytes_;
    if (data[i] == '\n') {
      line_bytes_ = 0;
      ++lines_;
    } else if (bounded_line_ && line_bytes_ > kMaxMatchedLineBytes) {
      return false;
    }
  }
  return true;
}

ssize_t ConnectionStream::write(const char* ptr, size_t size) {
  if (failed_) return -1;
  size_t sent = 0;
  while (sent < size) {
    ssize_t n = send(fd_, ptr + sent, size - sent, MSG_NOSIGNAL | MSG_DONTWAIT);
    if (n > 0) {
      sent += static_cast<size_t>(n);
    } else if (n < 0 && errno == EINTR) {
      continue;
    } else if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      if (!WaitFor(fd_, POLLOUT, Clock::now() + write_timeout_, Never)) return -1;
    } else {
      return -1;
    }
  }
  return static_cast<ssize_t>(sent);
}

}  // namespace

ApiServer::ApiServer(size_t max_connections, std::chrono::milliseconds header_timeout,
                     CloseAfter close)
    : max_connections_(max_connections),
      header_timeout_(header_timeout),
      close_after_(std::move(close)) {}

bool ApiServer::process_and_close_socket(socket_t sock) {
  if (open_.fetch_add(1) >= max_connections_) {
    --open_;
    ++refused_;
    // Best effort: a client that sent nothing yet may still read it.
    const std::string& reply = TooManyConnectionsReply();
    ssize_t ignored = send(sock, reply.data(), reply.size(), MSG_NOSIGNAL | MSG_DONTWAIT);
    (void)ignored;
    close(sock);
    return false;
  }
  Serve(sock);
  shutdown(sock, SHUT_RDWR);
  close(sock);
  --open_;
  return true;
}

void ApiServer::Serve(socket_t sock) {
  auto stopping = [this] { return svr_sock_ == INVALID_SOCKET; };
  ConnectionStream stream(sock, std::chrono::seconds(read_timeout_sec_),
                          std::chrono::seconds(write_timeout_sec_), stopping);
  auto deadline = Clock::now() + header_timeout_;
  for (size_t served = 0; served < keep_alive_max_count_; ++served) {
    if (served > 0) {
      // A kept-alive connection may idle; its deadline runs from its next byte.
      if (!stream.buffered() &&
          !WaitFor(sock, POLLIN, Clock::now() + std::chrono::seconds(keep_alive_timeout_sec_),
                   stopping)) {
        return;
      }
      deadline = Clock::now() + header_timeout_;
    }
    stream.StartRequest(deadline);
    bool close_connection = served + 1 == keep_alive_max_count_ || stopping();
    bool connection_closed = false;
    bool ok =
        process_request(stream, close_connection, connection_closed, [&](httplib::Request& req) {
          stream.HeadersDone();
          if (close_after_ && close_after_(req)) {
            // Read again when the reply is written, so
            // that it says "Connection: close".
            req.headers.erase("Connection");
            req.set_header("Connection", "close");
            connection_closed = true;
          }
        });
    if (!ok || connection_closed || close_connection || stream.failed()) return;
  }
}
