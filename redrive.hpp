// Redrive: the inputs of an ended job whose outcome is a failure (an error
// reply, attempts used up, or cancelled), copied with their values into a
// new job, for POST /job/{id}/redrive. The failed keys come from the old
// job's outcome file; their values from what the old job kept
// (Job::OpenKeptInputs): a durable job's journal, or the journal of failed
// inputs that a job without --data-dir keeps beside its outcome file.
//
// Thread-compatible: it calls only the jobs' thread-safe methods.

#ifndef PMMAP_REDRIVE_HPP_
#define PMMAP_REDRIVE_HPP_

#include <cstdint>

#include "job.hpp"
#include "status.hpp"

// Adds to fresh every input of old whose outcome is a failure, in the order
// old accepted them, in batches; like a PUT, waits for room when fresh's
// queue is full. Sets *copied to how many. Returns Internal if some failed
// key's value cannot be found.
Status CopyFailedInputs(Job* old, Job* fresh, uint64_t* copied);

#endif  // PMMAP_REDRIVE_HPP_
