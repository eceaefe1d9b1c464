#include "caller.hpp"

#include <dirent.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <cstdlib>

namespace {

// The numeric host and the port of a socket address, formatted as
// cpp-httplib formats a request's addresses.
bool HostAndPort(const sockaddr_storage& addr, socklen_t len, std::string* host, int* port) {
  if (addr.ss_family == AF_INET) {
    *port = ntohs(reinterpret_cast<const sockaddr_in&>(addr).sin_port);
  } else if (addr.ss_family == AF_INET6) {
    *port = ntohs(reinterpret_cast<const sockaddr_in6&>(addr).sin6_port);
  } else {
    return false;
  }
  char buf[NI_MAXHOST];
  if (getnameinfo(reinterpret_cast<const sockaddr*>(&addr), len, buf, sizeof(buf), nullptr, 0,
                  NI_NUMERICHOST) != 0) {
    return false;
  }
  *host = buf;
  return true;
}

// Whether fd is a connected socket between exactly these two addresses.
bool Connects(int fd, const std::string& local_addr, int local_port,
              const std::string& remote_addr, int remote_port) {
  sockaddr_storage addr;
  socklen_t len = sizeof(addr);
  std::string host;
  int port = 0;
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0 ||
      !HostAndPort(addr, len, &host, &port) || port != remote_port || host != remote_addr) {
    return false;
  }
  len = sizeof(addr);
  return getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0 &&
         HostAndPort(addr, len, &host, &port) && port == local_port && host == local_addr;
}

}  // namespace

CallerSocket::CallerSocket(const std::string& local_addr, int local_port,
                           const std::string& remote_addr, int remote_port) {
  DIR* dir = opendir("/proc/self/fd");
  if (dir == nullptr) return;
  // A TCP connection's two addresses are unique among open sockets, so the
  // first match is the one. Other threads may open and close descriptors
  // meanwhile; a descriptor closed under the scan just fails to match.
  while (dirent* entry = readdir(dir)) {
    char* end;
    long fd = strtol(entry->d_name, &end, 10);
    if (*end != '\0' || end == entry->d_name || fd == dirfd(dir)) continue;
    if (Connects(static_cast<int>(fd), local_addr, local_port, remote_addr, remote_port)) {
      fd_ = static_cast<int>(fd);
      break;
    }
  }
  closedir(dir);
}

bool CallerSocket::HungUp() const {
  if (fd_ < 0) return false;
  // POLLRDHUP: the caller shut its side (a FIN), even with bytes of a
  // pipelined request still unread.
  pollfd p = {fd_, POLLRDHUP, 0};
  return poll(&p, 1, 0) == 1 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}
