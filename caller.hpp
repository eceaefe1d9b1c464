// CallerSocket finds the socket of an API request's caller, so that a
// handler that may wait for hours (GET /output until its job is done) can
// notice that the caller hung up and give its thread back to the pool.
// Without that, callers that give up on such waits, one after another,
// would hold every thread of the pool. cpp-httplib 0.11 (Debian 12's) does
// not show a handler its socket, so it is found among the process's
// descriptors by its two addresses, which cpp-httplib does give. It stays
// open while the handler runs: cpp-httplib closes it only afterwards.
//
// Thread-compatible.

#ifndef PMMAP_CALLER_HPP_
#define PMMAP_CALLER_HPP_

#include <string>

class CallerSocket {
 public:
  // Finds the connection from remote_addr:remote_port to
  // local_addr:local_port (numeric addresses, as cpp-httplib writes them).
  CallerSocket(const std::string& local_addr, int local_port, const std::string& remote_addr,
               int remote_port);

  // True once the caller has closed or reset its connection (or shut its
  // sending side: see HungUp). Always false if the socket was not found.
  bool HungUp() const;

 private:
  int fd_ = -1;  // not owned
};

#endif  // PMMAP_CALLER_HPP_
