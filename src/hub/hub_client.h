// Downloads files from the Hugging Face Hub into a local cache: an HTTP/1.1 client (Boost.Beast
// over TCP, or TLS with OpenSSL verifying the peer against the system CA store) for
// GET {endpoint}/{repo_id}/resolve/{revision}/{filename}, following the Hub's redirects to its
// CDN. Everything from the network is untrusted: URLs and headers are parsed with bounds
// checks, bodies are size-capped and must arrive whole (Content-Length or chunked), and a file
// appears under its final name only once complete (temp file, fsync, rename).
//
// Cache layout: {cache_dir}/{owner}--{name}/{revision}/{filename}; a cached file is returned
// without touching the network. repo ids, revisions and filenames are validated so that none
// can name a path outside the cache.
//
// Threads: a HubClient is immutable after construction; download() may run concurrently from
// several threads (each call uses its own connection and temp file).
#pragma once

#include <chrono>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>

#include "core/error.h"

namespace mil::hub {

// A failed download. Messages name the URL (without query string) but never the token.
class HubError : public Error {
 public:
  enum class Kind {
    InvalidArgument,  // a bad repo id, revision, filename or endpoint
    AccessDenied,     // HTTP 401 / 403
    NotFound,         // HTTP 404
    HttpStatus,       // any other unexpected HTTP status
    Network,          // resolve/connect/TLS/read failures, timeouts, dropped connections
    BadResponse,      // a malformed or unacceptable response (bad redirect, no length, too big)
    Io,               // the local cache could not be written
  };
  HubError(Kind kind, int http_status, const std::string& message)
      : Error(message), kind_(kind), http_status_(http_status) {}
  Kind kind() const { return kind_; }
  int http_status() const { return http_status_; }  // 0 when no HTTP status applies

 private:
  Kind kind_;
  int http_status_;
};

struct HubOptions {
  std::string endpoint = "https://huggingface.co";  // HF_ENDPOINT; may carry a path prefix
  std::string cache_dir;                            // required
  std::chrono::milliseconds connect_timeout{15'000};  // resolve + connect + TLS handshake
  std::chrono::milliseconds io_timeout{60'000};       // longest wait for any single read/write
  uint64_t max_file_bytes = uint64_t{8} << 30;        // larger downloads are refused
  int max_redirects = 5;
  std::string ca_file;  // extra PEM bundle to trust (besides the system store); "" = none
};

// A parsed http(s) URL.
struct Url {
  std::string scheme;  // "http" or "https" (lower case)
  std::string host;    // reg-name or IPv4, or IPv6 without brackets
  uint16_t port = 0;   // explicit or the scheme's default
  std::string target;  // path + query, starting with '/'

  // scheme://host[:port]/target, IPv6 bracketed; with_query = false drops "?..." (for messages).
  std::string str(bool with_query = true) const;
};

// Parses an absolute http/https URL; throws HubError(InvalidArgument) naming the problem.
Url parse_url(std::string_view text);
// Resolves a redirect's Location header against the URL that answered it (absolute,
// scheme-relative "//host/..", absolute-path "/..", or relative to the current path).
Url resolve_location(const Url& base, std::string_view location);

// "owner/name", each part 1-96 characters of [A-Za-z0-9._-], not starting or ending with '.'
// or '-', without "--" or "..".
bool valid_repo_id(std::string_view repo_id);
// A branch, tag or commit: 1-255 characters of [A-Za-z0-9._-/], '/'-separated parts that are
// neither empty, "." nor "..".
bool valid_revision(std::string_view revision);
// A file in the repo: '/'-separated parts of [A-Za-z0-9._-], none empty, "." or "..".
bool valid_filename(std::string_view filename);

class HubClient {
 public:
  explicit HubClient(HubOptions options);
  ~HubClient();

  const HubOptions& options() const { return options_; }

  // Where download() keeps the file (it may not exist yet). Validates the arguments.
  std::string cache_path(std::string_view repo_id, std::string_view revision,
                         std::string_view filename) const;
  // The folder holding a revision's files: {cache_dir}/{owner}--{name}/{revision}.
  std::string revision_dir(std::string_view repo_id, std::string_view revision) const;

  // Returns the cached path of the file, downloading it first when absent. `token` ("" = none)
  // is sent as "Authorization: Bearer" to the endpoint's host only (dropped on redirects to
  // other hosts). Blocks; throws HubError.
  std::string download(std::string_view repo_id, std::string_view revision,
                       std::string_view filename, const std::string& token) const;

  // The URL download() fetches first.
  Url file_url(std::string_view repo_id, std::string_view revision, std::string_view filename) const;

 private:
  struct Tls;  // the OpenSSL client context, shared by every download

  HubOptions options_;
  Url endpoint_;
  std::shared_ptr<Tls> tls_;
};

}  // namespace mil::hub
