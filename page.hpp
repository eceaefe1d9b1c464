// The files of the page at / (page/index.html, its script and its style),
// embedded in the binary at build time: page/embed.sh turns them into the
// byte arrays of build/gen/page_files.cpp, a build output, so that the
// page needs no file at run time (the FROM scratch image has none) and
// nothing from outside.
//
// Thread-safe: constant data.

#ifndef PMMAP_PAGE_HPP_
#define PMMAP_PAGE_HPP_

#include <cstddef>

struct PageFile {
  const char* name;  // the file's name under page/, as /page/{name} serves it
  const char* content_type;
  const unsigned char* data;
  size_t size;
};

extern const PageFile kPageFiles[];
extern const size_t kPageFileCount;

#endif  // PMMAP_PAGE_HPP_
