// `pmmap map URL [flags] < inputs.ndjson > outputs.ndjson`: one job run in
// this process, with the server's Job and Dispatcher but no HTTP server.
// The main thread reads stdin (LineInputs: NDJSON inputs, or with --lines
// each line as a string value keyed by its number) into the job, blocking
// while its queue is full; a second thread copies each outcome line to
// stdout as the job stores it and, on a terminal (or with --progress),
// draws a progress line on stderr; a third waits for SIGINT or SIGTERM and
// cancels the job, so that every input read still gets an entry.
//
// main calls RunMapCommand once, from its only thread, before any other
// thread starts.

#ifndef PMMAP_MAP_COMMAND_HPP_
#define PMMAP_MAP_COMMAND_HPP_

// Exit codes of `pmmap map`.
constexpr int kMapAllSucceeded = 0;
constexpr int kMapSomeFailed = 1;  // or interrupted, or stdout could not be written
constexpr int kMapBadUsage = 2;    // bad flags, or a bad input line

// Runs `pmmap map` with its arguments (those after "map"); returns the
// process's exit code.
int RunMapCommand(int argc, char** argv);

#endif  // PMMAP_MAP_COMMAND_HPP_
