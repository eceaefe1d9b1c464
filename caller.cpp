#include "caller.hpp"

#include <dirent.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>

#include <cstdlib>

namespace {

// The port of a socket address, or -1 if it is not an IP address.
int PortOf(const sockaddr_storage& addr) {
  switch (addr.ss_family) {
    case AF_INET:
      return ntohs(reinterpret_cast<const sockaddr_in&>(addr).sin_port);
    case AF_INET6:
      return ntohs(reinterpret_cast<const sockaddr_in6&>(addr).sin6_port);
    default:
      return -1;
  }
}

// Whether a socket address is host:port, its host formatted numerically as
// cpp-httplib formats a request's addresses. The port is compared first: it
// is cheap and rules out nearly every other socket.
bool AddressIs(const sockaddr_storage& addr, socklen_t len, const std::string& host, int port) {
  if (PortOf(addr) != port) return false;
  char buf[NI_MAXHOST];
  return getnameinfo(reinterpret_cast<const sockaddr*>(&addr), len, buf, sizeof(buf), nullptr, 0,
                     NI_NUMERICHOST) == 0 &&
         host == buf;
}

// Whether fd is a connected socket between exactly these two addresses.
bool Connects(int fd, const std::string& local_addr, int local_port, const std::string& remote_addr,
              int remote_port) {
  sockaddr_storage addr;
  socklen_t len = sizeof(addr);
  if (getpeername(fd, reinterpret_cast<sockaddr*>(&addr), &len) != 0 ||
      !AddressIs(addr, len, remote_addr, remote_port)) {
    return false;
  }
  len = sizeof(addr);
  return getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len) == 0 &&
         AddressIs(addr, len, local_addr, local_port);
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
  // POLLRDHUP: the caller sent its FIN. A caller that only half-closes,
  // shutting its sending side and still reading, looks the same without a
  // write to the socket, so it is taken as gone too; curl and the usual
  // HTTP clients never half-close.
  pollfd p = {fd_, POLLRDHUP, 0};
  return poll(&p, 1, 0) == 1 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) != 0;
}
