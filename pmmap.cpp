// pmmap: runs a finite batch of inputs through a caller's webhook with
// bounded concurrency and keeps every reply. main reads the flags, builds
// the server, runs it and returns its exit code; server.hpp says the rest.
// `pmmap map ...` runs one job without a server instead (map_command.hpp).

#include <curl/curl.h>

#include <cstdio>
#include <cstring>
#include <string>

#include "flags.hpp"
#include "log.hpp"
#include "map_command.hpp"
#include "server.hpp"

int main(int argc, char** argv) {
  if (argc > 1 && strcmp(argv[1], "map") == 0) {
    curl_global_init(CURL_GLOBAL_DEFAULT);
    int code = RunMapCommand(argc - 2, argv + 2);
    curl_global_cleanup();
    return code;
  }
  Flags flags;
  std::string error;
  switch (ParseFlags(argc, argv, &flags, &error)) {
    case FlagsVerdict::kRun:
      break;
    case FlagsVerdict::kExit:
      return 0;
    case FlagsVerdict::kError:
      fprintf(stderr, "pmmap: %s\n", error.c_str());
      return 2;
  }
  SetLogFormat(flags.log_format);
  curl_global_init(CURL_GLOBAL_DEFAULT);
  int exit_code = 1;
  {
    Server server(flags);
    if (server.Start(&error)) {
      exit_code = server.Run();
    } else {
      fprintf(stderr, "pmmap: %s\n", error.c_str());
    }
  }  // joins every thread the server started
  curl_global_cleanup();
  return exit_code;
}
